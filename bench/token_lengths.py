"""Token lengths of whole ARC tasks in each arcttt format: every demonstration + one test input +
its answer, one sequence per test input. Prints median, p90 and max per split and format.

    python bench/token_lengths.py [--splits arc-agi-1-eval arc-agi-2-eval]

The chat format is measured with the local chat tokenizer (build_tokenizer("chat")): its markers
are 3/5/2 tokens, as with Qwen's ChatML special tokens.
"""

from __future__ import annotations

import argparse

from arcttt.data import load_split
from arcttt.formats import FORMATS
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.ttt_data import sequence_length_stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="+", default=["arc-agi-1-eval", "arc-agi-2-eval"])
    args = parser.parse_args(argv)
    maps = {fmt: token_map_from_tokenizer(fmt, build_tokenizer(fmt)) for fmt in FORMATS}
    print("| split | format | sequences | median | p90 | max | over 8192 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for split in args.splits:
        tasks = load_split(split)
        for fmt, tm in maps.items():
            s = sequence_length_stats(tasks, tm)
            print(f"| {split} ({len(tasks)} tasks) | {fmt} | {s.n} | {s.median:.0f} | {s.p90:.0f} | {s.max} | {s.over_8192} |")


if __name__ == "__main__":
    main()
