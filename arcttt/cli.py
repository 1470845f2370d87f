"""The ``arcttt`` command line: every command is a typed function below (its signature is the CLI,
its docstring the help), mapped to a name in :func:`commands`. Heavy modules are imported inside the
commands so that ``arcttt --help`` stays fast. A command returns its exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    from arcttt.data import DataFileError

    try:
        rc = auto_cli(commands(), args=argv, as_positional=True)
    except DataFileError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 2
    sys.exit(rc or 0)


def commands() -> dict:
    """Command name -> function (nested dicts are sub-commands)."""
    return {
        "data": {"export": data_export, "stats": data_stats},
    }


# --- data ---------------------------------------------------------------------------------------

def data_export(*, split: str, out: Path, tasks: int | None = None) -> int:
    """Write a bundled ARC split in Kaggle's file names and format (no download).

    Args:
        split: arc-agi-1-train, arc-agi-1-eval, arc-agi-2-train or arc-agi-2-eval.
        out: Folder for arc-agi_{training,evaluation}_{challenges,solutions}.json.
        tasks: Keep only the first N tasks (sorted by id).
    """
    from arcttt.data import export_split

    for path in export_split(split, out, limit=tasks):
        print(path)
    return 0


def data_stats(*, split: str) -> int:
    """Print tasks, test outputs, grid sizes and cell counts of a bundled split.

    Args:
        split: arc-agi-1-train, arc-agi-1-eval, arc-agi-2-train or arc-agi-2-eval.
    """
    from dataclasses import asdict

    from arcttt.data import load_split, split_stats

    for key, value in asdict(split_stats(load_split(split), split)).items():
        print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    main()
