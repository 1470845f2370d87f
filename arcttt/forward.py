"""Calling a causal LM for inference: the mode switch, the device, explicit positions, last-position
logits and the answer symbols' log-probabilities. What the search and the scoring share to call the
model; what differs between the model libraries is ``backends.py``, the caches ``kvcache.py``."""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no LoRA dropout) and no autograd for the duration; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def last_logits_kwargs(model: torch.nn.Module, n: int = 1) -> dict:
    """``logits_to_keep=n`` where the model takes it: a prefill then computes only the last ``n``
    positions' logits (a long prompt's full logits over a big vocabulary do not fit)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    takes = "logits_to_keep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"logits_to_keep": n} if takes else {}


def positions(start: int, n: int, device, rows: int = 1) -> torch.Tensor:
    """Position ids ``start .. start + n - 1`` for ``rows`` rows: int64 [rows, n]."""
    return torch.arange(start, start + n, device=device).expand(rows, n)


def symbol_logprobs(logits: torch.Tensor, symbol_ids: torch.Tensor) -> np.ndarray:
    """Log-probabilities of the answer symbols from the logits of one position per row:
    float64 [rows, symbols] on the host (the search's one device sync per step). A softmax over the
    whole vocabulary, not renormalised over the symbols."""
    return torch.log_softmax(logits.float(), dim=-1).index_select(-1, symbol_ids).cpu().double().numpy()
