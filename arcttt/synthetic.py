"""Synthetic ARC tasks of our own: a dozen simple concepts, each a family of tasks.

A family is a pure function of a seeded ``numpy.random.Generator`` that draws one *rule* (the
symmetry, the colour map, the scale factor, the gravity direction...) and an input maker;
:func:`make_task` then draws 3-5 train inputs and one test input and applies the rule to each, so
the rule holds across all pairs of a task by construction. A task is only accepted when it is
*learnable from its demonstrations*: no pair where the output equals the input, distinct inputs,
and every family-specific fact the test needs is shown in the train pairs (each colour of a colour
map, each object size of a size-to-colour map). Grids are uint8, values 0-9, sides 1-30; 0 is the
background.

:func:`generate` (``--data synthetic:N[:SEED]`` of ``arcttt finetune``) cycles through the families:
task ``i`` of a seed depends only on ``(seed, i)``, so a set of N tasks is a prefix of any larger
one, and two seeds give disjoint held-out sets (up to chance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from arcttt.augment import D8_NAMES, Augmentation
from arcttt.data import MAX_SIDE, Pair, Task

Grid = np.ndarray
Rule = Callable[[Grid], Grid]
_MAX_TRIES = 200


@dataclass(frozen=True)
class Drawn:
    """One drawn rule of a family: the rule, a maker of inputs it applies to, and what was drawn."""

    rule: Rule
    make_input: Callable[[np.random.Generator], Grid]
    params: dict = field(default_factory=dict)
    learnable: Callable[[list[Grid], Grid], bool] = lambda train, test: True
    """Whether the train inputs show all the test input needs (e.g. each of its colours)."""
    changes: bool = True
    """Every pair's output differs from its input (False only for ``copy``, a curriculum's first lesson)."""


# --- small grid helpers ------------------------------------------------------------------------------

def _noise(rng: np.random.Generator, h: int, w: int, colours, density: float) -> Grid:
    """An h x w grid of background with cells of ``colours`` at about ``density``."""
    g = rng.choice(np.asarray(colours, dtype=np.uint8), size=(h, w))
    return np.where(rng.random((h, w)) < density, g, 0).astype(np.uint8)


def _colours(rng: np.random.Generator, k: int) -> list[int]:
    """``k`` distinct non-background colours."""
    return [int(c) for c in rng.choice(np.arange(1, 10), size=k, replace=False)]


def components(grid: Grid) -> list[tuple[int, list[tuple[int, int]]]]:
    """4-connected single-colour objects (non-zero cells): (colour, cells) in row-major order of
    their first cell."""
    g = np.asarray(grid)
    seen = np.zeros(g.shape, dtype=bool)
    out = []
    for r0, c0 in zip(*np.nonzero(g)):
        if seen[r0, c0]:
            continue
        colour, stack, cells = g[r0, c0], [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < g.shape[0] and 0 <= cc < g.shape[1] and not seen[rr, cc] and g[rr, cc] == colour:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
        out.append((int(colour), cells))
    return out


def _polyomino(rng: np.random.Generator, size: int) -> list[tuple[int, int]]:
    """A random 4-connected shape of ``size`` cells, shifted to start at (0, 0)."""
    cells = {(0, 0)}
    while len(cells) < size:
        r, c = sorted(cells)[rng.integers(len(cells))]
        dr, dc = ((1, 0), (-1, 0), (0, 1), (0, -1))[rng.integers(4)]
        cells.add((r + dr, c + dc))
    r0, c0 = min(r for r, _ in cells), min(c for _, c in cells)
    return sorted((r - r0, c - c0) for r, c in cells)


def _place(rng: np.random.Generator, occupied: np.ndarray, shape: tuple[int, int], gap: int = 1):
    """A top-left corner where a box of ``shape`` (plus ``gap`` around it) touches nothing
    occupied, marking the box as occupied; None when a few random tries find none."""
    h, w = occupied.shape
    bh, bw = shape
    if bh > h or bw > w:
        return None
    for _ in range(30):
        r, c = int(rng.integers(h - bh + 1)), int(rng.integers(w - bw + 1))
        if not occupied[max(0, r - gap):r + bh + gap, max(0, c - gap):c + bw + gap].any():
            occupied[r:r + bh, c:c + bw] = True
            return r, c
    return None


# --- the families ------------------------------------------------------------------------------

def symmetry(rng: np.random.Generator) -> Drawn:
    """The output is the input under one fixed symmetry of the square (rotation, flip, transpose)."""
    aug = Augmentation(D8_NAMES[int(rng.integers(1, 8))])
    palette = _colours(rng, int(rng.integers(2, 5)))

    def make_input(r):
        return _noise(r, int(r.integers(2, 11)), int(r.integers(2, 11)), palette, r.uniform(0.3, 0.8))

    return Drawn(aug.grid, make_input, {"symmetry": aug.symmetry})


def _learnable_colours(train, test):
    """Every colour of the test input is shown in a train input."""
    return set(np.unique(test)) <= set(np.unique(np.concatenate([g.ravel() for g in train])))


def colour_map(rng: np.random.Generator) -> Drawn:
    """Every cell's colour is replaced by a fixed map (a permutation of a few colours)."""
    palette = _colours(rng, int(rng.integers(2, 5)))
    targets = [int(c) for c in rng.permutation(palette)]
    while targets == palette:  # at least one colour must change
        targets = [int(c) for c in rng.permutation(palette)]
    lut = np.arange(10, dtype=np.uint8)
    lut[palette] = targets

    def make_input(r):
        return _noise(r, int(r.integers(3, 11)), int(r.integers(3, 11)), palette, r.uniform(0.4, 0.9))

    return Drawn(lambda g: lut[g], make_input, {"map": dict(zip(palette, targets))}, _learnable_colours)


