"""A test hook, not a setting: faults a worker process acts out on named tasks, so that the tests
can crash, hang or break a worker where they choose. The tests install it through the environment
(workers are separate processes and inherit it); a run without ``ARCTTT_TEST_FAULTS`` does nothing
here, and the run's config knows nothing of it.

``ARCTTT_TEST_FAULTS`` is a JSON object: task id -> ``crash`` (the worker exits with code 3),
``hang`` (it sleeps for ever), ``raise`` (the task raises RuntimeError("injected fault")) or
``panic`` (a real Rust panic of the tokenizers library, a BaseException).
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

FAULTS_ENV = "ARCTTT_TEST_FAULTS"
FAULTS = ("crash", "hang", "raise", "panic")


def faults_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The faults ``environ`` (default: this process's environment) asks for; {} when none. A value
    that is not a JSON object of task id -> one of :data:`FAULTS` raises ValueError naming it."""
    text = (os.environ if environ is None else environ).get(FAULTS_ENV)
    if not text:
        return {}
    try:
        faults = json.loads(text)
    except ValueError:
        faults = None
    if not isinstance(faults, dict) or not all(isinstance(k, str) for k in faults):
        raise ValueError(f"{FAULTS_ENV} must be a JSON object of task id -> fault, got {text[:80]!r}")
    bad = {k: v for k, v in faults.items() if v not in FAULTS}
    if bad:
        raise ValueError(f"{FAULTS_ENV} values must be crash, hang, raise or panic, got {bad}")
    return faults


def act_out(fault: str | None) -> None:
    """Do what ``fault`` says (see the module's docstring); None: nothing."""
    if fault == "crash":
        os._exit(3)
    if fault == "hang":
        while True:
            time.sleep(3600)
    if fault == "raise":
        raise RuntimeError("injected fault")
    if fault == "panic":  # a real one: a pre-tokenizer regex past Oniguruma's retry limit
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("((a+)+)+c"), behavior="isolated")
        tok.encode("a" * 30000 + "!")
