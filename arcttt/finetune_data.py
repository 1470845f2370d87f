"""What ``arcttt finetune`` trains on: its data sources, their exclusion by content, and the
augmented samples packed into rows.

- Data: bundled splits by name, Kaggle challenges files (their ``*_solutions.json`` neighbour is
  read when present), JSONL files of tasks, folders of one-task JSON files, and ``synthetic:N[:SEED]``
  (:mod:`arcttt.synthetic`). ``--exclude`` drops every task whose id, content (train pairs + test
  inputs, in any order, whatever the id) or any test-input grid appears in the excluded sources.
- Samples, augmented on the fly: all pairs of a task (train pairs and test pairs whose output is
  known) under a random symmetry, colour permutation and order; the last pair is the query, the
  others demonstrations (dropped from the front to fit ``seq_len``).
- Packing: samples laid end to end in rows of at most ``seq_len`` tokens, position ids restarting
  at each sample. The sample stream is a pure function of ``(seed, epoch, index)`` and the row
  stream of a :class:`Cursor`, which a checkpoint saves.

``cfg`` below is a ``finetune.FinetuneConfig`` (its augmentation fields, ``seq_len`` and the loss
switches).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from arcttt import synthetic
from arcttt.augment import D8_NAMES, IDENTITY_COLOURS, Augmentation, random_colours
from arcttt.data import (SPLITS, DataFileError, Pair, Task, load_challenges, load_solutions, load_split, one_line,
                         parse_task, read_json, shown, task_to_json)
from arcttt.formats import Encoded, TokenMap


# --- data ---------------------------------------------------------------------------------------

SYNTHETIC_MAX = 1_000_000
"""The most tasks ``synthetic:N`` makes (they are made in memory before training starts)."""


def load_tasks(spec: str) -> list[Task]:
    """The tasks of one ``--data``/``--exclude`` source (see the module docstring). A source that
    cannot be read, or a task in it that is not one, is a ValueError naming the file (and line)."""
    if spec in SPLITS:
        return load_split(spec)
    if spec.startswith("synthetic:"):
        n, _, rest = spec.removeprefix("synthetic:").partition(":")
        seed, _, families = rest.partition(":")
        if not n.isdigit() or (seed and not seed.isdigit()) or (families and not seed):
            raise ValueError(f"data source {shown(spec)}: write synthetic:N, synthetic:N:SEED or "
                             "synthetic:N:SEED:FAMILY+FAMILY...")
        if int(n) > SYNTHETIC_MAX:
            raise ValueError(f"data source {shown(spec)}: synthetic:N takes at most {SYNTHETIC_MAX:,} tasks")
        names = families.split("+") if families else None
        unknown = [f for f in names or () if f not in synthetic.ALL_FAMILIES]
        if unknown:
            raise ValueError(f"data source {shown(spec)}: unknown families {', '.join(unknown)}; "
                             f"known: {', '.join(synthetic.ALL_FAMILIES)}")
        return synthetic.generate(int(n), seed=int(seed or 0), families=names)
    path = Path(spec)
    if path.is_dir():
        return [_in_file(p, lambda: _task_with_outputs(p.stem, read_json(p, "task"))) for p in sorted(path.glob("*.json"))]
    if path.suffix == ".jsonl":
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: cannot read ({type(e).__name__})") from None
        return [_in_file(f"{path}: line {k + 1}", lambda: _jsonl_task(line, f"{path.stem}-{k}"))
                for k, line in enumerate(lines) if line.strip()]
    if path.is_file():
        solutions_path = path.with_name(path.name.replace("challenges", "solutions"))
        if "challenges" in path.name and solutions_path.is_file():
            solutions = load_solutions(solutions_path)
            return [parse_task(t.id, task_to_json(t), [g.tolist() for g in solutions[t.id]]) if t.id in solutions else t
                    for t in load_challenges(path).tasks.values()]
        raw = read_json(path, "tasks")
        if isinstance(raw, dict) and "train" in raw:  # one task in the original ARC form
            return [_task_with_outputs(path.stem, raw)]
        return [_task_with_outputs(tid, obj) for tid, obj in raw.items()]
    raise ValueError(f"data source {spec!r}: not a split ({', '.join(SPLITS)}), synthetic:N, a file or a folder")


def _in_file(where, parse: Callable[[], Task]) -> Task:
    """``parse()``, its fault a ValueError that starts with ``where`` (a file, or a file's line)."""
    try:
        return parse()
    except RecursionError:
        raise ValueError(f"{where}: nested too deeply") from None
    except (ValueError, DataFileError) as e:
        message = one_line(e)
        raise ValueError(message if message.startswith(str(where)) else f"{where}: {message}") from None


def _jsonl_task(line: str, default_id: str) -> Task:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"not a task object (got {type(obj).__name__})")
    return _task_with_outputs(str(obj.get("id", default_id)), obj)


def _task_with_outputs(task_id: str, obj: dict) -> Task:
    """A task in the original ARC form, whose test entries may hold their outputs."""
    tests = obj.get("test", []) if isinstance(obj, dict) else []
    outputs = [t.get("output") for t in tests if isinstance(t, dict)]
    return parse_task(task_id, obj, outputs if outputs and all(o is not None for o in outputs) else None)


