"""The typed task record: JSON round trip against a hand-written record, tolerant reading, file names
safe for any id, the hashes that decide resume, and bounded messages."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import HOSTILE_IDS

from arcttt.data import LongInt, Pair, Task, show_id, shown
from arcttt.records import (SCHEMA_VERSION, Phase, RecordError, TaskResult, TestResult, TTTResult, config_hash,
                            task_file_name, task_hash)

RECORD = {  # written by hand: what a finished task looks like on disk
    "schema": 1, "task_id": "00576224", "status": "ok", "error": None, "worker": 1,
    "start": 100.0, "end": 142.5, "deadlines": {"start": 100.0, "ttt": 120.0, "search": 130.0, "end": 150.0},
    "phases": [{"phase": "data", "start": 100.0, "end": 101.0}, {"phase": "ttt", "start": 101.0, "end": 121.0},
               {"phase": "search", "start": 121.0, "end": 131.0}, {"phase": "select", "start": 131.0, "end": 141.0}],
    "ttt": {"steps": 8, "tokens": 4096, "seconds": 20.0, "tokens_per_s": 204.8, "losses": [2.5, 1.25],
            "stopped": "done", "skipped": None, "sequences": 8},
    "tests": [{"attempts": [[[1, 2]], [[2, 1]]],
               "candidates": [{"grid": [[1, 2]], "hits": 3, "search_logprob": -0.5, "score": -1.0}],
               "search": {"views": 2, "forwards": 9, "completions": 3, "timed_out": False}}],
    "task_hash": "aaaa", "config_hash": "bbbb", "model_hash": "cccc",
}


def test_round_trip_of_a_hand_written_record():
    rec = TaskResult.from_json(RECORD)
    assert rec.phases[1] == Phase("ttt", 101.0, 121.0)
    assert rec.ttt.losses == [2.5, 1.25] and rec.ttt.sequences == 8
    assert rec.tests[0].attempts == [[[1, 2]], [[2, 1]]]
    assert rec.attempts() == [([[1, 2]], [[2, 1]])]
    assert rec.seconds == 42.5 and rec.phase_seconds() == {"data": 1.0, "ttt": 20.0, "search": 10.0,
                                                          "select": 10.0, "other": 1.5}
    assert (rec.ttt_steps, rec.final_loss, rec.n_candidates) == (8, 1.25, 1)
    assert rec.to_json() == RECORD
    assert json.loads(json.dumps(rec.to_json())) == RECORD


def test_reading_is_tolerant_of_missing_fields_and_strict_about_identity():
    rec = TaskResult.from_json({"task_id": "t", "status": "error", "phases": [{"phase": "ttt", "start": 1.0}, "x"],
                                "end": 5.0, "tests": "nonsense", "ttt": [1], "worker": True})
    assert rec.phases == [Phase("ttt", 1.0, 5.0)]  # a phase cut short ends with its task
    assert (rec.tests, rec.ttt, rec.worker, rec.schema) == ([], None, None, 0)
    for bad in ([1, 2], {"status": "ok"}, {"task_id": 7}):
        with pytest.raises(RecordError):
            TaskResult.from_json(bad, "tasks/x.json")


def test_stale_because_names_the_first_difference():
    rec = TaskResult.from_json(RECORD)
    assert rec.stale_because("aaaa", "bbbb", "cccc") is None
    assert rec.stale_because("zzzz", "bbbb", "cccc") == "different task"
    assert rec.stale_because("aaaa", "zzzz", "cccc") == "different config"
    assert rec.stale_because("aaaa", "bbbb", "zzzz") == "different model"
    assert TaskResult.from_json({**RECORD, "status": "timeout"}).stale_because("aaaa", "bbbb", "cccc") == "status timeout"
    assert TaskResult.from_json({**RECORD, "schema": 0}).stale_because("aaaa", "bbbb", "cccc") == "older record format"
    assert SCHEMA_VERSION == 1


def test_file_names_are_safe_and_distinct_for_hostile_ids():
    names = [task_file_name(t) for t in HOSTILE_IDS]
    assert len(set(names)) == len(names)
    for tid, name in zip(HOSTILE_IDS, names):
        assert name.endswith(".json") and len(name.encode()) <= 64, (tid, name)
        assert all(c.isascii() and (c.isalnum() or c in "_-.") for c in name), (tid, name)
        assert not name.startswith(".") and ".." not in name
    assert task_file_name("00576224").startswith("00576224.")  # a plain id stays readable


def _task(tid: str, cell: int) -> Task:
    g = np.array([[cell, 1]], dtype=np.uint8)
    return Task(tid, (Pair(g, g),), (g,))


def test_task_hash_follows_content_not_id():
    assert task_hash(_task("a", 0)) == task_hash(_task("b", 0))
    assert task_hash(_task("a", 0)) != task_hash(_task("a", 2))
    # the same cells in another shape are another task
    flat = Task("a", (Pair(np.zeros((1, 4), np.uint8), np.zeros((1, 4), np.uint8)),), (np.zeros((1, 4), np.uint8),))
    tall = Task("a", (Pair(np.zeros((4, 1), np.uint8), np.zeros((4, 1), np.uint8)),), (np.zeros((4, 1), np.uint8),))
    assert task_hash(flat) != task_hash(tall)


def test_config_hash_ignores_the_budget_and_workers():
    cfg = {"data": {"n": 1}, "model": {}, "ttt": {"steps": 8}, "search": {}, "select": {},
           "budget": {"time_budget_s": 100}, "workers": 1}
    assert config_hash(cfg) == config_hash({**cfg, "budget": {"time_budget_s": 5}, "workers": 4})
    assert config_hash(cfg) != config_hash({**cfg, "ttt": {"steps": 9}})


def test_messages_are_bounded():
    huge = "x" * 10_000_000
    text = shown(huge)
    assert len(text) < 140 and "str" in text and "10,000,002 chars" in text
    assert shown([0] * 1000).endswith("(list, 1,000 items)")
    assert show_id("00576224") == "00576224"
    assert show_id("new\nline") == "'new\\nline'" and "\n" not in show_id("a\nb" * 100)
    assert len(show_id("y" * 5000)) < 140
    assert repr(LongInt("9" * 5000)) == "<integer of 5,000 digits>"


def test_ttt_result_defaults_and_test_result_error():
    assert TTTResult().to_json()["steps"] == 0
    assert TestResult(error="out of memory").to_json()["error"] == "out of memory"
    assert "error" not in TestResult().to_json()
