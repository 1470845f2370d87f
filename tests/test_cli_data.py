"""`arcttt data export/stats`, and one test per class of malformed challenges input through the CLI."""

from __future__ import annotations

import copy
import functools
import json

import pytest

from arcttt.data import bundled_split, load_challenges, log_rejected
from arcttt.submission import SubmissionWriter, load_submission, validate_submission
from helpers import run_cli


def test_data_export_writes_kaggle_files(tmp_path, capsys):
    code, out, _ = run_cli(["data", "export", "--split", "arc-agi-1-train", "--out", tmp_path, "--tasks", "5"], capsys)
    assert code == 0
    chal, sol = tmp_path / "arc-agi_training_challenges.json", tmp_path / "arc-agi_training_solutions.json"
    assert out.splitlines() == [str(chal), str(sol)]
    challenges, solutions = bundled_split("arc-agi-1-train")
    first = sorted(challenges)[:5]
    assert json.loads(chal.read_text()) == {k: challenges[k] for k in first}
    assert json.loads(sol.read_text()) == {k: solutions[k] for k in first}
    assert all("output" not in t for task in json.loads(chal.read_text()).values() for t in task["test"])


def test_data_stats_prints_the_split(capsys):
    code, out, _ = run_cli(["data", "stats", "--split", "arc-agi-2-eval"], capsys)
    assert code == 0
    stats = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert (stats["split"], stats["tasks"], stats["max_side"]) == ("arc-agi-2-eval", "120", "30")
    assert int(stats["test_outputs"]) > 120


@pytest.mark.parametrize("args", [["data", "stats", "--split", "arc-agi-3"],
                                  ["data", "export", "--split", "nope", "--out", "x"],
                                  ["data", "export", "--split", "arc-agi-1-eval", "--out", "x", "--tasks", "0"]])
def test_data_commands_refuse_bad_arguments_with_exit_2(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2 and out == "" and err.startswith("error: ")
    assert not (tmp_path / "x").exists()


# --- malformed challenges files ----------------------------------------------------------------

@pytest.mark.parametrize("content, fault", [
    ("{\"0a1b2c3d\": {\"train\": [", "not JSON"),
    ("[{\"train\": [], \"test\": []}]", "not a JSON object of tasks (got array)"),
])
def test_unusable_challenges_file_exits_2(tmp_path, capsys, content, fault):
    (tmp_path / "c.json").write_text(content)
    (tmp_path / "s.json").write_text("{}")
    code, out, err = run_cli(["validate", tmp_path / "s.json", "--challenges", tmp_path / "c.json"], capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"error: challenges file {tmp_path / 'c.json'}: {fault}")
    assert len(err.splitlines()) == 1


@functools.cache
def eval_challenges():
    return bundled_split("arc-agi-1-eval")[0]


def good_task():
    return copy.deepcopy(eval_challenges()["00576224"])


def breaking(fault):
    """A function that damages a copy of a real task in one way."""
    def damage(task):
        if fault == "non-rectangular":
            task["train"][0]["input"][1].append(3)
        elif fault == "value outside 0-9":
            task["test"][0]["input"][0][0] = 10
        elif fault == "float value":
            task["train"][1]["output"][0][0] = 1.0
        elif fault == "bool value":
            task["train"][0]["output"][0][0] = True
        elif fault == "str value":
            task["test"][0]["input"][0][0] = "3"
        elif fault == "size 0":
            task["train"][0]["input"] = [[]]
        elif fault == "size over 30":
            task["test"][0]["input"] = [[1] * 31]
        elif fault == "missing train":
            del task["train"]
        elif fault == "missing test":
            del task["test"]
        elif fault == "no train pairs":
            task["train"] = []
        return task
    return damage


@pytest.mark.parametrize("fault, reason, readable", [
    ("non-rectangular", "train[0].input[1]: row has 3 cells, row 0 has 2 (not rectangular)", True),
    ("value outside 0-9", "test[0].input[0][0]: value 10 outside 0-9", True),
    ("float value", "train[1].output[0][0]: value 1.0 is not an integer", True),
    ("bool value", "train[0].output[0][0]: value True is not an integer", True),
    ("str value", "test[0].input[0][0]: value '3' is not an integer", True),
    ("size 0", "train[0].input: size 1x0 outside 1x1..30x30", True),
    ("size over 30", "test[0].input: size 1x31 outside 1x1..30x30", True),
    ("missing train", "missing 'train'", True),
    ("missing test", "missing 'test'", False),
    ("no train pairs", "no train pairs", True),
])
def test_each_malformed_task_is_rejected_and_still_expected_if_countable(tmp_path, capsys, fault, reason, readable):
    challenges = {"00576224": good_task(), "badtask1": breaking(fault)(good_task())}
    (tmp_path / "c.json").write_text(json.dumps(challenges))
    ch = load_challenges(tmp_path / "c.json")
    assert list(ch.tasks) == ["00576224"]
    (rejected,) = ch.rejected
    assert rejected.reason == f"task badtask1: {reason}"
    assert ch.test_counts() == ({"00576224": 1, "badtask1": 1} if readable else {"00576224": 1})

    SubmissionWriter.for_challenges(tmp_path / "s.json", ch)
    code, out, _ = run_cli(["validate", tmp_path / "s.json", "--challenges", tmp_path / "c.json"], capsys)
    assert code == 0 and out == f"valid: {1 + readable} tasks, {1 + readable} outputs\n"


def test_mixed_challenges_give_a_valid_submission_and_a_log_line_per_rejected_task(tmp_path, capsys):
    challenges = eval_challenges()
    ids = sorted(challenges)[:8]
    mixed = {tid: copy.deepcopy(challenges[tid]) for tid in ids}
    faults = ["non-rectangular", "missing test", "str value", "no train pairs"]
    for tid, fault in zip(ids[1::2], faults):
        mixed[tid] = breaking(fault)(mixed[tid])
    mixed["notatask"] = "just a string"
    (tmp_path / "c.json").write_text(json.dumps(mixed))

    ch = load_challenges(tmp_path / "c.json")
    assert list(ch.tasks) == ids[0::2]
    expected = [tid for tid in mixed if tid not in (ids[3], "notatask")]  # count unreadable for these two
    assert list(ch.test_counts()) == expected

    writer = SubmissionWriter.for_challenges(tmp_path / "s.json", ch)
    obj = load_submission(writer.path)
    assert list(obj) == expected and validate_submission(obj, ch.test_counts()) == []
    for tid in ids[1::2]:
        if tid in obj:
            assert all(e == {"attempt_1": [[0]], "attempt_2": [[0]]} for e in obj[tid])

    lines: list[str] = []
    log_rejected(ch, lines.append)
    assert len(lines) == 5
    for line, tid in zip(lines, ids[1::2] + ["notatask"]):
        assert line.startswith(f"rejected task {tid}: ")
    assert lines[1].endswith("missing 'test' (test count unreadable: no submission entry)")
    assert lines[0].endswith(f"(submission keeps {len(mixed[ids[1]]['test'])} default entr"
                             f"{'y' if len(mixed[ids[1]]['test']) == 1 else 'ies'})")

    code, out, _ = run_cli(["validate", writer.path, "--challenges", tmp_path / "c.json"], capsys)
    n_out = sum(ch.test_counts().values())
    assert code == 0 and out == f"valid: {len(expected)} tasks, {n_out} outputs\n"  # nothing about rejections
