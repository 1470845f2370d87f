"""How soon `arcttt run` has a valid submission on disk, and how soon it stops on SIGTERM.

    python bench/first_submission.py [--tasks 12] [--repeats 3] [--workers 1]

Exports the first TASKS ARC-AGI-1 eval tasks and builds the tiny model in a temporary folder, then,
REPEATS times: starts `arcttt run` as a process, times the first appearance of submission.json,
waits for the first answered task, sends SIGTERM and times the exit (exit code 143 expected).
Paste the figures into bench/RESULTS.md with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    from arcttt.data import export_split
    from arcttt.model import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="first-submission-"))
    challenges, _ = export_split("arc-agi-1-eval", root / "data", limit=args.tasks)
    model = make_tiny_model(root / "model")
    for i in range(args.repeats):
        out, run_dir = root / f"s{i}.json", root / f"run{i}"
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "arcttt", "run", "--challenges", str(challenges), "--model",
                                 str(model), "--out", str(out), "--run-dir", str(run_dir), "--time-budget", "600",
                                 "--workers", str(args.workers), "--quiet", "--set", "ttt.steps=2"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not out.exists():
            time.sleep(0.005)
        first = time.time() - start
        while not any(json.loads(p.read_text()).get("status") == "ok" for p in (run_dir / "tasks").glob("*.json")):
            time.sleep(0.05)
        sent = time.time()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait()
        print(f"run {i}: submission after {first:.2f} s; SIGTERM -> exit {code} after {time.time() - sent:.2f} s")


if __name__ == "__main__":
    main()
