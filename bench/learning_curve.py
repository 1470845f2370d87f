"""Learning curves of one or more ``arcttt finetune`` runs, read from their logs (``finetune.log``):
the held-out sets' teacher-forced loss, cells right and answers right against the tokens trained on.
Several logs are stages of one recipe, drawn end to end (each stage's tokens after the last's).

    PYTHONPATH=. python bench/learning_curve.py weights/arcttt-tiny-syn/stage*.log --out curve.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

EVAL = re.compile(r"eval (\S+) step (\d+): loss ([\d.]+) cells ([\d.]+) answers (\d+)/(\d+) \(([\d,]+) tokens trained\)")
STEP = re.compile(r"step (\d+)/\d+ loss ([\d.]+) lr")


def read_log(path: Path) -> tuple[dict[str, list[tuple]], list[tuple[int, float]]]:
    """Per eval set: (step, tokens, loss, cells, answers fraction); and the (step, training loss) lines."""
    evals: dict[str, list[tuple]] = {}
    train = []
    for line in path.read_text().splitlines():
        if m := EVAL.search(line):
            name, step, loss, cells, k, n, tokens = m.groups()
            evals.setdefault(name, []).append((int(step), int(tokens.replace(",", "")), float(loss), float(cells),
                                              int(k) / max(int(n), 1)))
        elif m := STEP.search(line):
            train.append((int(m.group(1)), float(m.group(2))))
    return evals, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logs", type=Path, nargs="+", help="finetune logs, in the order the stages ran")
    parser.add_argument("--out", type=Path, default=Path("learning_curve.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    offset, colours = 0, {}
    for k, path in enumerate(args.logs):
        evals, _ = read_log(path)
        last = 0
        for name, points in evals.items():
            colour = colours.setdefault(name, f"C{len(colours)}")
            tokens = [(offset + t) / 1e6 for _, t, *_ in points]
            for ax, col in zip(axes, (2, 3, 4)):
                ax.plot(tokens, [p[col] for p in points], "o-", ms=3, color=colour,
                        label=name if k == 0 or name not in colours or True else None)
            last = max(last, max(t for _, t, *_ in points))
        offset += last
        if k < len(args.logs) - 1:
            for ax in axes:
                ax.axvline(offset / 1e6, color="grey", lw=0.8, ls="--")
    for ax, title in zip(axes, ("held-out loss per answer token", "cells right (teacher-forced)",
                                "answers right (teacher-forced)")):
        ax.set_title(title)
        ax.set_xlabel("million tokens trained")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=len(unique), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(args.out, dpi=90)
    print(args.out)


if __name__ == "__main__":
    main()
