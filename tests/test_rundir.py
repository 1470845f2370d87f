"""A run folder you can trust, tested without a model wherever the mechanism allows: hostile task
ids, the lock, reuse of a folder, bad budgets and huge integers, file-system faults, stopping
workers at once, report/profile on a path that is not a run folder, and DESIGN.md's contract."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
from pathlib import Path

import pytest
from helpers import HOSTILE_IDS, run_cli

from arcttt.data import load_challenges
from arcttt.records import TaskResult, task_file_name
from arcttt.rundir import RunDirError, RunLock, claim, require_run_dir
from arcttt.runner import RunWriteError, _stop, _Worker, run, worker_count
from arcttt.submission import load_submission, validate_submission

BAD_TASK = {"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]]}]}  # 12 is no colour


def write_challenges(path: Path, tasks: dict) -> Path:
    path.write_text(json.dumps(tasks))
    return path


def files_under(root: Path) -> set[Path]:
    return {Path(d) / f for d, _, fs in os.walk(root) for f in fs}


def test_hostile_ids_never_leave_the_run_folder(tmp_path, capsys):
    """Malformed tasks under hostile ids (no model needed: nothing to answer): every file written is
    in the run folder or is the submission, each record keeps its exact id, and the log's lines are whole."""
    work = tmp_path / "work"
    (work / "abs").mkdir(parents=True)
    ids = [*HOSTILE_IDS, str(work / "abs" / "x"), "../" * 12 + "tmp/arcttt-escape"]
    chal = write_challenges(tmp_path / "c.json", {tid: BAD_TASK for tid in ids})
    before = files_under(tmp_path)
    run_dir, out = work / "run", work / "out" / "submission.json"
    summary = run(chal, tmp_path / "no-model", out, run_dir=run_dir, config="cpu-smoke", progress=False)
    assert summary["rejected"] == len(ids)
    written = files_under(tmp_path) - before
    assert written and all(p == out or run_dir in p.parents for p in written), written - {out}
    assert not Path("/tmp/arcttt-escape.json").exists()
    records = [TaskResult.from_json(json.loads(p.read_text())) for p in (run_dir / "tasks").glob("*.json")]
    assert sorted(r.task_id for r in records) == sorted(ids)
    assert all(r.status == "rejected" for r in records)
    assert validate_submission(load_submission(out), load_challenges(chal).test_counts()) == []
    log = (run_dir / "log.txt").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in log)  # no id split a line
    assert max(map(len, log)) < 400


def test_huge_integer_is_one_rejection_not_a_traceback(tmp_path, capsys):
    huge = "9" * 5000
    text = '{"big": {"train": [{"input": [[' + huge + ']], "output": [[1]]}], "test": [{"input": [[1]]}]}}'
    chal = tmp_path / "c.json"
    chal.write_text(text)
    out = tmp_path / "s.json"
    code, stdout, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                             "--quiet", "--config", "cpu-smoke"], capsys)
    assert code == 0 and "1 rejected" in stdout
    assert "integer of 5,000 digits" in TaskResult.from_json(
        json.loads(next((tmp_path / "arcttt-run" / "tasks").glob("*.json")).read_text())).error
    sub = tmp_path / "bad-sub.json"
    sub.write_text('{"big": [{"attempt_1": [[' + huge + ']], "attempt_2": [[1]]}]}')
    code, stdout, _ = run_cli(["validate", str(sub), "--challenges", str(chal)], capsys)
    assert code == 1 and "integer of 5,000 digits" in stdout and len(stdout) < 400
    sols = tmp_path / "sol.json"
    sols.write_text('{"big": [[[1]]]}')
    code, stdout, err = run_cli(["score", str(sub), "--solutions", str(sols)], capsys)
    assert code == 0 and "Traceback" not in err and "integer of 5,000 digits" in err


@pytest.mark.parametrize("budget", ["0", "-5", "nan", "inf", "-inf"])
def test_time_budget_must_be_positive_and_finite(budget, tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(tmp_path / "s.json"),
                        f"--time-budget={budget}"], capsys)
    assert code == 2 and err.count("\n") == 1 and "positive" in err
    assert not (tmp_path / "s.json").exists() and not (tmp_path / "arcttt-run").exists()


def test_worker_count_is_capped_with_a_note():
    assert worker_count(None, 0, 10, 16) == (1, [])
    assert worker_count(None, 4, 10, 16) == (4, [])
    n, notes = worker_count(64, 0, 3, 16)
    assert n == 3 and "64 asked, 3 started" in notes[0]
    n, notes = worker_count(64, 4, 100, 8)
    assert n == 8 and "8 CPUs" in notes[0]


