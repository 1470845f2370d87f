"""The Ray engine on a local Ray cluster of 3 CPU actors: a dry run that answers what the local
engine answers, an actor that dies mid-task, the deadline with an actor that never finishes, and
``--resume`` of a Ray run. Needs ray (``pip install 'arcttt[ray]'``; ``setup.sh --dev`` installs it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arcttt.data import load_challenges
from arcttt.faults import FAULTS_ENV
from arcttt.runner import dry_run, run
from arcttt.submission import load_submission, validate_submission

ray = pytest.importorskip("ray")

from arcttt.ray_engine import RayEngine  # noqa: E402 - after the skip: the engine is only for ray's users
from helpers import records, smallest_tasks

# the engine's mechanics, cheaply: one TTT step, one view, answers only as long as the task's own outputs
FAST = ["ttt.steps=1", "data.n_sequences=2", "data.answer_room=evidence", "search.n_augmentations=1",
        "select.n_views=1", "budget.min_task_s=2", "budget.hang_grace_s=300"]
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A local Ray cluster of 3 CPUs (3 actors), shared by the tests of this file."""
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def assert_valid(submission: Path, challenges: Path) -> dict:
    sub = load_submission(submission)
    assert validate_submission(sub, load_challenges(challenges).test_counts()) == []
    return sub


def deterministic(rec: dict) -> tuple:
    """The fields of a record that do not depend on timing or on which worker ran it: status, TTT
    steps and sequences, hashes, and per test input the attempts, the candidates' grids in rank
    order and the search's forward passes (the losses are compared apart, to 1e-4: floats summed
    by as many threads as the process has, 2 in a local worker here, 1 in a Ray actor)."""
    return (rec["status"], rec["ttt"]["steps"], rec["ttt"]["sequences"], rec["task_hash"], rec["config_hash"],
            rec["model_hash"], [t["attempts"] for t in rec["tests"]],
            [[c["grid"] for c in t["candidates"]] for t in rec["tests"]],
            [(t["search"]["forwards"], t["search"]["completions"]) for t in rec["tests"]])


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    return smallest_tasks(6, tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def dry_runs(tiny_model_dir, tmp_path_factory):
    """The same dry run (6 small ARC-AGI-1 eval tasks, the tiny model, cpu-smoke) with the local
    engine (2 workers) and with the Ray engine on 3 actors."""
    root = tmp_path_factory.mktemp("dry")
    challenges, solutions = smallest_tasks(6, root / "data")
    kw = dict(challenges=challenges, solutions=solutions, model=tiny_model_dir, config="cpu-smoke",
              time_budget=900, overrides=FAST, progress=False)
    local = dry_run(root / "local", workers=2, **kw)
    started = time.time()
    on_ray = dry_run(root / "ray", workers=3, engine=RayEngine(), **kw)
    return {"root": root, "local": local, "ray": on_ray, "ray_s": time.time() - started, "kw": kw}


def test_a_ray_dry_run_answers_what_the_local_run_answers(dry_runs):
    root = dry_runs["root"]
    local, on_ray = dry_runs["local"], dry_runs["ray"]
    assert (on_ray["answered"], on_ray["failed"], on_ray["unstarted"]) == (6, 0, 0)
    assert on_ray["score"] == local["score"]
    assert load_submission(root / "ray" / "submission.json") == load_submission(root / "local" / "submission.json")
    one, other = records(root / "local"), records(root / "ray")
    assert sorted(one) == sorted(other)
    for tid in one:
        assert deterministic(other[tid]) == deterministic(one[tid]), tid
        assert other[tid]["ttt"]["losses"] == pytest.approx(one[tid]["ttt"]["losses"], rel=1e-4)
        assert {p["phase"] for p in other[tid]["phases"]} >= {"data", "ttt", "search", "select"}
    meta = json.loads((root / "ray" / "run.json").read_text())
    assert meta["engine"] == "ray" and meta["workers"] == 3
    assert {r["worker"] for r in other.values()} <= {0, 1, 2}
    stats = on_ray["ray"]
    # actors still loading when the others have done the work are not waited for
    assert 1 <= len(stats["actors"]) <= 3 and len(stats["handover_s"]) == 6
    for name in ("report.html", "score.json", "timeline.png"):  # the dry run's files, as a local run writes them
        assert (root / "ray" / name).is_file()


def test_resume_of_a_ray_run_reuses_its_records(dry_runs, tiny_model_dir):
    root = dry_runs["root"]
    before = {p.name: p.stat().st_mtime_ns for p in (root / "ray" / "tasks").glob("*.json")}
    removed = sorted(before)[:2]
    for name in removed:
        (root / "ray" / "tasks" / name).unlink()
    summary = dry_run(root / "ray", workers=3, engine=RayEngine(), resume=True, **dry_runs["kw"])
    assert (summary["resumed"], summary["answered"]) == (4, 2)
    after = {p.name: p.stat().st_mtime_ns for p in (root / "ray" / "tasks").glob("*.json")}
    assert sorted(after) == sorted(before)
    assert all(after[n] == t for n, t in before.items() if n not in removed), "a finished task was redone"
    assert load_submission(root / "ray" / "submission.json") == load_submission(root / "local" / "submission.json")


def test_an_actor_that_dies_mid_task_is_replaced_and_its_task_retried(tiny_model_dir, eval_files, tmp_path, monkeypatch):
    """One task kills its actor's process (as a lost node or the OOM killer would): the driver
    retries it once on another actor (which dies too), then records it; the dead actors are
    replaced, every other task is answered, the run ends early and the file is valid."""
    challenges = eval_files[0]
    ids = load_challenges(challenges).ids
    out = tmp_path / "submission.json"
    monkeypatch.setenv(FAULTS_ENV, json.dumps({ids[2]: "crash"}))  # the tests' hook (faults.py), read by the driver
    started = time.time()
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", time_budget=900, workers=3,
                  run_dir=tmp_path / "run", progress=False, engine=RayEngine(), overrides=FAST)
    assert time.time() - started < 600 and summary["margin_s"] > 0
    assert (summary["answered"], summary["failed"], summary["unstarted"]) == (5, 1, 0)
    sub = assert_valid(out, challenges)
    res = records(tmp_path / "run")
    assert res[ids[2]]["status"] == "error" and res[ids[2]]["error"].startswith("worker actor died")
    for tid in ids:
        if tid != ids[2]:
            assert res[tid]["status"] == "ok"
            assert sub[tid][0]["attempt_1"] == res[tid]["tests"][0]["attempts"][0]
    log = (tmp_path / "run" / "log.txt").read_text()
    tries = re.findall(rf"task {ids[2]}: worker actor died \(\w+\) on worker (\d)", log)
    assert len(tries) == 2 and tries[0] != tries[1], log[-3000:]  # retried once, on another actor
    assert len(re.findall(r"worker \d: pid \d+", log)) >= 4  # a dead actor replaced


