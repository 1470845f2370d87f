"""Profiling figures on the hand-made run directory (tests/conftest.py ``handmade_run``): six real
tasks on two workers, spans chosen so every figure below follows by hand from HANDMADE_TASKS."""

from __future__ import annotations

import json
import shutil

import pytest

from arcttt.profiling import (OTHER, RunDirError, load_run, margin, phase_totals, summary, task_rows,
                              timeline_figure, worker_idle)
from helpers import HANDMADE_TASKS, PNG_MAGIC, RUN_START, run_cli


def test_load_run_reads_every_task(handmade_run):
    run = load_run(handmade_run[0])
    assert run.problems == []
    assert run.task_ids == list(HANDMADE_TASKS)
    assert run.missing == []
    assert run.workers == [0, 1]
    assert (run.start, run.deadline, run.budget_s) == (RUN_START, RUN_START + 1000, 1000.0)
    assert run.tasks["0c9aba6e"].status == "error" and "out of memory" in run.tasks["0c9aba6e"].error
    assert run.tasks["0c9aba6e"].ttt is None  # no "ttt" key in that file: read as absent, not a crash


def test_phase_totals_exact(handmade_run):
    totals = {t.phase: t for t in phase_totals(load_run(handmade_run[0]))}
    # data 1+2+1+1+1+2; ttt 60+70+59+30+3+100; search 30+30+10+10+30; select 8+16+4+4+16;
    # other = task time no phase covers: 1+2+0+1+1+2
    expected = {"data": 8.0, "ttt": 322.0, "search": 110.0, "select": 48.0, OTHER: 7.0}
    assert list(totals) == ["data", "ttt", "search", "select", OTHER]
    assert {k: t.seconds for k, t in totals.items()} == pytest.approx(expected)
    assert sum(t.seconds for t in totals.values()) == pytest.approx(495.0)  # = sum of task spans
    assert totals["ttt"].share == pytest.approx(322.0 / 2000.0)  # budget 1000 s x 2 workers


def test_task_rows(handmade_run):
    rows = {r.task_id: r for r in task_rows(load_run(handmade_run[0]))}
    assert list(rows) == list(HANDMADE_TASKS)
    multi = rows["6ea4a07e"]  # two test inputs: search and select run twice and add up
    assert (multi.worker, multi.seconds, multi.n_candidates) == (1, 60.0, 6)
    assert multi.phases == pytest.approx({"data": 1.0, "ttt": 30.0, "search": 20.0, "select": 8.0, OTHER: 1.0})
    assert (multi.ttt_steps, multi.final_loss) == (60, 0.75)
    assert rows["03560426"].phases == pytest.approx({"data": 1.0, "ttt": 59.0})  # fully covered: no "other"
    err = rows["0c9aba6e"]
    assert (err.status, err.ttt_steps, err.final_loss, err.n_candidates) == ("error", None, None, 0)


def test_idle_and_margin_exact(handmade_run):
    run = load_run(handmade_run[0])
    idle = {w.worker: w for w in worker_idle(run)}
    # worker 0 runs [5,105] [110,230] [240,300]: gaps 5+5+10 before its last end; the run's last end
    assert (idle[0].tasks, idle[0].busy_s, idle[0].idle_s, idle[0].tail_s) == (3, 280.0, 20.0, 0.0)
    # worker 1 runs [20,80] [90,95] [100,250]: gaps 20+10+5, then 50 s without work until 300
    assert (idle[1].tasks, idle[1].busy_s, idle[1].idle_s, idle[1].tail_s) == (3, 215.0, 35.0, 50.0)
    m = margin(run)
    assert m.after_last_task_s == pytest.approx(700.0)  # deadline 1000 - last end 300
    assert m.after_submission_s == pytest.approx(690.0)  # submission.json mtime set to start + 310


def test_resumed_tasks_do_not_count_as_this_runs_time(run_copy):
    info = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps(info | {"resumed": ["0692e18c"]}))
    run = load_run(run_copy)
    totals = {t.phase: t.seconds for t in phase_totals(run)}
    assert totals["ttt"] == pytest.approx(222.0)
    idle = {w.worker: w for w in worker_idle(run)}
    assert (idle[1].busy_s, idle[1].tail_s) == (65.0, 205.0)
    assert next(r for r in task_rows(run) if r.task_id == "0692e18c").resumed


