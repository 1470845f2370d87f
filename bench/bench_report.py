"""Size and build time of report.html for a whole split, and how long chromium takes to render it.

Writes a run directory by hand (as tests/conftest.py ``handmade_run`` does, but for every task of a
bundled split): each test input gets the truth and two near misses as candidates, the first N tasks
solved, then the rest failed; two workers, back-to-back tasks. Then times ``write_report`` and, if
chromium is on PATH, a headless screenshot of the page.

    python bench/bench_report.py --split arc-agi-1-eval
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from arcttt.data import bundled_split
from arcttt.report import write_report


def write_run(root: Path, split: str) -> tuple[Path, Path]:
    challenges, solutions = bundled_split(split)
    chal, sols = root / "challenges.json", root / "solutions.json"
    chal.write_text(json.dumps(challenges))
    sols.write_text(json.dumps(solutions))
    run_dir = root / "run"
    (run_dir / "tasks").mkdir(parents=True)
    start, clock, submission = 1_700_000_000.0, [0.0, 0.0], {}
    for n, (tid, truths) in enumerate(solutions.items()):
        worker = n % 2
        t0 = start + clock[worker]
        tests = []
        for truth in truths:
            miss = [[(v + 1) % 10 if (r, c) == (0, 0) else v for c, v in enumerate(row)] for r, row in enumerate(truth)]
            ranked = [truth, miss] if n % 3 == 0 else [miss, truth]
            tests.append({"attempts": ranked, "candidates": [{"grid": g, "hits": 3 - k, "search_logprob": -0.5 - k,
                                                              "score": -1.0 - k} for k, g in enumerate(ranked)]})
        phases = [("data", 0, 1), ("ttt", 1, 31), ("search", 31, 46), ("select", 46, 54)]
        (run_dir / "tasks" / f"{tid}.json").write_text(json.dumps({
            "task_id": tid, "status": "ok", "worker": worker, "start": t0, "end": t0 + 55,
            "phases": [{"phase": p, "start": t0 + a, "end": t0 + b} for p, a, b in phases],
            "ttt": {"steps": 32, "losses": [2.0, 1.0, 0.5]}, "tests": tests}))
        clock[worker] += 56
        submission[tid] = [{"attempt_1": t["attempts"][0], "attempt_2": t["attempts"][1]} for t in tests]
    (run_dir / "run.json").write_text(json.dumps({"start": start, "deadline": start + 43200, "budget_s": 43200,
                                                  "workers": 2, "challenges": str(chal), "tasks": list(solutions)}))
    (run_dir / "submission.json").write_text(json.dumps(submission))
    return run_dir, sols


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="arc-agi-1-eval")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, sols = write_run(Path(tmp), args.split)
        t = time.perf_counter()
        page = write_report(run_dir, sols)
        build_s = time.perf_counter() - t
        n_tasks = len(list((run_dir / "tasks").glob("*.json")))
        print(f"{args.split}: {n_tasks} tasks, report.html {page.stat().st_size / 2**20:.1f} MiB, "
              f"written in {build_s:.1f} s")
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:
            t = time.perf_counter()
            subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp}/p",
                            f"--screenshot={tmp}/shot.png", "--window-size=1300,1800", page.as_uri()],
                           check=True, capture_output=True, timeout=600)
            print(f"chromium: loaded and screenshot in {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
