"""submission.py: the always-valid atomic writer, fallbacks, validate_submission, and `arcttt validate`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import arcttt.submission as submission_mod
from arcttt.data import DataFileError, export_split, load_challenges, tasks_from_json
from arcttt.submission import (
    SubmissionError, SubmissionWriter, atomic_write_json, fallback_attempts, load_submission, validate_submission,
)
from helpers import grid_lists, run_cli

ZERO = [[0]]


def read(path):
    return json.loads(path.read_text())


def ints_only(obj) -> bool:
    if isinstance(obj, dict):
        return all(ints_only(v) for v in obj.values())
    if isinstance(obj, list):
        return all(ints_only(v) for v in obj)
    return type(obj) is int


def test_writer_starts_with_a_valid_default_file(tmp_path):
    path = tmp_path / "submission.json"
    counts = {"b": 2, "a": 1, "empty": 0}
    SubmissionWriter(path, counts)
    obj = read(path)
    assert list(obj) == ["b", "a", "empty"]  # the challenges' order
    assert obj["b"] == [{"attempt_1": ZERO, "attempt_2": ZERO}] * 2 and obj["empty"] == []
    assert validate_submission(obj, counts) == []


def test_set_takes_numpy_grids_and_writes_plain_ints(tmp_path):
    path = tmp_path / "s.json"
    w = SubmissionWriter(path, {"t": 2})
    grid = np.arange(6, dtype=np.int64).reshape(2, 3)
    w.set("t", [(grid, grid.astype(np.uint8)), ([[1]], np.array([[9]], dtype=np.int32))])
    assert ints_only(w.to_json())
    assert read(path)["t"] == [{"attempt_1": [[0, 1, 2], [3, 4, 5]], "attempt_2": [[0, 1, 2], [3, 4, 5]]},
                               {"attempt_1": [[1]], "attempt_2": [[9]]}]


@pytest.mark.parametrize("attempts, fault", [
    ([([[1]], [[1]])], "task t: 1 attempt pairs for 2 test inputs"),
    ([([[1]], [[1]])] * 3, "task t: 3 attempt pairs for 2 test inputs"),
    ([([[1]], [[1]]), ([[1]],)], r"task t: test\[1\] is not an \(attempt_1, attempt_2\) pair"),
    ([([[1]], [[1]]), ([[1]], [[1, 2], [3]])],
     r"task t test\[1\].attempt_2\[1\]: row has 1 cells, row 0 has 2 \(not rectangular\)"),
    ([([[10]], [[1]]), ([[1]], [[1]])], r"task t test\[0\].attempt_1\[0\]\[0\]: value 10 outside 0-9"),
    ([([[1.0]], [[1]]), ([[1]], [[1]])], r"task t test\[0\].attempt_1\[0\]\[0\]: value 1.0 is not an integer"),
    ([(np.zeros((31, 1), np.uint8), [[1]]), ([[1]], [[1]])], "size 31x1 outside"),
    ("nope", "task t: attempts must be a list"),
])
def test_bad_predictions_raise_naming_the_task_and_keep_the_previous_entry(tmp_path, attempts, fault):
    path = tmp_path / "s.json"
    w = SubmissionWriter(path, {"t": 2, "u": 1})
    good = [([[1]], [[2]]), ([[3]], [[4]])]
    w.set("t", good)
    before = path.read_bytes()
    with pytest.raises(SubmissionError, match=fault):
        w.set("t", attempts)
    assert path.read_bytes() == before
    assert w.to_json()["t"] == [{"attempt_1": [[1]], "attempt_2": [[2]]}, {"attempt_1": [[3]], "attempt_2": [[4]]}]


def test_unknown_task_and_bad_counts_are_refused(tmp_path):
    w = SubmissionWriter(tmp_path / "s.json", {"t": 1})
    with pytest.raises(SubmissionError, match="task zz: not in this submission"):
        w.set("zz", [(ZERO, ZERO)])
    with pytest.raises(SubmissionError, match="task t: test count -1"):
        SubmissionWriter(tmp_path / "s.json", {"t": -1})
    with pytest.raises(SubmissionError, match="fallback for tasks not in test_counts: x"):
        SubmissionWriter(tmp_path / "s.json", {"t": 1}, {"x": [(ZERO, ZERO)]})


def test_reset_restores_the_default(tmp_path):
    path = tmp_path / "s.json"
    w = SubmissionWriter(path, {"t": 1}, {"t": [([[5]], [[6]])]})
    w.set("t", [([[1]], [[2]])])
    w.reset("t")
    assert read(path)["t"] == [{"attempt_1": [[5]], "attempt_2": [[6]]}]


grid_st = grid_lists(max_side=4)
bad_grid_st = st.one_of(st.just([]), st.just([[1, 2], [3]]), st.just([[11]]), st.just([[True]]), st.just("x"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(counts=st.dictionaries(st.text("abcdef0123456789", min_size=1, max_size=8), st.integers(0, 3),
                              min_size=1, max_size=5),
       data=st.data())
def test_random_predictions_always_leave_a_valid_file(tmp_path, counts, data):
    path = tmp_path / "random.json"
    w = SubmissionWriter(path, counts)
    for _ in range(data.draw(st.integers(0, 8))):
        tid = data.draw(st.sampled_from(sorted(counts)))
        n = counts[tid] + data.draw(st.sampled_from([0, 0, 0, 1, -1]))
        attempts = [(data.draw(st.one_of(grid_st, bad_grid_st) if n == counts[tid] else grid_st),
                     data.draw(grid_st)) for _ in range(max(n, 0))]
        try:
            w.set(tid, attempts)
        except SubmissionError as e:
            assert f"task {tid}" in str(e)
        obj = read(path)
        assert validate_submission(obj, counts) == []
        assert obj == w.to_json()
    assert list(tmp_path.glob(".random.json.*")) == []  # no temporary files left behind


class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["json.dumps", "os.fsync"])
def test_failure_while_writing_leaves_the_old_file_intact(tmp_path, monkeypatch, where):
    path = tmp_path / "s.json"
    w = SubmissionWriter(path, {"t": 1, "u": 1})
    w.set("t", [([[1]], [[2]])])
    before = path.read_bytes()
    module, name = where.split(".")
    real = getattr(getattr(submission_mod, module), name)

    def dies(*args, **kwargs):
        if name == "fsync":  # the temporary file holds half of the document when the process dies
            os.ftruncate(args[0], 10)
        raise Boom("disk gone")

    monkeypatch.setattr(getattr(submission_mod, module), name, dies)
    with pytest.raises(Boom):
        w.set("u", [([[3]], [[4]])])
    monkeypatch.setattr(getattr(submission_mod, module), name, real)
    assert path.read_bytes() == before
    assert json.loads(before)["u"] == [{"attempt_1": ZERO, "attempt_2": ZERO}]
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_failure_at_replace_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    w = SubmissionWriter(path, {"t": 1})
    before = path.read_bytes()
    seen = []

    def failing_replace(src, dst):
        seen.append((src, dst))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(submission_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        w.set("t", [([[7]], [[8]])])
    (src, dst), = seen
    assert str(dst) == str(path) and str(src).startswith(str(tmp_path / ".s.json."))  # same folder: atomic rename
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    monkeypatch.undo()
    w.write()  # the accepted entry is kept in memory and reaches the disk on the next write
    assert read(path)["t"] == [{"attempt_1": [[7]], "attempt_2": [[8]]}]


def test_atomic_write_json_refuses_numpy_scalars_without_touching_the_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": np.int64(1)})
    assert read(path) == {"a": 1} and len(list(tmp_path.iterdir())) == 1


def test_fallbacks_on_real_tasks(arc1_eval):
    task = next(t for t in arc1_eval if t.n_test == 2)
    zeros = fallback_attempts(task, "zeros")
    assert len(zeros) == 2 and all(a.shape == b.shape == (1, 1) and a.sum() == b.sum() == 0 for a, b in zeros)
    inputs = fallback_attempts(task, "input")
    assert [np.array_equal(b, x) for (_, b), x in zip(inputs, task.test_inputs)] == [True, True]
    # train-outputs: the two most frequent demonstration outputs, most frequent first
    def key(g):
        return g.shape, g.tobytes()

    repeated = next(t for t in arc1_eval if len({key(p.output) for p in t.train}) < len(t.train))
    keys = [key(p.output) for p in repeated.train]
    a1, a2 = fallback_attempts(repeated, "train-outputs")[0]
    assert keys.count(key(a1)) == max(keys.count(k) for k in keys) >= 2
    assert key(a2) in keys and key(a2) != key(a1)
    with pytest.raises(ValueError, match="unknown fallback"):
        fallback_attempts(task, "mode")  # type: ignore[arg-type]


def test_single_distinct_train_output_falls_back_to_zero_for_attempt_2():
    ch = tasks_from_json({"t": {"train": [{"input": [[1]], "output": [[2]]}] * 2, "test": [{"input": [[1]]}]}})
    (a1, a2), = fallback_attempts(ch.tasks["t"], "train-outputs")
    assert a1.tolist() == [[2]] and a2.tolist() == ZERO


# --- validate_submission -----------------------------------------------------------------------

def entry(a1=ZERO, a2=ZERO):
    return {"attempt_1": a1, "attempt_2": a2}


@pytest.mark.parametrize("obj, faults", [
    ({"a": [entry()], "b": [entry(), entry()]}, []),
    ([], ["submission is not a JSON object of tasks (got list)"]),
    ({"a": [entry()]}, ["task b: missing"]),
    ({"a": [entry()], "b": [entry(), entry()], "c": []}, ["task c: not in the challenges (extra task id)"]),
    ({"a": [entry()], "b": [entry()]}, ["task b: 1 entries for 2 test inputs"]),
    ({"a": entry(), "b": [entry(), entry()]}, ["task a: not a list of test entries (got dict)"]),
    ({"a": [ZERO], "b": [entry(), entry()]}, ["task a test[0]: not an object with attempt_1 and attempt_2"]),
    ({"a": [{"attempt_1": ZERO}], "b": [entry(), entry()]}, ["task a test[0]: missing attempt_2"]),
    ({"a": [{**entry(), "attempt_3": ZERO}], "b": [entry(), entry()]}, ["task a test[0]: unexpected key 'attempt_3'"]),
    ({"a": [entry()], "b": [entry(), entry([[1, 2], [3, 4, 5]], [[0.5]])]},
     ["task b test[1].attempt_1[1]: row has 3 cells, row 0 has 2 (not rectangular)",
      "task b test[1].attempt_2[0][0]: value 0.5 is not an integer"]),
])
def test_validate_submission_names_every_fault(obj, faults):
    assert validate_submission(obj, {"a": 1, "b": 2}) == faults


def test_load_submission_refuses_non_json_and_non_objects(tmp_path):
    (tmp_path / "a.json").write_text("{")
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(DataFileError, match="submission file .*a.json: not JSON"):
        load_submission(tmp_path / "a.json")
    with pytest.raises(DataFileError, match="submission file .*b.json: not a JSON object"):
        load_submission(tmp_path / "b.json")


# --- arcttt validate ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    return export_split("arc-agi-1-eval", tmp_path_factory.mktemp("eval"), limit=30)


def test_cli_validate_accepts_a_writer_file(tmp_path, eval_files, capsys):
    chal, _ = eval_files
    ch = load_challenges(chal)
    SubmissionWriter.for_challenges(tmp_path / "s.json", ch)
    code, out, _ = run_cli(["validate", tmp_path / "s.json", "--challenges", chal], capsys)
    assert code == 0
    assert out == f"valid: 30 tasks, {sum(t.n_test for t in ch.tasks.values())} outputs\n"


def test_cli_validate_lists_faults_and_exits_1(tmp_path, eval_files, capsys):
    chal, _ = eval_files
    ch = load_challenges(chal)
    obj = SubmissionWriter(tmp_path / "s.json", ch.test_counts()).to_json()
    first, second = list(obj)[:2]
    del obj[first]
    obj[second][0]["attempt_1"] = [[1, 2], [3]]
    obj["extra"] = []
    (tmp_path / "s.json").write_text(json.dumps(obj))
    code, out, _ = run_cli(["validate", tmp_path / "s.json", "--challenges", chal], capsys)
    assert code == 1
    assert out.splitlines() == [f"task {first}: missing", "task extra: not in the challenges (extra task id)",
                                f"task {second} test[0].attempt_1[1]: row has 1 cells, row 0 has 2 (not rectangular)"]


def test_cli_validate_not_json_submission_exits_2(tmp_path, eval_files, capsys):
    chal, _ = eval_files
    (tmp_path / "s.json").write_text("attempt_1")
    code, out, err = run_cli(["validate", tmp_path / "s.json", "--challenges", chal], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: submission file") and "not JSON" in err and len(err.splitlines()) == 1
