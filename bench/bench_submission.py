"""How long one SubmissionWriter.set takes (validate + whole-file atomic rewrite with fsync) when
every task of a bundled split is answered in turn. Prints one line per split.

    python bench/bench_submission.py [--splits arc-agi-2-eval arc-agi-1-eval]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from arcttt.data import bundled_split, load_split, tasks_from_json
from arcttt.submission import SubmissionWriter


def bench(split: str) -> str:
    tasks = load_split(split)
    with tempfile.TemporaryDirectory() as folder:
        writer = SubmissionWriter.for_challenges(os.path.join(folder, "submission.json"),
                                                 tasks_from_json(bundled_split(split)[0]))
        start = time.perf_counter()
        for task in tasks:
            writer.set(task.id, [(g, g) for g in task.test_outputs])
        per_set = (time.perf_counter() - start) / len(tasks)
        size = os.path.getsize(writer.path)
    return f"{split}: {len(tasks)} tasks, {per_set * 1e3:.1f} ms per set, final file {size / 1e3:.0f} kB"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="+", default=["arc-agi-2-eval", "arc-agi-1-eval"])
    for split in parser.parse_args().splits:
        print(bench(split))
