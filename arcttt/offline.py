"""Keeping Hugging Face, unsloth and wandb off the network, in one place: the rerun on Kaggle has no
network, and a library that waits on a timeout burns the budget. Must run before transformers, peft
or unsloth is first imported (they read some of these once, at import)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import MutableMapping


def offline_env(cache_dir: str | Path) -> dict[str, str]:
    """The variables, with ``cache_dir`` as unsloth's writable folder for the code it compiles
    (``/kaggle/input`` is read-only; unsloth's default is relative to the working directory)."""
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "UNSLOTH_DISABLE_STATISTICS": "1",
        "UNSLOTH_COMPILE_LOCATION": str(cache_dir),
        "WANDB_DISABLED": "true",
        "WANDB_MODE": "disabled",
        "TOKENIZERS_PARALLELISM": "false",
    }


def set_offline_env(environ: MutableMapping[str, str] | None = None, cache_dir: str | Path | None = None, *,
                    override: bool = False) -> dict[str, str]:
    """Set :func:`offline_env` in ``environ`` (``os.environ``); returns what it holds now. Values
    already there are kept unless ``override`` (the notebook overrides; a worker keeps the compile
    folder its parent gave it)."""
    environ = os.environ if environ is None else environ
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "arcttt-unsloth-cache"
    values = offline_env(cache)
    for key, value in values.items():
        if override or key not in environ:
            environ[key] = value
    Path(environ["UNSLOTH_COMPILE_LOCATION"]).mkdir(parents=True, exist_ok=True)
    return {k: environ[k] for k in values}