def upscale(rng: np.random.Generator) -> Drawn:
    """Each cell becomes a k x k block."""
    k = int(rng.integers(2, 4))
    palette = _colours(rng, int(rng.integers(1, 4)))
    top = min(6, MAX_SIDE // k)

    def make_input(r):
        return _noise(r, int(r.integers(1, top + 1)), int(r.integers(2, top + 1)), palette, r.uniform(0.3, 0.8))

    return Drawn(lambda g: np.kron(g, np.ones((k, k), dtype=np.uint8)), make_input, {"k": k})


def tile(rng: np.random.Generator) -> Drawn:
    """The input is repeated a x b times; with ``mirror`` every other copy is flipped."""
    a, b = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    if a == b == 1:
        b = 2
    mirror = bool(rng.integers(2))
    palette = _colours(rng, int(rng.integers(2, 4)))

    def rule(g):
        rows = []
        for i in range(a):
            row = [np.flipud(g) if mirror and i % 2 else g for _ in range(b)]
            rows.append(np.hstack([np.fliplr(x) if mirror and j % 2 else x for j, x in enumerate(row)]))
        return np.vstack(rows)

    def make_input(r):
        return _noise(r, int(r.integers(2, min(6, MAX_SIDE // a) + 1)), int(r.integers(2, min(6, MAX_SIDE // b) + 1)),
                      palette, r.uniform(0.3, 0.8))

    return Drawn(rule, make_input, {"a": a, "b": b, "mirror": mirror})


def crop_object(rng: np.random.Generator) -> Drawn:
    """The output is the one object of the input, cropped to its bounding box."""
    palette = _colours(rng, int(rng.integers(1, 4)))

    def rule(g):
        rows, cols = np.nonzero(g)
        return g[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()

    def make_input(r):
        h, w = int(r.integers(6, 16)), int(r.integers(6, 16))
        sh, sw = int(r.integers(2, 5)), int(r.integers(2, 5))
        sprite = _noise(r, sh, sw, palette, 0.7)
        sprite[0, r.integers(sw)] = sprite[-1, r.integers(sw)] = palette[0]  # the box is the sprite's own
        sprite[r.integers(sh), 0] = sprite[r.integers(sh), -1] = palette[-1]
        g = np.zeros((h, w), dtype=np.uint8)
        top, left = int(r.integers(h - sh + 1)), int(r.integers(w - sw + 1))
        g[top:top + sh, left:left + sw] = sprite
        return g

    return Drawn(rule, make_input, {})


def gravity(rng: np.random.Generator) -> Drawn:
    """Every coloured cell falls in one fixed direction until it meets the edge or another cell."""
    direction = ("down", "up", "left", "right")[int(rng.integers(4))]
    palette = _colours(rng, int(rng.integers(1, 4)))
    # rotate so that the fall is downwards, let cells fall, rotate back
    turns = {"down": 0, "right": 1, "up": 2, "left": 3}[direction]

    def rule(g):
        x = np.rot90(g, turns)
        out = np.zeros_like(x)
        for c in range(x.shape[1]):
            cells = x[:, c][x[:, c] != 0]
            if len(cells):
                out[-len(cells):, c] = cells
        return np.ascontiguousarray(np.rot90(out, -turns))

    def make_input(r):
        return _noise(r, int(r.integers(3, 11)), int(r.integers(3, 11)), palette, r.uniform(0.15, 0.4))

    return Drawn(rule, make_input, {"direction": direction})


def recolour_by_size(rng: np.random.Generator) -> Drawn:
    """Objects of one colour are recoloured by their size (cells), by a fixed size -> colour map."""
    colour, *new = _colours(rng, 5)
    sizes = {s: new[s - 1] for s in range(1, 5)}

    def rule(g):
        out = g.copy()
        for _, cells in components(g):
            for rc in cells:
                out[rc] = sizes[len(cells)]
        return out

    def make_input(r):
        h, w = int(r.integers(6, 13)), int(r.integers(6, 13))
        g = np.zeros((h, w), dtype=np.uint8)
        occupied = np.zeros((h, w), dtype=bool)
        for _ in range(int(r.integers(2, 6))):
            cells = _polyomino(r, int(r.integers(1, 5)))
            shape = (max(a for a, _ in cells) + 1, max(b for _, b in cells) + 1)
            at = _place(r, occupied, shape)
            if at is not None:
                for a, b in cells:
                    g[at[0] + a, at[1] + b] = colour
        return g

    def learnable(train, test):
        seen = {len(cells) for g in train for _, cells in components(g)}
        return bool(components(test)) and {len(cells) for _, cells in components(test)} <= seen

    return Drawn(rule, make_input, {"colour": colour, "sizes": sizes}, learnable)


def count_cells(rng: np.random.Generator) -> Drawn:
    """The output is a 1 x n row of the colour of the input's n scattered cells."""
    colour = _colours(rng, 1)[0]

    def rule(g):
        values = g[g != 0]
        return np.full((1, len(values)), values[0], dtype=np.uint8)

    def make_input(r):
        h, w = int(r.integers(3, 9)), int(r.integers(3, 9))
        g = np.zeros(h * w, dtype=np.uint8)
        g[r.choice(h * w, size=int(r.integers(1, min(9, h * w) + 1)), replace=False)] = colour
        return g.reshape(h, w)

    return Drawn(rule, make_input, {"colour": colour})


def majority_colour(rng: np.random.Generator) -> Drawn:
    """The output is a k x k square of the input's most frequent non-background colour."""
    k = int(rng.integers(1, 4))
    palette = _colours(rng, int(rng.integers(2, 5)))

    def rule(g):
        counts = np.bincount(g.ravel(), minlength=10)
        counts[0] = 0
        return np.full((k, k), int(counts.argmax()), dtype=np.uint8)

    def make_input(r):
        while True:
            g = _noise(r, int(r.integers(3, 10)), int(r.integers(3, 10)), palette, r.uniform(0.3, 0.9))
            counts = np.sort(np.bincount(g.ravel(), minlength=10)[1:])
            if counts[-1] > counts[-2]:  # a unique most frequent colour
                return g

    return Drawn(rule, make_input, {"k": k})


def stamp_pattern(rng: np.random.Generator) -> Drawn:
    """A fixed 3 x 3 pattern is drawn around every marker cell (the marker stays its centre)."""
    marker, *others = _colours(rng, 3)
    pattern = rng.choice(np.asarray([0, *others], dtype=np.uint8), size=(3, 3))
    pattern[0, 1] = others[0]  # never empty around the centre
    pattern[1, 1] = marker

    def rule(g):
        out = g.copy()
        for r, c in zip(*np.nonzero(g == marker)):
            out[r - 1:r + 2, c - 1:c + 2] = pattern
        return out

    def make_input(r):
        h, w = int(r.integers(5, 14)), int(r.integers(5, 14))
        g = np.zeros((h, w), dtype=np.uint8)
        occupied = np.zeros((h, w), dtype=bool)
        for _ in range(int(r.integers(1, 4))):
            at = _place(r, occupied, (3, 3), gap=0)
            if at is not None:
                g[at[0] + 1, at[1] + 1] = marker
        return g

    return Drawn(rule, make_input, {"marker": marker, "pattern": pattern.tolist()})


def draw_rays(rng: np.random.Generator) -> Drawn:
    """Every coloured cell shoots a ray of its colour to the edge in one fixed direction."""
    direction = ("down", "up", "left", "right")[int(rng.integers(4))]
    palette = _colours(rng, int(rng.integers(1, 4)))
    turns = {"down": 0, "right": 1, "up": 2, "left": 3}[direction]

    def rule(g):
        x = np.rot90(g, turns).copy()
        for r, c in zip(*np.nonzero(x)):
            x[r:, c] = x[r, c]
        return np.ascontiguousarray(np.rot90(x, -turns))

    def make_input(r):
        h, w = int(r.integers(4, 12)), int(r.integers(4, 12))
        x = np.zeros((h, w), dtype=np.uint8)  # drawn as if the rays fall down: one cell a column at most
        for c in r.choice(w, size=int(r.integers(1, min(4, w) + 1)), replace=False):
            x[r.integers(h - 1), c] = palette[int(r.integers(len(palette)))]
        return np.ascontiguousarray(np.rot90(x, -turns))

    return Drawn(rule, make_input, {"direction": direction})


def fill_enclosed(rng: np.random.Generator) -> Drawn:
    """The inside of every hollow rectangle is filled with one fixed colour."""
    frame, fill = _colours(rng, 2)

    def rule(g):
        out = g.copy()
        for colour, cells in components(g):
            rows, cols = [r for r, _ in cells], [c for _, c in cells]
            top, bottom, left, right = min(rows), max(rows), min(cols), max(cols)
            out[top + 1:bottom, left + 1:right] = fill
        return out

    def make_input(r):
        h, w = int(r.integers(6, 15)), int(r.integers(6, 15))
        g = np.zeros((h, w), dtype=np.uint8)
        occupied = np.zeros((h, w), dtype=bool)
        for _ in range(int(r.integers(1, 4))):
            bh, bw = int(r.integers(3, 7)), int(r.integers(3, 7))
            at = _place(r, occupied, (bh, bw))
            if at is not None:
                top, left = at
                g[top:top + bh, left:left + bw] = frame
                g[top + 1:top + bh - 1, left + 1:left + bw - 1] = 0
        return g

    return Drawn(rule, make_input, {"frame": frame, "fill": fill})


FAMILIES: dict[str, Callable[[np.random.Generator], Drawn]] = {
    f.__name__: f for f in (symmetry, colour_map, upscale, tile, crop_object, gravity, recolour_by_size,
                            count_cells, majority_colour, stamp_pattern, draw_rays, fill_enclosed)
}


# --- curriculum and held-out families (not in FAMILIES: ``synthetic:N`` keeps its old stream) -------
# The symmetries of the square fall into conjugacy classes that an augmentation of the whole task
# (the same symmetry applied to every grid) never leaves: a flip task stays a flip task under every
# augmentation, and a transpose task a transpose task. So ``flip`` and ``rotate`` can be trained on
# with full augmentation while ``transpose`` stays a family the model has never seen.
_FLIPS = ("flipH", "flipV")
_ROTATIONS = ("rot90", "rot180", "rot270")
_TRANSPOSES = ("transpose", "antitranspose")


def _small_noise_maker(palette, lo: int = 3, hi: int = 8, density=(0.3, 0.8)):
    def make_input(r):
        return _noise(r, int(r.integers(lo, hi + 1)), int(r.integers(lo, hi + 1)), palette, r.uniform(*density))

    return make_input


def _symmetry_of(names):
    def family(rng: np.random.Generator) -> Drawn:
        aug = Augmentation(names[int(rng.integers(len(names)))])
        palette = _colours(rng, int(rng.integers(2, 5)))
        return Drawn(aug.grid, _small_noise_maker(palette), {"symmetry": aug.symmetry})

    return family


def copy(rng: np.random.Generator) -> Drawn:
    """The output is the input (sides 3-8): the first lesson, in-context copying."""
    palette = _colours(rng, int(rng.integers(2, 6)))
    return Drawn(lambda g: g.copy(), _small_noise_maker(palette), {}, changes=False)


def small_colour_map(rng: np.random.Generator) -> Drawn:
    """``colour_map`` on sides 3-8."""
    drawn = colour_map(rng)
    palette = [int(c) for c in drawn.params["map"]]
    return Drawn(drawn.rule, _small_noise_maker(palette, density=(0.4, 0.9)), drawn.params, drawn.learnable)


def flip_recolour(rng: np.random.Generator) -> Drawn:
    """A composition of two trained families: a flip or rotation, then a colour map (held out)."""
    aug = Augmentation((*_FLIPS, *_ROTATIONS)[int(rng.integers(5))])
    drawn = small_colour_map(rng)
    return Drawn(lambda g: drawn.rule(aug.grid(g)), drawn.make_input,
                 {"symmetry": aug.symmetry, **drawn.params}, drawn.learnable)


flip = _symmetry_of(_FLIPS)
flip.__doc__ = "The output is the input flipped left-right or upside down (sides 3-8)."
rotate = _symmetry_of(_ROTATIONS)
rotate.__doc__ = "The output is the input rotated by 90, 180 or 270 degrees (sides 3-8)."
transpose = _symmetry_of(_TRANSPOSES)
transpose.__doc__ = "The output is the input transposed about either diagonal (sides 3-8; held out)."

EXTRA_FAMILIES: dict[str, Callable[[np.random.Generator], Drawn]] = {
    "copy": copy, "flip": flip, "rotate": rotate, "small_colour_map": small_colour_map,
    "transpose": transpose, "flip_recolour": flip_recolour,
}
ALL_FAMILIES = {**FAMILIES, **EXTRA_FAMILIES}


# --- tasks -------------------------------------------------------------------------------------

def make_task(family: str, rng: np.random.Generator, task_id: str | None = None) -> Task:
    """One task of ``family``: 3-5 train pairs and one test pair (with its output), all under one
    drawn rule. Inputs are drawn until they are distinct, each changes under the rule, and the
    train inputs show what the test input needs; a rule that fails too often is drawn again."""
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(ALL_FAMILIES)}")
    n_train = int(rng.integers(3, 6))
    for _ in range(_MAX_TRIES):
        drawn = ALL_FAMILIES[family](rng)
        inputs: list[Grid] = []
        for _ in range(_MAX_TRIES):
            g = drawn.make_input(rng)
            out = drawn.rule(g)
            if drawn.changes and out.shape == g.shape and np.array_equal(out, g):
                continue  # the rule does nothing to this input: it would teach nothing
            if any(x.shape == g.shape and np.array_equal(x, g) for x in inputs):
                continue
            if len(inputs) == n_train and not drawn.learnable(inputs, g):
                continue
            inputs.append(g)
            if len(inputs) == n_train + 1:
                break
        if len(inputs) == n_train + 1:
            pairs = [Pair(np.ascontiguousarray(g, dtype=np.uint8),
                          np.ascontiguousarray(drawn.rule(g), dtype=np.uint8)) for g in inputs]
            return Task(task_id or f"syn-{family}", tuple(pairs[:-1]), (pairs[-1].input,), (pairs[-1].output,))
    raise RuntimeError(f"family {family}: no task after {_MAX_TRIES} rules")  # a bug in the family


def generate(n: int, seed: int = 0, families: list[str] | None = None) -> list[Task]:
    """``n`` synthetic tasks cycling through ``families`` (default: the twelve of :data:`FAMILIES`;
    any of :data:`ALL_FAMILIES` by name). Task ``i`` depends only on ``(seed, i)`` and the family
    list; its id is ``syn<seed>-<i>-<family>``."""
    names = list(families or FAMILIES)
    unknown = [f for f in names if f not in ALL_FAMILIES]
    if unknown or n < 0:
        raise ValueError(f"unknown families {unknown}" if unknown else f"n must be >= 0, got {n}")
    return [make_task(names[i % len(names)], np.random.default_rng([seed, i]), f"syn{seed}-{i:06d}-{names[i % len(names)]}")
            for i in range(n)]


# --- the held-out sets of our own model (fixed before it was trained; weights/README.md) --------
HELD_OUT: dict[str, str] = {
    # (a) new instances (another seed) of families the model is trained on
    "trained": "synthetic:{n}:101:flip+rotate+small_colour_map",
    # (b) families it never sees in training: a symmetry class no training augmentation reaches, and
    # a composition of two trained families; here test-time training has to do the learning
    "unseen": "synthetic:{n}:102:transpose+flip_recolour",
}


def held_out(name: str, n: int) -> list[Task]:
    """The first ``n`` tasks of held-out set ``name`` (``trained`` or ``unseen``)."""
    if name not in HELD_OUT:
        raise ValueError(f"unknown held-out set {name!r}; one of {', '.join(HELD_OUT)}")
    _, count, seed, families = HELD_OUT[name].format(n=n).split(":")
    return generate(int(count), seed=int(seed), families=families.split("+"))
