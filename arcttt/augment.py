"""Invertible augmentations of ARC tasks: the 8 symmetries of the square (D8), colour permutations
and example-order shuffles.

An :class:`Augmentation` has a short readable key, e.g. ``"rot90/c0318924567/o2,0,1"`` (rotate 90
degrees counter-clockwise, recolour c -> key digit at position c, demonstrations in order 2,0,1);
``"id"`` is the identity. ``Augmentation.from_key(a.key) == a`` for every augmentation.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from arcttt.data import Pair, Task

# name -> (transform, inverse), on 2-D arrays
_D8 = {
    "id": (lambda g: g, lambda g: g),
    "rot90": (lambda g: np.rot90(g, 1), lambda g: np.rot90(g, -1)),
    "rot180": (lambda g: np.rot90(g, 2), lambda g: np.rot90(g, 2)),
    "rot270": (lambda g: np.rot90(g, 3), lambda g: np.rot90(g, -3)),
    "flipH": (np.fliplr, np.fliplr),
    "flipV": (np.flipud, np.flipud),
    "transpose": (lambda g: g.T, lambda g: g.T),
    "antitranspose": (lambda g: np.rot90(g, 2).T, lambda g: np.rot90(g.T, 2)),
}
D8_NAMES: tuple[str, ...] = tuple(_D8)
# the symmetries that swap height and width
TRANSPOSING = frozenset({"rot90", "rot270", "transpose", "antitranspose"})
IDENTITY_COLOURS: tuple[int, ...] = tuple(range(10))


@dataclass(frozen=True)
class Augmentation:
    """A symmetry, a colour permutation (``colours[c]`` is the new colour of ``c``) and an optional
    order of the demonstration pairs (``order[i]`` is the index of the original pair put at i)."""

    symmetry: str = "id"
    colours: tuple[int, ...] = IDENTITY_COLOURS
    order: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.symmetry not in _D8:
            raise ValueError(f"unknown symmetry {self.symmetry!r}; one of {', '.join(D8_NAMES)}")
        # tuples of Python ints whatever came in, so equal augmentations compare and hash equal
        object.__setattr__(self, "colours", tuple(int(c) for c in self.colours))
        if sorted(self.colours) != list(range(10)):
            raise ValueError(f"colours {self.colours} is not a permutation of 0-9")
        if self.order is not None:
            object.__setattr__(self, "order", tuple(int(i) for i in self.order))
            if sorted(self.order) != list(range(len(self.order))):
                raise ValueError(f"order {self.order} is not a permutation of 0..{len(self.order) - 1}")

    @property
    def key(self) -> str:
        parts = [self.symmetry]
        if self.colours != IDENTITY_COLOURS:
            parts.append("c" + "".join(map(str, self.colours)))
        if self.order is not None:
            parts.append("o" + ",".join(map(str, self.order)))
        return "/".join(parts)

    @classmethod
    def from_key(cls, key: str) -> Augmentation:
        """The augmentation of a key written by :attr:`key`; a malformed key raises ValueError
        naming the key and the fault."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"bad augmentation key {key!r}: not a non-empty string")
        symmetry, *rest = key.split("/")
        kwargs: dict = {"symmetry": symmetry}
        try:
            for part in rest:
                name = {"c": "colours", "o": "order"}.get(part[:1])
                if name is None:
                    raise ValueError(f"part {part!r} is neither 'c' + 10 digits nor 'o' + comma-separated indices")
                if name in kwargs:
                    raise ValueError(f"{name} given twice")
                body = part[1:]
                if name == "colours":
                    if len(body) != 10 or not body.isascii() or not body.isdigit():
                        raise ValueError(f"colours part {part!r} is not 'c' followed by 10 digits")
                    kwargs["colours"] = tuple(int(ch) for ch in body)
                else:
                    items = body.split(",") if body else []
                    if not all(i.isascii() and i.isdigit() for i in items):
                        raise ValueError(f"order part {part!r} is not 'o' followed by comma-separated indices")
                    kwargs["order"] = tuple(int(i) for i in items)
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"bad augmentation key {key!r}: {e}") from None

    @property
    def is_identity(self) -> bool:
        return self.symmetry == "id" and self.colours == IDENTITY_COLOURS and (
            self.order is None or self.order == tuple(range(len(self.order))))

    def shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The shape of an augmented grid of ``shape`` (without building it)."""
        h, w = shape
        return (w, h) if self.symmetry in TRANSPOSING else (h, w)

    def grid(self, g: np.ndarray) -> np.ndarray:
        """The augmented grid (a new contiguous array)."""
        lut = np.asarray(self.colours, dtype=np.uint8)
        return np.ascontiguousarray(lut[_D8[self.symmetry][0](np.asarray(g))])

    def invert_grid(self, g: np.ndarray) -> np.ndarray:
        """The original grid of an augmented one: ``invert_grid(grid(g)) == g``."""
        inverse = np.argsort(np.asarray(self.colours)).astype(np.uint8)
        return np.ascontiguousarray(_D8[self.symmetry][1](inverse[np.asarray(g)]))

    def pairs(self, pairs: tuple[Pair, ...] | list[Pair]) -> tuple[Pair, ...]:
        ordered = [pairs[i] for i in self.order] if self.order is not None else list(pairs)
        return tuple(Pair(self.grid(p.input), self.grid(p.output)) for p in ordered)

    def task(self, task: Task) -> Task:
        """The whole task augmented: demonstrations reordered and transformed, tests transformed."""
        if self.order is not None and len(self.order) != len(task.train):
            raise ValueError(f"task {task.id}: order {self.order} for {len(task.train)} train pairs")
        outputs = tuple(self.grid(g) for g in task.test_outputs) if task.test_outputs else None
        return replace(task, train=self.pairs(task.train),
                       test_inputs=tuple(self.grid(g) for g in task.test_inputs), test_outputs=outputs)


def random_colours(rng: np.random.Generator, keep_background: bool) -> tuple[int, ...]:
    """A random permutation of 0-9; with ``keep_background`` colour 0 stays 0."""
    if keep_background:
        return (0, *(int(c) + 1 for c in rng.permutation(9)))
    return tuple(int(c) for c in rng.permutation(10))


def sample_augmentations(n: int, rng: np.random.Generator, *, n_train: int | None = None,
                         colour: bool = True, keep_background: bool = True,
                         include_identity: bool = True) -> list[Augmentation]:
    """``n`` distinct augmentations: the symmetries are cycled through (so the first 8 cover D8),
    each with a random colour permutation (if ``colour``) and a random order of ``n_train``
    demonstrations (if given). The first one is the identity when ``include_identity``.
    Fewer than ``n`` come back only when fewer distinct ones exist."""
    out: list[Augmentation] = []
    seen: set[str] = set()
    if include_identity and n > 0:
        out.append(Augmentation())
        seen.add(out[0].key)
    tries = len(out)
    while len(out) < n and tries < 50 * n + 100:
        symmetry = D8_NAMES[tries % 8]
        tries += 1
        aug = Augmentation(
            symmetry,
            random_colours(rng, keep_background) if colour else IDENTITY_COLOURS,
            tuple(int(i) for i in rng.permutation(n_train)) if n_train else None,
        )
        if aug.key not in seen:
            seen.add(aug.key)
            out.append(aug)
    return out


def view_augmentations(task: Task, test_index: int, n: int, *, keep_background: bool, seed: int,
                       include_identity: bool = True) -> list[Augmentation]:
    """``n`` distinct augmentations for one test input (the search's and the scoring's views), the
    identity first; reproducible from the seed, the task id and the test index (so resuming a run
    gives the same views)."""
    rng = np.random.default_rng([seed, zlib.crc32(task.id.encode()), test_index])
    return sample_augmentations(n, rng, n_train=len(task.train), keep_background=keep_background,
                                include_identity=include_identity)
