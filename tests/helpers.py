"""What several test files share, written once: hypothesis strategies for grids, running the CLI in
this process and reading its one error line, the compact token map, and the hand-written constants
behind conftest.py's fixtures. Import it as ``from helpers import ...`` (pytest puts tests/ on
sys.path, as for oracle.py); fixtures live in conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arcttt import cli
from arcttt.formats import compact_token_map

TM = compact_token_map()  # the 16-token compact format's map, as the tiny model has it
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # the first 8 bytes of every PNG file


# --- grids --------------------------------------------------------------------------------------

@st.composite
def grids(draw, max_side: int = 30, min_h: int = 1, min_w: int = 1) -> np.ndarray:
    """An ARC grid as a uint8 array: min_h..max_side rows, min_w..max_side columns, colours 0-9."""
    h = draw(st.integers(min_h, max_side))
    w = draw(st.integers(min_w, max_side))
    return draw(arrays(np.uint8, (h, w), elements=st.integers(0, 9)))


@st.composite
def grid_lists(draw, max_side: int = 30, min_h: int = 1, min_w: int = 1) -> list[list[int]]:
    """An ARC grid as JSON holds it: a list of rows of Python ints, each cell drawn on its own."""
    h = draw(st.integers(min_h, max_side))
    w = draw(st.integers(min_w, max_side))
    return draw(st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h))


# --- the command line ---------------------------------------------------------------------------

def run_cli(args, capsys) -> tuple[int, str, str]:
    """``arcttt ARGS`` in this process (each argument str()-ed): its exit code, stdout and stderr.
    ``cli.main`` always ends in ``sys.exit`` with an integer code; anything else fails here."""
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert isinstance(exc.value.code, int), f"exit code {exc.value.code!r} is not an int\n{err}"
    return exc.value.code, out, err


def error_lines(err: str) -> list[str]:
    """The lines of stderr that start with ``error:``."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def one_error(err: str) -> str:
    """The one ``error:`` line of stderr; fails on none, on more than one, or on a traceback."""
    errors = error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def assert_refused(code: int, err: str, what: str) -> None:
    """A refusal: exit 2 and one error line (no traceback) that says ``what``."""
    assert code == 2, err
    assert what in one_error(err), err


# --- hand-written inputs behind conftest.py's fixtures ------------------------------------------

# ids an attacker (or a careless file) could put in a challenges file (records, run folder tests)
HOSTILE_IDS = ["../../x", "../escape", "/abs/x", "/", ".", "..", "", "a/b", "a\\b", "a\x00b", "x" * 300,
               "é" * 200, "new\nline", "tab\tid", "\ud800", "con", "nul.txt", ".hidden", "-rf", "~", "*", "$(rm)",
               "a" * 40 + "1", "a" * 40 + "2"]

# The hand-made run directory (conftest.handmade_run; profiling, report): six real arc-agi-1-eval
# tasks on two workers, budget 1000 s from RUN_START; the figures tests check follow from the spans below.
RUN_START = 1_700_000_000.0
HANDMADE_TASKS = {  # id: (status, worker, start, end, phases as (name, start, end), tests answered right)
    "00576224": ("ok", 0, 5, 105, [("data", 5, 6), ("ttt", 6, 66), ("search", 66, 96), ("select", 96, 104)], [True]),
    "0c786b71": ("ok", 0, 110, 230, [("data", 110, 112), ("ttt", 112, 182), ("search", 182, 212),
                                     ("select", 212, 228)], [False]),
    "03560426": ("timeout", 0, 240, 300, [("data", 240, 241), ("ttt", 241, 300)], None),
    "6ea4a07e": ("ok", 1, 20, 80, [("data", 20, 21), ("ttt", 21, 51), ("search", 51, 61), ("select", 61, 65),
                                   ("search", 65, 75), ("select", 75, 79)], [True, False]),
    "0c9aba6e": ("error", 1, 90, 95, [("data", 90, 91), ("ttt", 91, 94)], None),
    "0692e18c": ("ok", 1, 100, 250, [("data", 100, 102), ("ttt", 102, 202), ("search", 202, 232),
                                     ("select", 232, 248)], [True]),
}


# --- run folders -------------------------------------------------------------------------------
def smallest_tasks(n: int, folder: Path) -> tuple[Path, Path]:
    """The ``n`` cheapest ARC-AGI-1 eval tasks (``budget.expected_cost``) as a challenges and a
    solutions file: this machine's CPUs are shared, and these tests are about the engine, not the model."""
    from arcttt.budget import expected_cost
    from arcttt.data import grid_to_list, load_split, task_to_json

    tasks = sorted(load_split("arc-agi-1-eval"), key=lambda t: (expected_cost(t), t.id))[:n]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "challenges.json").write_text(json.dumps({t.id: task_to_json(t) for t in tasks}))
    (folder / "solutions.json").write_text(json.dumps({t.id: [grid_to_list(g) for g in t.test_outputs]
                                                        for t in tasks}))
    return folder / "challenges.json", folder / "solutions.json"


def records(run_dir: Path) -> dict[str, dict]:
    return {r["task_id"]: r for r in (json.loads(p.read_text()) for p in (run_dir / "tasks").glob("*.json"))}
