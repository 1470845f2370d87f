"""Time to build one task's TTT data (leave-one-out x augmentations, 64 sequences) on the CPU.
Target: under 50 ms a task. Prints median and max over the first N tasks of a split, per format.

    python bench/data_speed.py [--split arc-agi-1-eval] [--tasks 50] [--n-sequences 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from arcttt.data import load_split
from arcttt.formats import FORMATS
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.ttt_data import DataConfig, training_sequences


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="arc-agi-1-eval")
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--n-sequences", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings per task (the CPU is shared)")
    args = parser.parse_args(argv)
    tasks = load_split(args.split)[:args.tasks]
    cfg = DataConfig(n_sequences=args.n_sequences)
    print(f"{args.split}, first {len(tasks)} tasks, {cfg.n_sequences} sequences a task, max_len {cfg.max_len}, "
          f"best of {args.repeats}")
    for fmt in FORMATS:
        tm = token_map_from_tokenizer(fmt, build_tokenizer(fmt))
        training_sequences(tasks[0], tm, cfg)  # warm-up
        times, tokens = [], []
        for task in tasks:
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                data = training_sequences(task, tm, cfg)
                best = min(best, time.perf_counter() - start)
            times.append(best)
            tokens.append(data.stats.tokens)
        ms = np.array(times) * 1e3
        print(f"{fmt:>8}: median {np.median(ms):.1f} ms, max {ms.max():.1f} ms a task "
              f"({np.median(tokens):.0f} tokens a task median, {sum(tokens) / sum(times) / 1e6:.1f} M tokens/s)")


if __name__ == "__main__":
    main()
