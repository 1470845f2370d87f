"""Where a whole run's time goes: share of the worker-time in each phase, and the overhead outside
TTT / search / scoring (worker start-up and model load, hand-over between tasks, writing results).

    python bench/run_budget.py --out /tmp/budget-run [--tasks 10] [--workers 1] [--model DIR] [--config NAME]

Runs ``arcttt dry-run`` (tiny model, cpu-smoke preset unless told otherwise) and prints the
figures; paste them into bench/RESULTS.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from arcttt.runner import dry_run
from arcttt.profiling import load_run, phase_totals, worker_idle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="arc-agi-2-eval")
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--time-budget", type=float, default=None)
    args = ap.parse_args()

    wall0 = time.time()
    summary = dry_run(args.out, split=args.split, tasks=args.tasks, model=args.model, config=args.config,
                      workers=args.workers, time_budget=args.time_budget, progress=False)
    wall = time.time() - wall0
    run = load_run(args.out)
    workers = len(run.workers)
    starts = [t.start for t in run.timed if t.start is not None]
    span = run.last_end - run.start             # run start -> last task end
    worker_time = span * workers
    totals = phase_totals(run)
    busy = sum(t.seconds for t in totals)
    print(f"split {args.split}, {summary['tasks']} tasks, {workers} worker(s), preset {run.info.get('preset')}")
    print(f"wall time of the dry run (export, model build, run, scoring, report): {wall:.1f} s")
    print(f"run start -> last task end: {span:.1f} s = {worker_time:.1f} worker-seconds")
    print(f"{'phase':<10} {'seconds':>9} {'share':>7}")
    for t in totals:
        print(f"{t.phase:<10} {t.seconds:>9.1f} {t.seconds / worker_time:>7.1%}")
    print(f"{'outside':<10} {worker_time - busy:>9.1f} {(worker_time - busy) / worker_time:>7.1%}"
          f"   (no task running: {min(starts) - run.start:.1f} s start-up and model load before the"
          f" first task, then hand-overs and idle)")
    for w in worker_idle(run):
        print(f"worker {w.worker}: {w.tasks} tasks, busy {w.busy_s:.1f} s, idle {w.idle_s:.1f} s, tail {w.tail_s:.1f} s")
    print(f"margin left at the deadline: {summary['margin_s']:.1f} s; "
          f"score {summary.get('score', {}).get('score')}")


if __name__ == "__main__":
    main()
