"""The workers' fault hook for tests (faults.py): read from ARCTTT_TEST_FAULTS, checked, and
refused by a run before any worker starts when it asks for a fault that does not exist."""

from __future__ import annotations

import json

import pytest

from arcttt.faults import FAULTS_ENV, act_out, faults_from_env


def test_faults_are_read_from_the_environment():
    assert faults_from_env({}) == {}
    assert faults_from_env({FAULTS_ENV: ""}) == {}
    assert faults_from_env({FAULTS_ENV: '{"a": "crash", "b": "hang", "c": "raise", "d": "panic"}'}) == \
        {"a": "crash", "b": "hang", "c": "raise", "d": "panic"}


@pytest.mark.parametrize("text, fault", [
    ('{"a": "explode"}', "ARCTTT_TEST_FAULTS values must be crash, hang, raise or panic, got {'a': 'explode'}"),
    ("crash", "ARCTTT_TEST_FAULTS must be a JSON object of task id -> fault, got 'crash'"),
    ('["a"]', "ARCTTT_TEST_FAULTS must be a JSON object of task id -> fault"),
])
def test_a_bad_fault_is_one_line_naming_it(text, fault):
    with pytest.raises(ValueError) as e:
        faults_from_env({FAULTS_ENV: text})
    assert str(e.value).startswith(fault) and "\n" not in str(e.value)


def test_raise_and_nothing():
    act_out(None)
    with pytest.raises(RuntimeError, match="injected fault"):
        act_out("raise")


def test_a_run_refuses_a_bad_fault_before_any_worker_starts(tiny_model_dir, tmp_path, monkeypatch):
    import multiprocessing as mp

    from arcttt.data import export_split
    from arcttt.runner import run

    challenges, _ = export_split("arc-agi-1-eval", tmp_path / "data", limit=1)
    monkeypatch.setenv(FAULTS_ENV, json.dumps({"x": "explode"}))
    with pytest.raises(ValueError, match="ARCTTT_TEST_FAULTS values must be"):
        run(challenges, tiny_model_dir, tmp_path / "submission.json", config="cpu-smoke", run_dir=tmp_path / "run",
            progress=False)
    assert not mp.active_children()
