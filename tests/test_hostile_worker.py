"""A tokenizer's Rust panic inside a task (issue 19, item 6): tokenizers raises PanicException, a
BaseException that `except Exception` let through, so the worker died and was replaced, its model
loaded again, for every such task. Now the task is recorded as failed, once, and the same worker
(one model load) answers the next task."""

from __future__ import annotations

import json
import re

from arcttt.data import export_split, load_challenges
from arcttt.faults import FAULTS_ENV
from arcttt.runner import run

FAST = ["ttt.steps=2", "data.n_sequences=4", "budget.hang_grace_s=300", "budget.hang_factor=1.0",
        "budget.min_task_s=2", "budget.max_task_s=4"]


def test_a_tokenizer_panic_fails_the_task_not_the_worker(tiny_model_dir, tmp_path, monkeypatch):
    challenges, _ = export_split("arc-agi-1-eval", tmp_path / "data", limit=2)
    first, second = load_challenges(challenges).ids
    monkeypatch.setenv(FAULTS_ENV, json.dumps({first: "panic"}))  # the workers' test hook (faults.py)
    summary = run(challenges, tiny_model_dir, tmp_path / "submission.json", config="cpu-smoke", time_budget=1200,
                  workers=1, run_dir=tmp_path / "run", progress=False,
                  overrides=FAST)
    assert (summary["answered"], summary["failed"]) == (1, 1)
    records = {r["task_id"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "run" / "tasks").glob("*.json"))}
    assert records[first]["status"] == "error" and records[first]["error"].startswith("PanicException: ")
    assert "retry-limit" in records[first]["error"]
    assert records[second]["status"] == "ok"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert len(re.findall(r"worker 0: pid (\d+)", log)) == 1  # never replaced: the model loaded once
    assert "crashed" not in log
