"""score.py: the competition metric, `arcttt score`, and export -> load -> score round trips on all 4 splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arcttt.data import SPLITS, export_split, load_challenges, load_solutions
from arcttt.score import score_submission
from arcttt.submission import SubmissionWriter, validate_submission
from helpers import run_cli

ZERO = [[0]]
TRUTH = {"a": [np.array([[1, 2], [3, 4]], np.uint8)],
         "b": [np.array([[5]], np.uint8), np.array([[1, 1, 1, 1]], np.uint8)]}


def entry(a1=ZERO, a2=ZERO):
    return {"attempt_1": a1, "attempt_2": a2}


def test_either_attempt_counts():
    sub = {"a": [entry([[1, 2], [3, 4]])], "b": [entry(ZERO, [[5]]), entry()]}
    result = score_submission(sub, TRUTH)
    assert (result.correct, result.total, result.score) == (2, 3, 2 / 3)
    assert [(r.task_id, r.correct, r.total, r.hits, r.status) for r in result.per_task] == [
        ("a", 1, 1, (True,), "scored"), ("b", 1, 2, (True, False), "scored")]


def test_shape_must_match_not_just_the_values():
    sub = {"a": [entry([[1, 2, 3, 4]], [[1], [2], [3], [4]])], "b": [entry(), entry([[1, 1], [1, 1]])]}
    assert score_submission(sub, TRUTH).correct == 0


def test_score_is_over_outputs_not_tasks():
    # b's two outputs right, a's one wrong: 2/3 (a mean over tasks would say 1/2)
    sub = {"a": [entry()], "b": [entry([[5]]), entry([[1, 1, 1, 1]])]}
    assert score_submission(sub, TRUTH).score == pytest.approx(2 / 3)


def test_missing_and_malformed_entries_count_as_wrong():
    result = score_submission({"b": [entry([[5]]), {"attempt_1": [[1, 1, 1, 1.0]]}], "zz": []}, TRUTH)
    rows = {r.task_id: r for r in result.per_task}
    assert (rows["a"].status, rows["a"].correct, rows["a"].total) == ("missing", 0, 1)
    assert (rows["b"].status, rows["b"].hits) == ("malformed", (True, False))
    assert (result.correct, result.total) == (1, 3)  # the extra task "zz" is ignored
    short = score_submission({"a": [entry([[1, 2], [3, 4]])], "b": [entry([[5]])]}, TRUTH)
    assert short.correct == 2 and short.per_task[1].status == "malformed"
    assert score_submission({"a": "x", "b": [[5], 3]}, TRUTH).correct == 0
    with pytest.raises(ValueError, match="not a JSON object"):
        score_submission([], TRUTH)  # type: ignore[arg-type]


def test_empty_solutions_score_zero():
    result = score_submission({}, {})
    assert (result.score, result.total) == (0.0, 0)


# --- round trips on the real bundled splits ----------------------------------------------------

@pytest.mark.parametrize("split", list(SPLITS))
def test_round_trip_truth_scores_1_and_defaults_score_what_they_should(split, tmp_path):
    chal_path, sol_path = export_split(split, tmp_path)
    challenges, solutions = load_challenges(chal_path), load_solutions(sol_path)
    assert challenges.rejected == [] and list(challenges.tasks) == list(solutions)
    counts = challenges.test_counts()
    total = sum(counts.values())

    truth = SubmissionWriter(tmp_path / "truth.json", counts,
                             {tid: [(g, ZERO) for g in grids] for tid, grids in solutions.items()})
    obj = json.loads(truth.path.read_text())
    assert validate_submission(obj, counts) == []
    assert score_submission(obj, solutions).score == 1.0

    zeros = json.loads(SubmissionWriter(tmp_path / "zeros.json", counts).path.read_text())
    expected = sum(g.shape == (1, 1) and g[0, 0] == 0 for grids in solutions.values() for g in grids)
    result = score_submission(zeros, solutions)
    assert (result.correct, result.total) == (expected, total) and result.score < 0.01

    guesses = json.loads(SubmissionWriter.for_challenges(tmp_path / "guess.json", challenges).path.read_text())
    assert validate_submission(guesses, counts) == []
    expected = 0
    for tid, grids in solutions.items():
        outs = [json.dumps(p.output.tolist()) for p in challenges.tasks[tid].train]
        top2 = sorted(dict.fromkeys(outs), key=outs.count, reverse=True)[:2]  # ties: first seen first
        expected += sum(json.dumps(g.tolist()) in top2 for g in grids)
    result = score_submission(guesses, solutions)
    assert result.correct == expected and result.score < 0.05


# --- arcttt score ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    return export_split("arc-agi-2-eval", tmp_path_factory.mktemp("eval2"), limit=12)


def truth_submission(sol_path, path, right: int):
    """The first ``right`` tasks answered correctly (in attempt_2), the others [[0]]."""
    solutions = json.loads(sol_path.read_text())
    obj = {tid: [entry(ZERO, g if k < right else ZERO) for g in grids] for k, (tid, grids) in enumerate(solutions.items())}
    path.write_text(json.dumps(obj))
    return solutions


def test_cli_score_table_and_total(tmp_path, eval_files, capsys):
    _, sol = eval_files
    solutions = truth_submission(sol, tmp_path / "s.json", right=3)
    correct = sum(len(g) for g in list(solutions.values())[:3])
    total = sum(len(g) for g in solutions.values())
    code, out, err = run_cli(["score", tmp_path / "s.json", "--solutions", sol], capsys)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["task", "correct", "status"] and len(lines) == 1 + 12 + 1
    first = list(solutions)[0]
    assert lines[1].split() == [first, f"{len(solutions[first])}/{len(solutions[first])}", "scored"]
    assert lines[-1] == f"score: {correct / total:.4f} ({correct}/{total} test outputs, 12 tasks)"


def test_cli_score_json(tmp_path, eval_files, capsys):
    _, sol = eval_files
    solutions = truth_submission(sol, tmp_path / "s.json", right=12)
    code, out, _ = run_cli(["score", tmp_path / "s.json", "--solutions", sol, "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    total = sum(len(g) for g in solutions.values())
    assert (report["score"], report["correct"], report["total"], report["faults"]) == (1.0, total, total, [])
    assert [row["task_id"] for row in report["per_task"]] == list(solutions)
    assert all(row["correct"] == row["total"] and row["status"] == "scored" for row in report["per_task"])


def test_cli_score_warns_about_format_faults_on_stderr(tmp_path, eval_files, capsys):
    _, sol = eval_files
    solutions = truth_submission(sol, tmp_path / "s.json", right=12)
    obj = json.loads((tmp_path / "s.json").read_text())
    missing = next(iter(obj))
    del obj[missing]
    (tmp_path / "s.json").write_text(json.dumps(obj))
    code, out, err = run_cli(["score", tmp_path / "s.json", "--solutions", sol, "--json"], capsys)
    assert code == 0
    assert err == f"warning: 1 format faults (Kaggle would refuse this submission); first: task {missing}: missing\n"
    report = json.loads(out)
    assert report["correct"] == report["total"] - len(solutions[missing])


@pytest.mark.parametrize("content", ["{\"a\": [", "", "\x00\x01"])
def test_cli_score_not_json_submission_exits_2(tmp_path, eval_files, capsys, content):
    _, sol = eval_files
    (tmp_path / "s.json").write_text(content)
    code, out, err = run_cli(["score", tmp_path / "s.json", "--solutions", sol], capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: submission file {tmp_path / 's.json'}: not JSON")


def test_cli_score_bad_solutions_exit_2(tmp_path, eval_files, capsys):
    _, sol = eval_files
    truth_submission(sol, tmp_path / "s.json", right=0)
    (tmp_path / "bad.json").write_text(json.dumps({"t": [[[1, 2], [3]]]}))
    code, out, err = run_cli(["score", tmp_path / "s.json", "--solutions", tmp_path / "bad.json"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: solutions file") and "task t: solution[0][1]: row has 1 cells" in err
