"""The time-budgeted run on CPU with the tiny model and real bundled tasks: deadline, faults,
workers, crash-safety and resume, bad inputs, and the dry run."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arcttt.cli import main
from arcttt.data import export_split, load_challenges
from arcttt.faults import FAULTS_ENV
from arcttt.model import ModelLoadError
from arcttt.runner import run
from arcttt.submission import load_submission, validate_submission

# fast settings for the tiny model: little TTT, short hang limits
FAST = ["ttt.steps=2", "data.n_sequences=4", "budget.hang_grace_s=5", "budget.hang_factor=1.0",
        "budget.min_task_s=2"]


def results(run_dir: Path) -> dict[str, dict]:
    """Task id -> record, read from the files (named by records.task_file_name, keyed here by the id inside)."""
    out = {}
    for p in (run_dir / "tasks").glob("*.json"):
        r = json.loads(p.read_text())
        out[r["task_id"]] = r
    return out


def assert_valid(submission: Path, challenges: Path) -> dict:
    sub = load_submission(submission)
    assert validate_submission(sub, load_challenges(challenges).test_counts()) == []
    return sub


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    return export_split("arc-agi-1-eval", tmp_path_factory.mktemp("data"), limit=24)


def subset(challenges: Path, n: int, path: Path) -> Path:
    """The first ``n`` tasks of a challenges file, written to ``path``."""
    path.write_text(json.dumps(dict(list(json.loads(challenges.read_text()).items())[:n])))
    return path


def test_two_workers_and_faults(tiny_model_dir, eval_files, tmp_path, monkeypatch):
    """8 tasks, 2 workers, a budget far beyond what they need and a hang limit far beyond a task's
    share (so no outcome depends on how fast this machine is): one task crashes its worker
    (replaced; the task retried once on the other worker, then recorded), one raises (recorded, the
    worker goes on); every other task is answered with every phase timed, the run ends when the
    work is done, the submission is valid."""
    challenges = subset(eval_files[0], 8, tmp_path / "eight.json")
    ids = load_challenges(challenges).ids
    monkeypatch.setenv(FAULTS_ENV, json.dumps({ids[0]: "crash", ids[1]: "raise"}))  # the workers' test hook
    out = tmp_path / "submission.json"
    # each task stops at its own 4 s share; a hang limit far beyond it: no task is cut by the dispatcher
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", time_budget=1200, workers=2,
                  run_dir=tmp_path / "run", progress=False,
                  overrides=[*FAST, "budget.max_task_s=4", "budget.hang_grace_s=300"])
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["workers"] == 2 and summary["margin_s"] > 0 and summary["unstarted"] == 0
    assert (summary["answered"], summary["failed"]) == (6, 2)
    sub = assert_valid(out, challenges)
    res = results(tmp_path / "run")
    assert res[ids[0]]["status"] == "error" and "crashed (exit code 3)" in res[ids[0]]["error"]
    assert res[ids[1]]["status"] == "error" and "injected fault" in res[ids[1]]["error"]
    for tid in ids[2:]:
        assert res[tid]["status"] == "ok", (tid, res[tid])
        assert {p["phase"] for p in res[tid]["phases"]} >= {"data", "ttt", "search", "select"}
        assert sub[tid][0]["attempt_1"] == res[tid]["tests"][0]["attempts"][0]
    log = (tmp_path / "run" / "log.txt").read_text()
    # the crashing task was tried once on each worker: both workers took tasks
    crashes = re.findall(rf"task {ids[0]}: worker crashed \(exit code 3\) on worker (\d)", log)
    assert sorted(crashes) == ["0", "1"], log[-3000:]
    assert ids[1] in log


def test_a_worker_past_its_hang_limit_is_killed_and_replaced(tiny_model_dir, eval_files, tmp_path, monkeypatch):
    """The hang limit set to the task's start (hang_factor 0, no grace), so it is already past when
    the main process first looks: the hanging worker is killed and replaced, the task retried once
    on the fresh worker, then recorded as a timeout; the submission keeps the task's default."""
    challenges = subset(eval_files[0], 1, tmp_path / "one.json")
    (tid,) = load_challenges(challenges).ids
    monkeypatch.setenv(FAULTS_ENV, json.dumps({tid: "hang"}))
    out = tmp_path / "submission.json"
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", time_budget=1200, workers=1,
                  run_dir=tmp_path / "run", progress=False,
                  overrides=[*FAST, "budget.hang_factor=0", "budget.hang_grace_s=0"])
    assert (summary["answered"], summary["failed"], summary["margin_s"] > 0) == (0, 1, True)
    record = results(tmp_path / "run")[tid]
    assert record["status"] == "timeout" and record["error"] == "worker hung: no result 0 s after start"
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count(f"task {tid}: worker hung") == 2  # the first try and its one retry
    assert len(re.findall(r"worker 0: pid (\d+)", log)) == 2  # the hung worker was replaced
    assert load_submission(out) == load_submission(_defaults(challenges, tmp_path))
    assert not mp.active_children()