def _grid_key(g: np.ndarray) -> bytes:
    return hashlib.sha256(f"{g.shape}".encode() + np.ascontiguousarray(g, dtype=np.uint8).tobytes()).digest()


def content_key(task: Task) -> str:
    """A hash of a task's train pairs and test inputs, independent of its id and of their order."""
    pairs = sorted(_grid_key(p.input) + _grid_key(p.output) for p in task.train)
    tests = sorted(_grid_key(g) for g in task.test_inputs)
    return hashlib.sha256(b"".join(pairs) + b"|" + b"".join(tests)).hexdigest()


def exclude_tasks(tasks: list[Task], excluded: list[Task]) -> tuple[list[Task], dict[str, int]]:
    """``tasks`` less every one whose id or content is among ``excluded``, or which holds (as any
    input) a test input of an excluded task; and how many each reason dropped."""
    ids = {t.id for t in excluded}
    contents = {content_key(t) for t in excluded}
    test_grids = {_grid_key(g) for t in excluded for g in t.test_inputs}
    kept, dropped = [], {"id": 0, "content": 0, "test_grid": 0}
    for t in tasks:
        if t.id in ids:
            dropped["id"] += 1
        elif content_key(t) in contents:
            dropped["content"] += 1
        elif any(_grid_key(g) in test_grids for g in [*t.test_inputs, *(p.input for p in t.train)]):
            dropped["test_grid"] += 1
        else:
            kept.append(t)
    return kept, dropped


# --- samples and packed rows --------------------------------------------------------------------

@dataclass
class Cursor:
    """Where the sample stream stands: sample ``index`` of the shuffled order of ``epoch``."""

    epoch: int = 0
    index: int = 0


def encode_sample(task: Task, rng: np.random.Generator, tm: TokenMap, cfg) -> Encoded | None:
    """One augmented sample of ``task`` (see the module docstring); None if even one pair alone
    (with a single demonstration) does not fit ``seq_len``."""
    pairs = list(task.train)
    if task.test_outputs is not None:
        pairs += [Pair(i, o) for i, o in zip(task.test_inputs, task.test_outputs)]
    aug = Augmentation(D8_NAMES[int(rng.integers(8))] if cfg.symmetries else "id",
                       random_colours(rng, cfg.keep_background) if cfg.colours else IDENTITY_COLOURS,
                       tuple(int(i) for i in rng.permutation(len(pairs))) if cfg.order else None)
    *demos, last = aug.pairs(pairs)
    return fitted(demos, last, tm, cfg.seq_len, loss_on_demo_outputs=cfg.loss_on_demo_outputs)


def fitted(demos: list[Pair], query: Pair, tm: TokenMap, seq_len: int, **loss) -> Encoded | None:
    """``query`` (and its output) after ``demos``, the front ones dropped until it fits ``seq_len``
    tokens; None if even one demonstration does not fit."""
    while demos:
        enc = tm.encode(demos, query.input, query.output, **loss)
        if len(enc) <= seq_len:
            return enc
        demos = demos[1:]
    return None


def next_rows(tasks: list[Task], cursor: Cursor, n_rows: int, tm: TokenMap,
              cfg) -> tuple[list[list[Encoded]], Cursor]:
    """The next ``n_rows`` packed rows of the stream and the cursor after them (a pure function)."""
    epoch, index = cursor.epoch, cursor.index
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(tasks))
    rows: list[list[Encoded]] = [[]]
    used, skipped_in_a_row = 0, 0
    while True:
        if index == len(tasks):
            epoch, index = epoch + 1, 0
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(tasks))
        sample = encode_sample(tasks[order[index]], np.random.default_rng([cfg.seed, epoch, index]), tm, cfg)
        if sample is None:
            index += 1
            skipped_in_a_row += 1
            if skipped_in_a_row > len(tasks):
                raise ValueError(f"no task fits in seq_len={cfg.seq_len} tokens")
            continue
        skipped_in_a_row = 0
        if used + len(sample) > cfg.seq_len:  # this row is full: the sample opens the next one
            if len(rows) == n_rows:
                return rows, Cursor(epoch, index)
            rows.append([])
            used = 0
        rows[-1].append(sample)
        used += len(sample)
        index += 1


@dataclass
class PackedBatch:
    input_ids: torch.Tensor      # int64 [b, n], right-padded
    position_ids: torch.Tensor   # int64 [b, n], restarting at 0 at each sample (and at the padding)
    targets: torch.Tensor        # bool [b, n]: the token at t is a target (predicted from t-1)
    tokens: int                  # non-padding tokens


def collate_rows(rows: list[list[Encoded]], pad: int) -> PackedBatch:
    n = max(sum(len(s) for s in row) for row in rows)
    ids = np.full((len(rows), n), pad, dtype=np.int64)
    pos = np.zeros((len(rows), n), dtype=np.int64)
    targets = np.zeros((len(rows), n), dtype=bool)
    tokens = 0
    for r, row in enumerate(rows):
        at = 0
        for s in row:
            ids[r, at:at + len(s)] = s.ids
            pos[r, at:at + len(s)] = np.arange(len(s))
            targets[r, at + 1:at + len(s)] = s.loss_mask[1:]  # a sample's first token is never predicted
            at += len(s)
        pos[r, at:] = np.arange(n - at)
        tokens += at
    return PackedBatch(torch.from_numpy(ids), torch.from_numpy(pos), torch.from_numpy(targets), tokens)
