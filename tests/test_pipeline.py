"""The time-budgeted run on CPU with the tiny model and real bundled tasks: deadline, faults,
workers, crash-safety and resume, bad inputs, and the dry run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arcttt.cli import main
from arcttt.data import export_split, load_challenges
from arcttt.model import ModelLoadError
from arcttt.pipeline import run
from arcttt.submission import load_submission, validate_submission

# fast settings for the tiny model: little TTT, short hang limits
FAST = ["ttt.steps=2", "data.n_sequences=4", "budget.hang_grace_s=5", "budget.hang_factor=1.0",
        "budget.min_task_s=2"]


def results(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "tasks").glob("*.json")}


def assert_valid(submission: Path, challenges: Path) -> dict:
    sub = load_submission(submission)
    assert validate_submission(sub, load_challenges(challenges).test_counts()) == []
    return sub


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    return export_split("arc-agi-1-eval", tmp_path_factory.mktemp("data"), limit=24)


def test_tight_budget_two_workers_and_faults(tiny_model_dir, eval_files, tmp_path):
    """24 tasks, 2 workers, 75 s: one task crashes its worker, one hangs, one raises; every other task
    is answered, the run ends before its deadline, and the submission is valid throughout."""
    challenges, _ = eval_files
    ids = load_challenges(challenges).ids
    faults = {ids[0]: "crash", ids[1]: "hang", ids[2]: "raise"}
    out = tmp_path / "submission.json"
    summary = run(challenges, tiny_model_dir, out, config="cpu-smoke", time_budget=75, workers=2,
                  run_dir=tmp_path / "run", overrides=[*FAST, f"inject_faults={faults!r}"], progress=False)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["margin_s"] > 0 and time.time() < meta["deadline"] + 1
    assert_valid(out, challenges)
    res = results(tmp_path / "run")
    assert res[ids[0]]["status"] == "error" and "crashed" in res[ids[0]]["error"]
    assert res[ids[1]]["status"] == "timeout"
    assert res[ids[2]]["status"] == "error" and "injected" in res[ids[2]]["error"]
    ok = [tid for tid in ids[3:] if res.get(tid, {}).get("status") == "ok"]
    assert len(ok) >= 15, {tid: res.get(tid, {}).get("status") for tid in ids}
    assert {r["worker"] for r in res.values() if r["status"] == "ok"} == {0, 1}
    for tid in ok:  # every phase was timed
        assert {p["phase"] for p in res[tid]["phases"]} >= {"data", "ttt", "search", "select"}
    log = (tmp_path / "run" / "log.txt").read_text()
    assert ids[0] in log and ids[2] in log


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
    summary = run(challenges, tiny_model_dir, out, run_dir=run_dir, time_budget=300, overrides=FAST, progress=False)
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


def test_dry_run_cli_scores_and_reports(tmp_path, capsys):
    out = tmp_path / "dry"
    with pytest.raises(SystemExit) as e:
        main(["dry-run", "--out", str(out), "--tasks", "3", "--quiet", *[a for s in FAST for a in ("--set", s)]])
    assert e.value.code == 0
    score = json.loads((out / "score.json").read_text())
    assert score["total"] >= 3 and 0 <= score["score"] <= 1
    for name in ("submission.json", "report.html", "timeline.png", "config.json", "run.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "config.json").read_text())["preset"] == "cpu-smoke"
    assert "score:" in capsys.readouterr().out
    # the run calibrates the planner: per-token costs measured in it
    from arcttt.budget import plan_report

    plan = plan_report(out / "data" / "arc-agi_evaluation_challenges.json", "cpu-smoke", calibration=out)
    assert f"measured in {out}" in plan and "3 tasks" in plan


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

    from arcttt import pipeline
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
            pipeline._worker_main(wid, None, str(tiny_model_dir), load_config("cpu-smoke").to_json(), str(tmp_path),
                                  conn, threading.Lock())
            assert conn.sent == [("ready", wid, None)]
            seen.append(os.environ["UNSLOTH_COMPILE_LOCATION"])
    finally:
        for h in set(logging.getLogger("arcttt").handlers) - set(handlers):
            logging.getLogger("arcttt").removeHandler(h)
            h.close()
    assert seen == [f"{tmp_path / 'ucc'}-worker0", f"{tmp_path / 'ucc'}-worker1"]