def test_the_deadline_holds_with_an_actor_that_never_finishes(tiny_model_dir, eval_files, tmp_path, monkeypatch):
    """A task that hangs its actor, with a hang limit beyond the deadline: the other actors answer
    the rest, the driver stops at the deadline, records the hung task as still running then, and
    leaves a valid file."""
    challenges = eval_files[0]
    ids = load_challenges(challenges).ids
    out = tmp_path / "submission.json"
    budget = 75.0
    monkeypatch.setenv(FAULTS_ENV, json.dumps({ids[0]: "hang"}))
    started = time.time()
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", time_budget=budget, workers=3,
                  run_dir=tmp_path / "run", progress=False, engine=RayEngine(), overrides=FAST)
    elapsed = time.time() - started
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert elapsed < budget and time.time() < meta["deadline"] + 5, (elapsed, summary)
    res = records(tmp_path / "run")
    assert res[ids[0]]["status"] == "timeout" and res[ids[0]]["error"] == "still running at the deadline"
    assert summary["answered"] == 5 and all(res[t]["status"] == "ok" for t in ids[1:])
    assert_valid(out, challenges)


def test_ray_is_an_extra_that_arcttt_never_imports_by_itself():
    code = ("import sys, arcttt, arcttt.cli, arcttt.runner, arcttt.merge, arcttt.shards; "
            "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
    pins = (REPO / "kaggle" / "pins.txt").read_text().lower()
    assert not re.search(r"^ray\b", pins, re.M), "ray must not be in the Kaggle wheelhouse"