# --- stop all workers at once ----------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class StubbornProc:
    """A worker process that ignores the stop message: every join waits out its whole timeout."""

    def __init__(self, clock: FakeClock):
        self.clock, self.alive = clock, True

    def is_alive(self) -> bool:
        return self.alive

    def join(self, timeout=None):
        self.clock.now += timeout or 0.0

    def terminate(self):
        pass  # ignored, as a worker stuck in a long kernel would

    def kill(self):
        self.alive = False


class Conn:
    closed = False

    def send(self, msg):
        pass

    def close(self):
        self.closed = True


@pytest.mark.parametrize("n", [1, 8, 64])
def test_stop_waits_once_whatever_the_number_of_workers(n):
    clock = FakeClock()
    pool = {i: _Worker(i, None, StubbornProc(clock), Conn(), state="idle") for i in range(n)}
    _stop(pool, grace=1.0, clock=clock)
    assert clock.now <= 1.0 + 1.0  # one shared grace, one shared wait after the kill: not n of them
    assert not any(w.proc.is_alive() for w in pool.values())


def _sleep_forever():
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


def test_stop_kills_real_processes_that_ignore_it():
    ctx = mp.get_context("fork")
    pool = {}
    for i in range(6):
        proc = ctx.Process(target=_sleep_forever, daemon=True)
        proc.start()
        pool[i] = _Worker(i, None, proc, Conn(), state="busy" if i % 2 else "idle")
    _stop(pool, grace=0.2)
    assert not any(w.proc.is_alive() for w in pool.values())


# --- the lock and reuse of a folder ----------------------------------------------------------------

def test_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with RunLock(run_dir):
        with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
            with RunLock(run_dir):
                pass
        chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
        code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out",
                            str(tmp_path / "s.json"), "--run-dir", str(run_dir), "--quiet"], capsys)
        assert code == 2 and f"in use by process {os.getpid()}" in err and err.count("\n") == 1
        assert not (tmp_path / "s.json").exists()  # the other run's submission is not touched
    assert not (run_dir / ".lock").exists()  # released and removed
    dead = mp.get_context("fork").Process(target=int)
    dead.start()
    dead.join()
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with RunLock(run_dir) as lock:  # left by a process that is gone: stale
        assert lock.stale["pid"] == dead.pid
        assert json.loads((run_dir / ".lock").read_text())["pid"] == os.getpid()


def test_lock_by_pid_where_there_is_no_flock(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    live = mp.get_context("fork").Process(target=_sleep_forever, daemon=True)
    live.start()
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename}))
        with pytest.raises(RunDirError, match=f"process {live.pid}"):
            RunLock(run_dir)._enter_by_pid()
    finally:
        live.kill()
        live.join()
    lock = RunLock(run_dir)._enter_by_pid()  # its process is gone now
    assert lock.stale["pid"] == live.pid
    lock.__exit__(None, None, None)
    assert not (run_dir / ".lock").exists()


def test_claim_new_refuse_resume_and_replace(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "tasks").mkdir(parents=True)
    assert claim(run_dir, resume=False) == "new"
    (run_dir / "tasks" / task_file_name("a")).write_text("{}")
    (run_dir / "run.json").write_text(json.dumps({"command": "run"}))
    with pytest.raises(RunDirError, match="add --resume"):
        claim(run_dir, resume=False)
    with pytest.raises(RunDirError, match="add --resume"):  # a dry run does not replace a run's records
        claim(run_dir, resume=False, replace_dry_run=True)
    assert claim(run_dir, resume=True) == "resume"
    (run_dir / "run.json").write_text(json.dumps({"command": "dry-run"}))
    (run_dir / "data").mkdir()
    assert claim(run_dir, resume=False, replace_dry_run=True) == "replaced"
    assert not list((run_dir / "tasks").iterdir()) and not (run_dir / "run.json").exists()
    assert (run_dir / "data").is_dir()  # only the run's own files go


def test_report_and_profile_refuse_a_path_that_is_not_a_run_folder(tmp_path, capsys):
    for argv in (["report", str(tmp_path / "nope")], ["profile", str(tmp_path / "nope")],
                 ["report", str(tmp_path)], ["profile", str(tmp_path)]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "nope").exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(RunDirError, match="not a folder"):
        require_run_dir(Path(__file__))


# --- file-system faults: one line, exit 3, the default submission wherever it can go ---------------

def test_out_folder_missing_is_made(tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    out = tmp_path / "not" / "yet" / "s.json"
    code, _, _ = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                      "--run-dir", str(tmp_path / "elsewhere"), "--quiet", "--config", "cpu-smoke"], capsys)
    assert code == 0 and load_submission(out) == {"a": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}


def test_out_path_that_is_a_folder(tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    out = tmp_path / "s.json"
    out.mkdir()
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                        "--quiet"], capsys)
    assert code == 3 and err.count("\n") == 1 and str(out) in err and "Traceback" not in err
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary file left behind