def test_a_deadline_already_past_starts_nothing(tiny_model_dir, eval_files, tmp_path):
    """A deadline that has passed before the first task could start: no task is started, every
    task keeps its default with a record saying why, and no worker is left running."""
    challenges = subset(eval_files[0], 4, tmp_path / "four.json")
    out = tmp_path / "submission.json"
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", workers=2, run_dir=tmp_path / "run",
                  progress=False, overrides=[*FAST, "budget.time_budget_s=1", "budget.safety_margin_s=0.999"])
    assert (summary["answered"], summary["failed"], summary["unstarted"]) == (0, 0, 4)
    assert all(r["status"] == "default" and r["error"] == "not started before the deadline"
               for r in results(tmp_path / "run").values())
    assert len(results(tmp_path / "run")) == 4
    assert load_submission(out) == load_submission(_defaults(challenges, tmp_path))
    assert not mp.active_children()


def _defaults(challenges: Path, tmp_path: Path) -> Path:
    """The all-default submission of ``challenges``."""
    from arcttt.submission import SubmissionWriter

    path = tmp_path / "defaults.json"
    SubmissionWriter.for_challenges(path, load_challenges(challenges))
    return path


def test_sigkill_then_resume_skips_finished_tasks(tiny_model_dir, eval_files, tmp_path):
    challenges, _ = eval_files
    run_dir, out = tmp_path / "run", tmp_path / "submission.json"
    cmd = [sys.executable, "-m", "arcttt", "run", "--challenges", str(challenges), "--model", str(tiny_model_dir),
           "--out", str(out), "--run-dir", str(run_dir), "--time-budget", "300", "--quiet",
           *[a for s in FAST for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = [r for r in results(run_dir).values() if r["status"] == "ok"] if (run_dir / "tasks").exists() else []
            if len(done) >= 3:
                break
            time.sleep(0.2)
        assert len(done) >= 3, "no progress before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers, mid-run
        proc.wait()
    assert_valid(out, challenges)  # never half-written
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "tasks").glob("*.json")
              if json.loads(p.read_text())["status"] == "ok"}
    summary = run(challenges, tiny_model_dir, out, run_dir=run_dir, time_budget=300, overrides=FAST, progress=False,
                  resume=True)
    assert summary["resumed"] >= len(before)
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "tasks").glob("*.json")}
    assert all(after[name] == mtime for name, mtime in before.items()), "a finished task was redone"
    assert all(r["status"] == "ok" for r in results(run_dir).values())
    sub = assert_valid(out, challenges)
    for name in before:  # resumed answers made it into the final file
        r = json.loads((run_dir / "tasks" / name).read_text())
        assert sub[r["task_id"]][0]["attempt_1"] == r["tests"][0]["attempts"][0]


