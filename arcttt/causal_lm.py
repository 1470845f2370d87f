"""Reading a local Hugging Face causal LM the one way every command does (``run``, ``finetune``,
``shrink-vocab``, ``prepare-weights``): offline, safetensors only, never with remote code, in a dtype
named as arcttt's configs name it (``bf16``, ``fp16``, ``fp32``, ``auto``).

It sits below ``model.py`` and ``weights.py`` so that both (and ``finetune.py``) load through it;
transformers is imported inside :func:`load_causal_lm`, after the offline switches are set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from arcttt.offline import set_offline_env

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
"""The dtype names of arcttt's configs and options, and their torch dtypes."""

OFFLINE_KWARGS = {"local_files_only": True, "use_safetensors": True, "trust_remote_code": False}
"""What every ``from_pretrained`` of a model directory is given (unsloth's too)."""


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """The torch dtype of ``name``; ``auto``: bf16 on a GPU that has it natively, fp16 on one that
    does not (T4), fp32 on CPU."""
    if name == "auto":
        device = torch.device(device)
        if device.type == "cuda":
            # native bf16 needs compute capability 8.0+; is_bf16_supported() also counts emulation (T4)
            return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def dtype_kwarg(dtype: torch.dtype | str) -> dict:
    """``from_pretrained``'s dtype argument under this transformers (``"auto"``: the saved dtype)."""
    import transformers

    # transformers renamed torch_dtype to dtype in 4.56; older 4.4x only know torch_dtype
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_causal_lm(path: str | Path, dtype: torch.dtype | None = None, **kwargs: Any):
    """``AutoModelForCausalLM`` of the local directory ``path`` in ``dtype`` (None: the dtype its
    weights were saved in); ``kwargs`` (``device_map``, ``quantization_config``) go to
    ``from_pretrained``. Raises what transformers raises: the caller names the fault."""
    set_offline_env()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), **OFFLINE_KWARGS,
                                                **dtype_kwarg("auto" if dtype is None else dtype), **kwargs)
