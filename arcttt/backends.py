"""What differs between the two model libraries a ``ModelSession`` runs on, in one place.

Both are called the same way everywhere (explicit ``position_ids`` on every forward, a multi-token
call on a cache with positions that continue it: see tests/test_backend_contract.py); what differs:

- the train/eval switches: unsloth's ``for_training`` / ``for_inference`` also switch its kv-cache
  default and its inference kernels, so ``model.train()`` / ``model.eval()`` alone are not enough;
- the cache the search and scoring prefill into: ours (:class:`arcttt.kvcache.SlabCache`) on hf; on
  unsloth the library's own (its GPU path turns a cache into tuples of its own and back);
- whether views run in lock-step in one batch: on hf, whose handling of masks with holes and explicit
  positions is tested; on unsloth one by one (its decode path's handling of such masks is not);
- whether TTT may switch gradient checkpointing on per call: unsloth fixes it at load time.

Loading stays in ``model.py`` (``_load_hf`` / ``_load_unsloth``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Backend:
    """One model library's facts and switches."""

    name: Literal["hf", "unsloth"]
    lock_step: bool
    """Views searched in lock-step in one batched cache."""
    preallocate: bool
    """Search and scoring prefill into a :class:`arcttt.kvcache.SlabCache`."""
    checkpointing_per_call: bool
    """Gradient checkpointing can be switched on for one TTT call."""
    train_mode: Callable[[Any], None]
    """Switch the model to training."""
    eval_mode: Callable[[Any], None]
    """Switch the model to inference."""


def _hf_train(model) -> None:
    model.train()


def _hf_eval(model) -> None:
    model.eval()


def _unsloth_train(model) -> None:
    from unsloth import FastLanguageModel  # already imported by the load

    FastLanguageModel.for_training(model)
    model.train()


def _unsloth_eval(model) -> None:
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    model.eval()


HF = Backend("hf", lock_step=True, preallocate=True, checkpointing_per_call=True,
             train_mode=_hf_train, eval_mode=_hf_eval)
UNSLOTH = Backend("unsloth", lock_step=False, preallocate=False, checkpointing_per_call=False,
                  train_mode=_unsloth_train, eval_mode=_unsloth_eval)
BACKENDS = {b.name: b for b in (HF, UNSLOTH)}


def backend_of(session) -> Backend:
    """The library a session (or a stand-in with a ``backend`` name, hf when it has none) runs on."""
    return BACKENDS[getattr(session, "backend", "hf")]