def test_model_that_fails_to_load_leaves_default_submission(eval_files, tmp_path, capsys):
    challenges, _ = eval_files
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    out = tmp_path / "submission.json"
    with pytest.raises(SystemExit) as e:
        main(["run", "--challenges", str(challenges), "--model", str(bad), "--out", str(out), "--quiet"])
    assert e.value.code == 1
    assert "config.json" in capsys.readouterr().err
    assert_valid(out, challenges)


def test_corrupt_weights_fail_in_the_worker(tiny_model_dir, eval_files, tmp_path):
    challenges, _ = eval_files
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in Path(tiny_model_dir).iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    for f in broken.glob("*.safetensors"):
        f.write_bytes(b"garbage")
    out = tmp_path / "submission.json"
    with pytest.raises(ModelLoadError):
        run(challenges, broken, out, run_dir=tmp_path / "run", time_budget=60, overrides=FAST, progress=False)
    assert_valid(out, challenges)


def test_malformed_tasks_keep_defaults_and_the_rest_run(tiny_model_dir, eval_files, tmp_path):
    challenges, _ = eval_files
    data = json.loads(Path(challenges).read_text())
    keep = dict(list(data.items())[:3])
    first = next(iter(keep))
    keep["bad-values"] = {"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]]}]}
    keep["no-train"] = {"test": [{"input": [[1]]}, {"input": [[2]]}]}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(keep))
    out = tmp_path / "submission.json"
    summary = run(path, tiny_model_dir, out, run_dir=tmp_path / "run", time_budget=60, overrides=FAST,
                  progress=False)
    assert summary["rejected"] == 2 and summary["answered"] == 3
    sub = assert_valid(out, path)
    assert len(sub["no-train"]) == 2
    res = results(tmp_path / "run")
    assert res["bad-values"]["status"] == "rejected" and "bad-values" in res["bad-values"]["error"]
    assert res[first]["status"] == "ok"
    assert "bad-values" in (tmp_path / "run" / "log.txt").read_text()


def test_dry_run_cli_scores_and_reports(tmp_path, capsys, monkeypatch):
    """The README's main command, run twice from the same folder: the second run replaces the first
    (fresh timings in the profile, nothing resumed); run.json holds absolute paths, so the report of a
    copied run folder still finds its grids and scores against the recorded solutions; the held-out
    synthetic tasks are added and each group scored on its own."""
    monkeypatch.chdir(tmp_path)
    argv = ["dry-run", "--out", "dry", "--tasks", "3", "--synthetic", "2", "--quiet",
            *[a for s in FAST for a in ("--set", s)]]
    starts = []
    for _ in range(2):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        starts.append(json.loads((tmp_path / "dry" / "run.json").read_text())["start"])
    out = tmp_path / "dry"
    printed = capsys.readouterr().out.splitlines()
    wrote = [line for line in printed if line.startswith("wrote ")]
    assert starts[1] > starts[0] and len(wrote) == 2 and "5 tasks" in wrote[-1] and "0 resumed" in wrote[-1]
    assert printed[-4].startswith("score: ") and printed[-3].startswith("  arc-agi-2-eval: ")
    assert printed[-2].startswith("  held-out synthetic, trained families: ") and printed[-2].endswith("/1 test outputs)")
    assert printed[-1].startswith("  held-out synthetic, unseen families: ") and printed[-1].endswith("/1 test outputs)")
    # the shipped model by default, and one line saying what it is
    from arcttt.model import SHIPPED_MODEL

    said = [line for line in printed if line.startswith("model: ")]
    assert len(said) == 2 and said[-1].startswith(f"model: {SHIPPED_MODEL}: LlamaForCausalLM, 4 layers x 128, ")
    assert "trained by arcttt finetune from random init" in said[-1] and "excluded: arc-agi-1-eval" in said[-1]
    res = results(out)
    assert len(res) == 5 and all(r["start"] >= starts[1] for r in res.values())
    assert sum(t.startswith("syn101-") for t in res) == 1 and sum(t.startswith("syn102-") for t in res) == 1
    score = json.loads((out / "score.json").read_text())
    assert score["total"] >= 5 and 0 <= score["score"] <= 1
    for name in ("submission.json", "report.html", "timeline.png", "config.json", "run.json"):
        assert (out / name).is_file(), name
    assert not (out / ".lock").exists() and not (out / ".load.lock").exists()
    meta = json.loads((out / "run.json").read_text())
    assert meta["preset"] == "cpu-tiny" and meta["command"] == "dry-run" and meta["model"] == str(SHIPPED_MODEL)
    assert all(Path(meta[k]).is_absolute() for k in ("challenges", "model", "solutions", "out", "run_dir"))
    # the run calibrates the planner: per-token costs measured in it
    from arcttt.plan import plan_report

    plan = plan_report(out / "data" / "arc-agi_evaluation_challenges.json", "cpu-tiny", calibration=out)
    assert f"measured in {out}" in plan and "5 tasks" in plan

    copy = tmp_path / "elsewhere" / "dry-copy"
    import shutil

    shutil.copytree(out, copy)
    shutil.rmtree(out)
    with pytest.raises(SystemExit) as e:
        main(["report", str(copy)])  # no --solutions: the run's own are used
    assert e.value.code == 0
    page = (copy / "report.html").read_text()
    assert "not found" not in page and "no solutions given" not in page and 'data-what="' in page