def test_run_folder_that_cannot_be_made_leaves_the_default_submission(tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    blocker = tmp_path / "run"
    blocker.write_text("a file where the run folder should be")  # as root, chmod cannot make a folder read-only
    out = tmp_path / "s.json"
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                        "--run-dir", str(blocker), "--quiet"], capsys)
    assert code == 3 and err.count("\n") == 1 and str(blocker) in err and "holds the default answers" in err
    assert validate_submission(load_submission(out), {"a": 1}) == []


def test_full_disk(tmp_path, capsys, monkeypatch):
    from arcttt import submission

    def no_space(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    out = tmp_path / "s.json"
    monkeypatch.setattr(submission.SubmissionWriter, "_write_locked", no_space)
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                        "--quiet"], capsys)
    assert code == 3 and err.count("\n") == 1 and "No space left on device" in err and str(out) in err
    monkeypatch.undo()

    import arcttt.rundir
    import arcttt.runner

    real = arcttt.runner.atomic_write_json
    writers = (arcttt.rundir, arcttt.runner)  # records (rundir.write_record), and the run's own files

    def records_fail(path, obj):
        if Path(path).parent.name == "tasks":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, obj)

    for module in writers:
        monkeypatch.setattr(module, "atomic_write_json", records_fail)
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(out),
                        "--run-dir", str(tmp_path / "run2"), "--quiet", "--config", "cpu-smoke"], capsys)
    assert code == 3 and "1 writes failed" in err and "No space left on device" in err
    assert validate_submission(load_submission(out), {"a": 1}) == []
    with pytest.raises(RunWriteError):
        for module in writers:
            monkeypatch.setattr(module, "atomic_write_json", lambda p, o: records_fail(Path(p).parent / "tasks" / "x", o))
        run(chal, tmp_path, out, run_dir=tmp_path / "run3", config="cpu-smoke", progress=False)


def test_config_file_not_utf8(tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(b"ttt:\n  steps: \xff\xfe\n")
    code, _, err = run_cli(["run", "--challenges", str(chal), "--model", str(tmp_path), "--out", str(tmp_path / "s.json"),
                        "--config", str(cfg), "--quiet"], capsys)
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1


# --- DESIGN.md's run-folder contract ---------------------------------------------------------------

def test_design_run_folder_section_matches_the_record(tmp_path):
    """DESIGN.md's record example reads and writes back unchanged (so it names exactly the fields the
    type has), and its run.json lists exactly the keys a run writes."""
    from arcttt.records import STATUSES

    design = (Path(__file__).parent.parent / "DESIGN.md").read_text()
    section = design.split("## Run folder", 1)[1].split("\n## ", 1)[0]
    run_json, record = (json.loads(b) for b in re.findall(r"```json\n(.*?)```", section, re.S))
    assert TaskResult.from_json(record).to_json() == record
    chal = write_challenges(tmp_path / "c.json", {"a": BAD_TASK})
    run(chal, tmp_path, tmp_path / "s.json", config="cpu-smoke", progress=False)
    assert set(run_json) == set(json.loads((tmp_path / "arcttt-run" / "run.json").read_text()))
    for name in ("config.json", "run.json", "summary.json", "score.json", "report.html", "timeline.png", "log.txt",
                 "submission.json", ".lock", "tasks/"):
        assert name in section, name
    assert " | ".join(STATUSES) in section


# --- the small things ------------------------------------------------------------------------------

def test_files_read_like_any_other(tmp_path):
    import stat

    from arcttt.submission import atomic_write_json

    mask = os.umask(0o022)
    os.umask(mask)
    atomic_write_json(tmp_path / "x.json", {})
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask  # not mkstemp's 0600


def test_summary_never_says_minus_zero():
    from arcttt.cli import _summary_line

    line = _summary_line({"tasks": 1, "answered": 0, "resumed": 0, "failed": 0, "rejected": 1, "unstarted": 0,
                          "seconds": 1.0, "margin_s": -0.3}, Path("s.json"))
    assert "-0" not in line and ", 0 s left" in line


def test_data_stats_prints_rounded_figures(capsys):
    code, out, _ = run_cli(["data", "stats", "--split", "arc-agi-2-eval"], capsys)
    assert code == 0 and "cells_p90" in out and not re.search(r"\d\.\d{3,}", out)


def test_validate_output_is_bounded(tmp_path, capsys):
    chal = write_challenges(tmp_path / "c.json", {"a": {"train": [{"input": [[1]], "output": [[1]]}],
                                                         "test": [{"input": [[1]]}]}})
    sub = tmp_path / "s.json"
    sub.write_text(json.dumps({"a": [{"attempt_1": [["x" * 5_000_000]], "attempt_2": [[1]]}],
                               "new\nline" + "z" * 1000: []}))
    code, out, _ = run_cli(["validate", str(sub), "--challenges", str(chal)], capsys)
    assert code == 1 and len(out) < 600 and out.count("\n") == 2, out