def test_worker_overlap_and_gaps_match_a_brute_force_count(run_copy):
    # Overlapping spans on one worker (a clock jump, a restarted worker) must not count twice.
    path = run_copy / "tasks" / "0c786b71.json"
    rec = json.loads(path.read_text())
    rec.update(start=RUN_START + 100, end=RUN_START + 230)  # overlaps [5,105] by 5 s
    path.write_text(json.dumps(rec))
    run = load_run(run_copy)
    w0 = next(w for w in worker_idle(run) if w.worker == 0)
    spans = [(t.start - RUN_START, t.end - RUN_START) for t in run.tasks.values() if t.worker == 0]
    covered = sum(any(s <= x + 0.5 < e for s, e in spans) for x in range(0, 300))
    assert w0.busy_s == pytest.approx(covered) and w0.idle_s == pytest.approx(300 - covered)


def test_robust_to_missing_and_corrupt_files(run_copy):
    (run_copy / "tasks" / "0c786b71.json").write_text('{"task_id": "0c786b71", "status": ')  # cut short
    (run_copy / "tasks" / "00576224.json").write_text("[1, 2]")
    run = load_run(run_copy)
    assert any("0c786b71.json" in p for p in run.problems)
    assert any("00576224.json" in p and "not a JSON object" in p for p in run.problems)
    assert sorted(run.missing) == ["00576224", "0c786b71"]
    text = summary(run)
    assert "0c786b71.json" in text and "no result file for 2 task(s)" in text
    assert [r.status for r in task_rows(run)][:2] == ["missing", "missing"]

    shutil.rmtree(run_copy / "tasks")
    (run_copy / "run.json").write_text("{}")
    (run_copy / "submission.json").unlink()
    run = load_run(run_copy)
    assert "tasks/: missing (no task finished)" in run.problems
    assert margin(run).after_last_task_s is None and phase_totals(run) == []
    assert "margin at the deadline: - s" in summary(run)
    timeline_figure(run, run_copy / "empty.png")  # an empty run still draws
    (run_copy / "run.json").unlink()  # neither run.json nor tasks/: not a run folder at all
    with pytest.raises(RunDirError, match="not a run folder"):
        load_run(run_copy)


def test_phase_without_end_ends_with_its_task(run_copy):
    path = run_copy / "tasks" / "03560426.json"
    rec = json.loads(path.read_text())
    rec["phases"][-1]["end"] = None  # the worker died inside TTT; the main process wrote the end
    rec["phases"].append({"phase": "search"})  # no times at all: left out
    path.write_text(json.dumps(rec))
    row = next(r for r in task_rows(load_run(run_copy)) if r.task_id == "03560426")
    assert row.phases == pytest.approx({"data": 1.0, "ttt": 59.0})


def test_load_run_names_a_missing_dir(tmp_path):
    with pytest.raises(RunDirError, match="nope"):
        load_run(tmp_path / "nope")


def test_timeline_png(handmade_run, tmp_path):
    path = timeline_figure(load_run(handmade_run[0]), tmp_path / "t.png")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 280)  # 10 x (0.6 x 2 workers + 1.6) inches at 100 dpi
    from matplotlib.image import imread

    pixels = imread(path)
    ttt_blue = (pixels[..., :3] * 255).round().astype(int) == (0x1F, 0x77, 0xB4)
    assert ttt_blue.all(axis=-1).sum() > 1000  # the TTT phases are drawn


def test_profile_cli(run_copy, tmp_path, capsys):
    run_dir = run_copy
    code, out, _ = run_cli(["profile", run_dir], capsys)
    assert code == 0
    assert "ttt           322.0 s    16.1 %" in out
    assert "worker 1: 3 tasks, busy 215.0 s, idle 35.0 s, tail 50.0 s" in out
    assert "700.0 s after the last task ended, 690.0 s after submission.json" in out
    assert (run_dir / "timeline.png").read_bytes()[:8] == PNG_MAGIC

    code, _, err = run_cli(["profile", tmp_path / "absent"], capsys)
    assert code == 2 and "absent" in err