def test_a_dry_run_in_another_format_builds_its_own_tiny_model(tmp_path, capsys):
    """--format omni-arc and no --model: the shipped model speaks compact, so a random tiny model of
    that format is built (the run used to stop: "format omni-arc was asked for, but arcttt.json
    says compact")."""
    with pytest.raises(SystemExit) as e:
        main(["dry-run", "--out", str(tmp_path / "dry"), "--tasks", "1", "--format", "omni-arc", "--quiet",
              "--set", "data.max_len=8192", *[a for s in FAST for a in ("--set", s)]])
    assert e.value.code == 0
    meta = json.loads((tmp_path / "dry" / "run.json").read_text())
    assert meta["model"] == str(tmp_path / "dry" / "tiny-model")
    assert json.loads((tmp_path / "dry" / "tiny-model" / "arcttt.json").read_text())["format"] == "omni-arc"
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model: ")]
    assert said and "format omni-arc, random weights from make_tiny_model" in said[0]


def test_a_dry_run_does_not_replace_a_run(tmp_path, capsys):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"command": "run"}))
    (tmp_path / "tasks" / "x.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["dry-run", "--out", str(tmp_path), "--tasks", "1", "--quiet"])
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    assert (tmp_path / "tasks" / "x.json").exists()


def test_hostile_ids_of_real_tasks_and_resume_only_what_matches(tiny_model_dir, eval_files, tmp_path):
    """Two real tasks under hostile ids: their records stay in the run folder and keep the exact ids.
    Run again on the folder: refused without resume; with it, the task whose content changed under
    the same id is redone and the other reused."""
    challenges, _ = eval_files
    data = json.loads(Path(challenges).read_text())
    first, second, third = list(data.values())[:3]
    ids = ["../../escape", "new\nline"]
    work = tmp_path / "work"
    work.mkdir()
    chal = tmp_path / "hostile.json"
    chal.write_text(json.dumps({ids[0]: first, ids[1]: second}))
    before = {p for p in tmp_path.rglob("*")}
    run_dir, out = work / "run", work / "submission.json"
    summary = run(chal, tiny_model_dir, out, run_dir=run_dir, time_budget=200, overrides=FAST, progress=False)
    assert summary["answered"] == 2
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert all(work in p.parents for p in written), written
    res = results(run_dir)
    assert sorted(res) == sorted(ids) and all(r["status"] == "ok" for r in res.values())
    assert_valid(out, chal)

    from arcttt.rundir import RunDirError

    with pytest.raises(RunDirError, match="--resume"):
        run(chal, tiny_model_dir, out, run_dir=run_dir, time_budget=200, overrides=FAST, progress=False)
    kept = result_file = None
    for p in (run_dir / "tasks").glob("*.json"):
        if json.loads(p.read_text())["task_id"] == ids[0]:
            kept, result_file = p.stat().st_mtime_ns, p
    chal.write_text(json.dumps({ids[0]: first, ids[1]: third}))  # same id, other content
    summary = run(chal, tiny_model_dir, out, run_dir=run_dir, time_budget=200, overrides=FAST, progress=False,
                  resume=True)
    assert summary["resumed"] == 1 and summary["redone"] == {"different task": 1} and summary["answered"] == 1
    assert result_file.stat().st_mtime_ns == kept
    sub = assert_valid(out, chal)
    assert res[ids[0]]["tests"][0]["attempts"][0] == sub[ids[0]][0]["attempt_1"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_run_with_a_valid_file_and_nothing_left(sig, tiny_model_dir, eval_files, tmp_path):
    """SIGTERM to the main process (as Kaggle and schedulers send it), or SIGINT to the whole group
    (Ctrl-C): one line, exit 128 + signal, a valid submission, the workers gone, no lock or
    temporary file left, the tasks in flight recorded as stopped."""
    challenges, _ = eval_files
    run_dir, out = tmp_path / "run", tmp_path / "submission.json"
    cmd = [sys.executable, "-m", "arcttt", "run", "--challenges", str(challenges), "--model", str(tiny_model_dir),
           "--out", str(out), "--run-dir", str(run_dir), "--time-budget", "300", "--quiet",
           *[a for s in FAST for a in ("--set", s)]]
    proc = subprocess.Popen(cmd, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if (run_dir / "tasks").exists() and any(r["status"] == "ok" for r in results(run_dir).values()):
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before the signal"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"stopped by {sig.name}: ")
    assert_valid(out, challenges)
    pids = [int(p) for p in re.findall(r"worker \d+: pid (\d+)", (run_dir / "log.txt").read_text())]
    assert pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not [p.name for p in run_dir.rglob(".*")]  # no .lock, .load.lock or temporary file
    statuses = {r["status"] for r in results(run_dir).values()}
    assert statuses <= {"ok", "stopped"} and "stopped" in statuses


def test_bad_override_is_one_clear_error(eval_files, tiny_model_dir, tmp_path, capsys):
    challenges, _ = eval_files
    with pytest.raises(SystemExit) as e:
        main(["run", "--challenges", str(challenges), "--model", str(tiny_model_dir), "--out",
              str(tmp_path / "s.json"), "--set", "ttt.nope=1", "--set", "search.threshold=high"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "ttt.nope" in err and "search.threshold" in err


def test_each_worker_compiles_unsloth_into_its_own_folder(tiny_model_dir, tmp_path, monkeypatch):
    """unsloth compiles kernels into UNSLOTH_COMPILE_LOCATION at import; workers importing it at
    once must not share that folder (the race the field notes warn of)."""
    import logging
    import os
    import threading

    from arcttt import worker
    from arcttt.config import load_config

    class StopAtOnce:  # the main process's end of the pipe: "stop" as the first message
        def __init__(self):
            self.sent = []

        def send(self, msg):
            self.sent.append(msg)

        def poll(self, timeout=None):
            return True

        def recv(self):
            return None

    handlers = list(logging.getLogger("arcttt").handlers)
    seen = []
    try:
        for wid in (0, 1):
            monkeypatch.setenv("UNSLOTH_COMPILE_LOCATION", str(tmp_path / "ucc"))
            conn = StopAtOnce()
            worker.worker_main(wid, None, str(tiny_model_dir), load_config("cpu-smoke").to_json(), str(tmp_path),
                               conn, threading.Lock())
            assert conn.sent == [("ready", wid, None)]
            seen.append(os.environ["UNSLOTH_COMPILE_LOCATION"])
    finally:
        for h in set(logging.getLogger("arcttt").handlers) - set(handlers):
            logging.getLogger("arcttt").removeHandler(h)
            h.close()
    assert seen == [f"{tmp_path / 'ucc'}-worker0", f"{tmp_path / 'ucc'}-worker1"]
