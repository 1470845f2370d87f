"""Test-time-training data of one task, made from the task's own train pairs only, and the
prompts for its test inputs under several augmentations.

Training sequences are leave-one-out tasks: each train pair in turn is the answer and the others
are the demonstrations (a task with a single train pair uses it as the answer with none), each
under a random augmentation (a D8 symmetry, a colour permutation, an order of the demonstrations).
The held-out choices are taken round-robin and the symmetries cycled through for each, so 64
sequences of a 4-pair task hold each pair 16 times, under each symmetry twice. Sequences are
deduplicated by their ids and deterministic for a seed (and task id).

A sequence longer than ``max_len`` drops demonstrations, the longest first (so as many as
possible stay), never the answer or its query. A held-out pair whose query and answer alone do not
fit is not used; a task where no pair fits gets no TTT (``TrainingData.skipped`` says why).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

from arcttt.augment import D8_NAMES, IDENTITY_COLOURS, Augmentation, random_colours
from arcttt.data import MAX_SIDE, Pair, Task
from arcttt.formats import Encoded, FormatMap
from arcttt.tokenizer import TextTokenizer

# a duplicate-heavy held-out pair (symmetric grids, few augmentations switched on) is given up
# after this many duplicates in a row
_MAX_DUPLICATES_IN_A_ROW = 64


@dataclass
class AugmentConfig:
    """Which augmentations training samples get, shared by TTT (:class:`DataConfig`) and ``arcttt
    finetune`` (``FinetuneConfig``); inherited, so that its keys stay flat (``data.colours``, ``colours``)."""

    symmetries: bool = True
    """The 8 symmetries of the square (TTT cycles through them, finetune draws one; else identity only)."""
    colours: bool = True
    """Permute colours at random."""
    order: bool = True
    """Shuffle the order of the demonstrations."""
    keep_background: bool = True
    """Colour 0 stays 0 under colour permutations (ARC's usual background)."""


@dataclass
class DataConfig(AugmentConfig):
    """How the TTT sequences of one task are made."""

    n_sequences: int = 64
    """Sequences per task (fewer come back when the task has fewer distinct ones)."""
    max_len: int = 8192
    """Longest sequence in tokens; longer ones drop demonstrations (longest first)."""
    loss_on_demo_outputs: bool = False
    """Train also on every demonstration output after the first, not just the answer."""
    loss_on_first_output: bool = False
    """With ``loss_on_demo_outputs``, the first demonstration output too (NVARC: loss on every output)."""
    seed: int = 0
    """Seed of the random augmentations (combined with the task id)."""
    input_frame: bool = False
    """Before anything else, choose a symmetry of the inputs alone (demonstrations' and tests',
    outputs untouched) by the model's likelihood of the demonstration outputs, and solve the task in
    that frame (``pretransform.py``); off: the task as it is."""
    answer_room: Literal["evidence", "largest"] = "evidence"
    """What a test prompt leaves room for (and the search's length cap): ``evidence``, the largest
    answer the task's own shapes allow (:func:`answer_room`); ``largest``, a 30 x 30 grid."""

    def __post_init__(self):
        faults = []
        if self.answer_room not in ("evidence", "largest"):
            faults.append(f"answer_room must be evidence or largest, got {self.answer_room!r}")
        if self.n_sequences < 1:
            faults.append(f"n_sequences must be >= 1, got {self.n_sequences}")
        if self.max_len < 8:
            faults.append(f"max_len must be >= 8 tokens, got {self.max_len}")
        if faults:
            raise ValueError("DataConfig: " + "; ".join(faults))


@dataclass
class DataStats:
    """What :func:`training_sequences` made of one task."""

    wanted: int
    made: int = 0
    held_out: list[int] = field(default_factory=list)  # sequences per train pair as the answer
    unfit_pairs: list[int] = field(default_factory=list)  # train pairs too long to be the answer
    duplicates: int = 0                                  # candidates dropped as already made
    dropped_demos: int = 0                               # demonstrations dropped to fit max_len
    tokens: int = 0
    max_seq_len: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class TrainingData:
    """The TTT sequences of one task; ``skipped`` says why there are none, if so."""

    sequences: list[Encoded]
    skipped: str | None
    stats: DataStats


@dataclass
class View:
    """One augmented prompt for a test input: ``prompt`` (int64 ids ending with the output marker)
    holds ``n_demos`` demonstrations, the train pairs ``demos`` (original indices, in order)."""

    aug: Augmentation
    prompt: np.ndarray
    n_demos: int
    demos: tuple[int, ...] = ()
    answer_room: int | None = None
    """Tokens left for the answer (the search's length cap); None: the format's longest answer."""


def _fit(demo_lens: list[int], base: int, max_len: int) -> list[int]:
    """Positions of the demonstrations kept (in order) so that ``base`` plus their lengths fits in
    ``max_len``, dropping the longest first (the later one on a tie)."""
    keep = list(range(len(demo_lens)))
    total = base + sum(demo_lens)
    while total > max_len and keep:
        longest = max(reversed(keep), key=lambda k: demo_lens[k])
        keep.remove(longest)
        total -= demo_lens[longest]
    return keep


def _demo_len(pair: Pair, aug: Augmentation, markers: int, tm: FormatMap) -> int:
    return markers + tm.grid_len(aug.shape(pair.input.shape)) + tm.grid_len(aug.shape(pair.output.shape))


def _task_rng(task: Task, seed: int) -> np.random.Generator:
    # the task id joins the seed so that tasks do not all draw the same augmentations
    return np.random.default_rng([seed, zlib.crc32(task.id.encode())])


def training_sequences(task: Task, tm: FormatMap, cfg: DataConfig) -> TrainingData:
    """Leave-one-out TTT sequences of ``task`` under augmentations (see the module docstring).

    Each sequence's ``meta`` holds ``aug`` (the augmentation key; its order indexes the
    demonstrations, i.e. the train pairs without the held-out one), ``held_out`` (the train pair
    that is the answer), ``demos`` (train pairs shown, in order) and ``dropped`` (how many were
    dropped to fit ``max_len``).
    """
    n = len(task.train)
    stats = DataStats(wanted=cfg.n_sequences, held_out=[0] * n)
    demo_markers, base_markers = tm.overheads()
    symmetries = D8_NAMES if cfg.symmetries else ("id",)

    def base_len(i: int, aug: Augmentation) -> int:
        return base_markers + _demo_len(task.train[i], aug, 0, tm)

    # per held-out pair, the symmetries under which its query and answer alone fit
    fitting = {i: [s for s in symmetries if base_len(i, Augmentation(s)) <= cfg.max_len] for i in range(n)}
    stats.unfit_pairs = [i for i in range(n) if not fitting[i]]
    active = [i for i in range(n) if fitting[i]]
    if not active:
        shortest = min(base_len(i, Augmentation(s)) for i in range(n) for s in symmetries)
        reason = (f"task {task.id}: no train pair fits in max_len={cfg.max_len} tokens as the answer, even with "
                  f"no demonstrations (the shortest needs {shortest})")
        return TrainingData([], reason, stats)

    rng = _task_rng(task, cfg.seed)
    seen: set[bytes] = set()
    sequences: list[Encoded] = []
    tries = dict.fromkeys(active, 0)       # candidates drawn per held-out pair (cycles the symmetries)
    in_a_row = dict.fromkeys(active, 0)    # duplicates in a row per held-out pair
    turn = 0
    while len(sequences) < cfg.n_sequences and active:
        i = active[turn % len(active)]
        others = [j for j in range(n) if j != i]
        aug = Augmentation(
            fitting[i][tries[i] % len(fitting[i])],
            random_colours(rng, cfg.keep_background) if cfg.colours else IDENTITY_COLOURS,
            tuple(int(k) for k in rng.permutation(len(others))) if cfg.order and len(others) > 1 else None,
        )
        tries[i] += 1
        shown = [others[k] for k in aug.order] if aug.order is not None else others
        lens = [_demo_len(task.train[j], aug, demo_markers, tm) for j in shown]
        kept = [shown[k] for k in _fit(lens, base_len(i, aug), cfg.max_len)]
        demos = [Pair(aug.grid(task.train[j].input), aug.grid(task.train[j].output)) for j in kept]
        held = task.train[i]
        enc = tm.encode(demos, aug.grid(held.input), aug.grid(held.output),
                        loss_on_demo_outputs=cfg.loss_on_demo_outputs, loss_on_first_output=cfg.loss_on_first_output)
        digest = enc.ids.tobytes()
        if digest in seen:
            stats.duplicates += 1
            in_a_row[i] += 1
            if in_a_row[i] >= _MAX_DUPLICATES_IN_A_ROW:
                active.remove(i)  # this pair has no new sequences left (or too few to find)
            continue
        seen.add(digest)
        in_a_row[i] = 0
        enc.meta = {"aug": aug.key, "held_out": i, "demos": kept, "dropped": len(shown) - len(kept)}
        sequences.append(enc)
        stats.held_out[i] += 1
        stats.dropped_demos += len(shown) - len(kept)
        turn += 1
    stats.made = len(sequences)
    stats.tokens = sum(len(s) for s in sequences)
    stats.max_seq_len = max((len(s) for s in sequences), default=0)
    return TrainingData(sequences, None, stats)


def max_answer_len(tm: FormatMap) -> int:
    """Tokens of the largest possible answer: a 30x30 grid and the end marker (``tm.max_answer_len``)."""
    return tm.max_answer_len()


def answer_shape(task: Task, test_index: int) -> tuple[int, int]:
    """The largest height and width the answer to test input ``test_index`` may have, judged by the
    task's own evidence: every demonstration output's shape, the test input's shape either way round,
    and the test input's shape under each demonstration's ratio and difference of sides (output to
    input), at most 30 x 30. A task whose outputs are larger than any of these is rare; the cost of
    room for a 30 x 30 answer is demonstrations dropped from every prompt of every task."""
    h, w = task.test_inputs[test_index].shape
    shapes = [(h, w), (w, h)]
    for p in task.train:
        (ih, iw), (oh, ow) = p.input.shape, p.output.shape
        shapes += [(oh, ow), (math.ceil(h * oh / ih), math.ceil(w * ow / iw)), (h + oh - ih, w + ow - iw)]
    return min(MAX_SIDE, max(s[0] for s in shapes)), min(MAX_SIDE, max(s[1] for s in shapes))


def answer_room(task: Task, test_index: int, tm: FormatMap) -> int:
    """Tokens to leave for the answer of test input ``test_index`` (:func:`answer_shape`, in either
    orientation, since a view may transpose it, plus the end marker), never above the format's
    longest answer."""
    h, w = answer_shape(task, test_index)
    return min(tm.max_answer_len(), max(tm.answer_room((h, w)), tm.answer_room((w, h))))


def test_prompts(task: Task, test_index: int, tm: FormatMap, augs: list[Augmentation], max_len: int,
                 answer_reserve: int | None = None) -> list[View]:
    """The prompts for test input ``test_index`` under each augmentation in ``augs``.

    An augmentation's ``order`` (if any) orders all train pairs. Each prompt leaves
    ``answer_reserve`` tokens free within ``max_len`` (default: the largest possible answer,
    :func:`max_answer_len`), dropping demonstrations, longest first, until it does.
    Raises ValueError naming the task when the test input alone does not fit.
    """
    if not 0 <= test_index < task.n_test:
        raise ValueError(f"task {task.id}: no test input {test_index} (it has {task.n_test})")
    reserve = tm.max_answer_len() if answer_reserve is None else answer_reserve
    demo_markers, base_markers = tm.overheads()
    query = task.test_inputs[test_index]
    views = []
    for aug in augs:
        if aug.order is not None and len(aug.order) != len(task.train):
            raise ValueError(f"task {task.id}: augmentation {aug.key} orders {len(aug.order)} pairs, "
                             f"the task has {len(task.train)}")
        base = base_markers - len(tm.end) + tm.grid_len(aug.shape(query.shape)) + reserve
        if base > max_len:
            raise ValueError(f"task {task.id}: test input {test_index} ({query.shape[0]}x{query.shape[1]}) needs "
                             f"{base} tokens with {reserve} reserved for the answer, over max_len={max_len}")
        shown = list(aug.order) if aug.order is not None else list(range(len(task.train)))
        lens = [_demo_len(task.train[j], aug, demo_markers, tm) for j in shown]
        kept = [shown[k] for k in _fit(lens, base, max_len)]
        demos = [Pair(aug.grid(task.train[j].input), aug.grid(task.train[j].output)) for j in kept]
        views.append(View(aug, tm.encode(demos, aug.grid(query)).ids, len(kept), tuple(kept), reserve))
    return views


test_prompts.__test__ = False  # not a pytest test, though tests import it by this name


def prompt_record(task: Task, test_index: int, tm: FormatMap, aug: Augmentation, max_len: int,
                  tokenizer: TextTokenizer | None = None) -> dict:
    """Exactly what the model is shown for one test input under one augmentation, as the run builds
    it: ``prompt_ids`` and, when the task's test output is known, ``answer_ids`` (the augmented
    answer and the end marker), with their texts decoded by ``tokenizer`` (special tokens spelled
    out; None without a tokenizer)."""
    view = test_prompts(task, test_index, tm, [aug], max_len)[0]
    record = {"task_id": task.id, "test": test_index, "augmentation": aug.key, "format": tm.format,
              "demos": list(view.demos), "prompt_ids": [int(i) for i in view.prompt],
              "prompt_text": tokenizer.decode(view.prompt) if tokenizer else None}
    if task.test_outputs is not None:
        answer = tm.answer_ids(aug.grid(task.test_outputs[test_index]))
        record.update(answer_ids=[int(i) for i in answer], answer_text=tokenizer.decode(answer) if tokenizer else None)
    return record


@dataclass(frozen=True)
class LengthStats:
    """Token lengths of whole tasks: all demonstrations + one test input + its answer."""

    n: int
    median: float
    p90: float
    max: int
    over_8192: int


def sequence_length_stats(tasks: list[Task], tm: FormatMap) -> LengthStats:
    """Lengths of every (task, test input) as one sequence with all demonstrations and, where the
    test output is known, the answer (else the prompt alone)."""
    lengths = np.array([
        len(tm.encode(t.train, t.test_inputs[k], t.test_outputs[k] if t.test_outputs else None))
        for t in tasks for k in range(t.n_test)])
    if not len(lengths):
        raise ValueError("sequence_length_stats: no tasks")
    return LengthStats(int(len(lengths)), float(np.median(lengths)), float(np.percentile(lengths, 90)),
                       int(lengths.max()), int((lengths > 8192).sum()))
