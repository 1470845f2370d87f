"""Synthetic task families: every family yields valid tasks, is deterministic per seed, and its rule
holds across all pairs of a task, checked here by an independent description of each rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.augment import D8_NAMES, Augmentation
from arcttt.data import grid_to_list, parse_task
from arcttt.synthetic import EXTRA_FAMILIES, FAMILIES, HELD_OUT, components, generate, held_out, make_task

seeds = st.integers(0, 2**32 - 1)


def _pairs(task):
    return [(p.input, p.output) for p in task.train] + list(zip(task.test_inputs, task.test_outputs))


def _same(a, b):
    return a.shape == b.shape and np.array_equal(a, b)


def _fall_down(g):  # stable: zeros first, then the coloured cells in their order, per column
    return np.stack([np.array(sorted(col, key=lambda v: v != 0), dtype=np.uint8) for col in g.T], axis=1)


def _one_direction(pairs, law):
    """True when one of the four directions (as rotations) makes ``law`` hold on every pair."""
    return any(all(_same(np.rot90(law(np.rot90(i, k)), -k), o) for i, o in pairs) for k in range(4))


def _rays_down(g):
    out = g.copy()
    for c in range(g.shape[1]):
        for r in range(g.shape[0]):
            if g[r, c]:
                out[r:, c] = g[r, c]
    return out


def _check_rule(family, task):
    pairs = _pairs(task)
    if family == "symmetry":
        assert any(all(_same(Augmentation(s).grid(i), o) for i, o in pairs) for s in D8_NAMES[1:])
    elif family == "colour_map":
        mapping = {}
        for i, o in pairs:
            assert i.shape == o.shape
            for a, b in zip(i.ravel(), o.ravel()):
                assert mapping.setdefault(int(a), int(b)) == int(b)
        assert len(set(mapping.values())) == len(mapping)  # a permutation: no two colours merge
        shown = {int(v) for p in task.train for v in np.unique(p.input)}
        assert {int(v) for v in np.unique(task.test_inputs[0])} <= shown
    elif family == "upscale":
        assert any(all(_same(np.repeat(np.repeat(i, k, 0), k, 1), o) for i, o in pairs) for k in (2, 3))
    elif family == "tile":
        factors = {(o.shape[0] // i.shape[0], o.shape[1] // i.shape[1]) for i, o in pairs}
        assert len(factors) == 1
        for i, o in pairs:
            assert o.shape[0] % i.shape[0] == 0 and o.shape[1] % i.shape[1] == 0
            assert _same(o[:i.shape[0], :i.shape[1]], i)
    elif family == "crop_object":
        for i, o in pairs:
            hits = [(r, c) for r in range(i.shape[0] - o.shape[0] + 1) for c in range(i.shape[1] - o.shape[1] + 1)
                    if _same(i[r:r + o.shape[0], c:c + o.shape[1]], o)]
            assert hits and np.count_nonzero(i) == np.count_nonzero(o)
            assert o[0].any() and o[-1].any() and o[:, 0].any() and o[:, -1].any()  # the tight box
    elif family == "gravity":
        assert _one_direction(pairs, _fall_down)
    elif family == "recolour_by_size":
        size_to_colour = {}
        for i, o in pairs:
            assert _same(i != 0, o != 0)
            for _, cells in components(i):
                colours = {int(o[rc]) for rc in cells}
                assert len(colours) == 1
                assert size_to_colour.setdefault(len(cells), colours.pop()) == int(o[cells[0]])
    elif family == "count_cells":
        for i, o in pairs:
            assert o.shape == (1, np.count_nonzero(i)) and set(np.unique(o)) == set(np.unique(i)) - {0}
    elif family == "majority_colour":
        assert len({o.shape for _, o in pairs}) == 1
        for i, o in pairs:
            counts = np.bincount(i.ravel(), minlength=10)[1:]
            assert o.shape[0] == o.shape[1] and (o == 1 + counts.argmax()).all()
    elif family == "stamp_pattern":
        stamps = set()
        for i, o in pairs:
            centres = [(r, c) for r, c in zip(*np.nonzero(i))]
            assert len({int(i[rc]) for rc in centres}) == 1  # markers only, of one colour
            outside = np.ones(i.shape, dtype=bool)
            for r, c in centres:
                stamps.add(o[r - 1:r + 2, c - 1:c + 2].tobytes())
                outside[r - 1:r + 2, c - 1:c + 2] = False
            assert not o[outside].any()
        assert len(stamps) == 1
    elif family == "draw_rays":
        assert _one_direction(pairs, _rays_down)
    elif family == "fill_enclosed":
        fills = set()
        for i, o in pairs:
            changed = i != o
            assert not i[changed].any()  # only background changes
            fills |= {int(v) for v in o[changed]}
            inside = np.zeros(i.shape, dtype=bool)
            for _, cells in components(i):
                rows, cols = zip(*cells)
                assert len(cells) == 2 * (max(rows) - min(rows) + max(cols) - min(cols))  # a hollow frame
                inside[min(rows) + 1:max(rows), min(cols) + 1:max(cols)] = True
            assert _same(changed, inside)
        assert len(fills) == 1
    else:
        pytest.fail(f"no check written for family {family}")


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(FAMILIES)), seeds)
def test_family_tasks_are_valid_and_follow_their_rule(family, seed):
    task = make_task(family, np.random.default_rng(seed), f"t{seed}")
    # valid as the competition files would be: round-trips through the strict parser
    raw = {"train": [{"input": grid_to_list(p.input), "output": grid_to_list(p.output)} for p in task.train],
           "test": [{"input": grid_to_list(g)} for g in task.test_inputs]}
    parsed = parse_task(task.id, raw, [grid_to_list(g) for g in task.test_outputs])
    assert 3 <= len(parsed.train) <= 5 and parsed.n_test == 1
    pairs = _pairs(task)
    for i, o in pairs:
        assert i.dtype == o.dtype == np.uint8 and not _same(i, o)
    assert len({(i.shape, i.tobytes()) for i, _ in pairs}) == len(pairs)  # distinct inputs
    _check_rule(family, task)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(FAMILIES)), seeds)
def test_family_is_deterministic_per_seed(family, seed):
    a = make_task(family, np.random.default_rng(seed))
    b = make_task(family, np.random.default_rng(seed))
    assert all(_same(x, y) for (x, y) in zip(
        [g for i, o in _pairs(a) for g in (i, o)], [g for i, o in _pairs(b) for g in (i, o)]))


def test_every_family_has_a_check_and_they_are_many():
    assert len(FAMILIES) >= 10
    for family in FAMILIES:  # _check_rule fails on a family it does not know
        _check_rule(family, make_task(family, np.random.default_rng(0)))


def test_generate_cycles_families_and_a_set_is_a_prefix_of_a_larger_one():
    small, large = generate(15, seed=3), generate(30, seed=3)
    assert [t.id for t in small] == [t.id for t in large[:15]]
    assert all(_same(a.test_outputs[0], b.test_outputs[0]) for a, b in zip(small, large))
    assert [t.id.split("-", 2)[2] for t in small[:len(FAMILIES)]] == list(FAMILIES)
    other = generate(15, seed=4)
    assert sum(_same(a.test_inputs[0], b.test_inputs[0]) for a, b in zip(small, other)) < 3
    with pytest.raises(ValueError, match="unknown families"):
        generate(2, families=["nope"])


def test_components_are_four_connected_single_colour_objects():
    g = np.array([[1, 1, 0, 2],
                  [0, 1, 0, 2],
                  [3, 0, 1, 1]], dtype=np.uint8)
    assert [(c, sorted(cells)) for c, cells in components(g)] == [
        (1, [(0, 0), (0, 1), (1, 1)]), (2, [(0, 3), (1, 3)]), (3, [(2, 0)]), (1, [(2, 2), (2, 3)])]


# --- the curriculum and held-out families -------------------------------------------------------

def _one_symmetry(pairs, names):
    return [s for s in names if all(_same(Augmentation(s).grid(i), o) for i, o in pairs)]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(EXTRA_FAMILIES)), seeds)
def test_extra_families_follow_their_rule(family, seed):
    task = make_task(family, np.random.default_rng(seed), f"t{seed}")
    pairs = _pairs(task)
    assert 3 <= len(task.train) <= 5
    assert all(3 <= side <= 8 for i, _ in pairs for side in i.shape)
    if family == "copy":
        assert all(_same(i, o) for i, o in pairs)
        return
    assert not any(_same(i, o) for i, o in pairs)
    if family in ("flip", "rotate", "transpose"):
        names = {"flip": ("flipH", "flipV"), "rotate": ("rot90", "rot180", "rot270"),
                 "transpose": ("transpose", "antitranspose")}[family]
        assert _one_symmetry(pairs, names)
        return
    # small_colour_map: one colour map; flip_recolour: one flip or rotation, then one colour map
    frames = ("id",) if family == "small_colour_map" else ("flipH", "flipV", "rot90", "rot180", "rot270")
    fits = []
    for s in frames:
        mapping, ok = {}, True
        for i, o in pairs:
            x = Augmentation(s).grid(i)
            ok = ok and x.shape == o.shape and all(mapping.setdefault(int(a), int(b)) == int(b)
                                                   for a, b in zip(x.ravel(), o.ravel()))
        fits.append(ok and len(set(mapping.values())) == len(mapping) and any(a != b for a, b in mapping.items()))
    assert any(fits)
    shown = {int(v) for p in task.train for v in np.unique(p.input)}
    assert {int(v) for v in np.unique(task.test_inputs[0])} <= shown


def test_no_training_augmentation_turns_a_trained_symmetry_into_a_held_out_one():
    # the held-out transposes stay held out: a whole task under any symmetry g has the rule g.s.g^-1,
    # which for a flip or a rotation is again a flip or a rotation
    grid = np.arange(8, dtype=np.uint8).reshape(2, 4)  # distinct cells, not square
    trained = ("flipH", "flipV", "rot90", "rot180", "rot270")
    for s in trained:
        for g in D8_NAMES:
            conj = Augmentation(g).grid(Augmentation(s).grid(Augmentation(g).invert_grid(grid)))
            assert any(_same(Augmentation(t).grid(grid), conj) for t in trained), (s, g)


def test_held_out_sets_are_fixed_and_apart_from_the_training_stream():
    trained, unseen = held_out("trained", 6), held_out("unseen", 4)
    assert [t.id for t in unseen] == ["syn102-000000-transpose", "syn102-000001-flip_recolour",
                                      "syn102-000002-transpose", "syn102-000003-flip_recolour"]
    assert [t.id.split("-")[2] for t in trained] == ["flip", "rotate", "small_colour_map"] * 2
    assert HELD_OUT["trained"].format(n=6) == "synthetic:6:101:flip+rotate+small_colour_map"
    training = generate(300, seed=0, families=["copy", "flip", "rotate", "small_colour_map"])
    seen = {(g.shape, g.tobytes()) for t in training for p in t.train for g in (p.input,)}
    assert not any((t.test_inputs[0].shape, t.test_inputs[0].tobytes()) in seen for t in trained + unseen)
    with pytest.raises(ValueError, match="unknown held-out set"):
        held_out("nope", 1)
