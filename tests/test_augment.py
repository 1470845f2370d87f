"""Augmentations: every transform inverts exactly, keys round-trip, D8 is a group, and whole real
tasks map back to their own answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.augment import (D8_NAMES, IDENTITY_COLOURS, Augmentation, random_colours, sample_augmentations,
                            view_augmentations)
from helpers import grids


@st.composite
def augmentations(draw, n_order: int | None = None):
    symmetry = draw(st.sampled_from(D8_NAMES))
    colours = tuple(draw(st.permutations(range(10))))
    if n_order is None:
        order = draw(st.one_of(st.none(), st.integers(0, 10).flatmap(lambda n: st.permutations(range(n)))))
    else:
        order = draw(st.permutations(range(n_order)))
    return Augmentation(symmetry, colours, None if order is None else tuple(order))


@settings(max_examples=300, deadline=None)
@given(grids(), augmentations())
def test_invert_undoes_apply(g, aug):
    out = aug.grid(g)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.shape == aug.shape(g.shape)
    assert np.array_equal(aug.invert_grid(out), g)
    # the inverse is a bijection too: applying after inverting gives the grid back
    assert np.array_equal(aug.grid(aug.invert_grid(g)), g)


@settings(max_examples=300, deadline=None)
@given(augmentations())
def test_key_round_trip(aug):
    key = aug.key
    assert "/" not in key or key.split("/")[0] in D8_NAMES
    assert Augmentation.from_key(key) == aug
    assert Augmentation.from_key(key).key == key


@pytest.mark.parametrize("symmetry", D8_NAMES)
@pytest.mark.parametrize("n_order", [None, 0, 1, 3])
def test_every_symmetry_with_and_without_order_round_trips(symmetry, n_order):
    aug = Augmentation(symmetry, (3, 1, 4, 0, 5, 9, 2, 6, 8, 7), None if n_order is None else tuple(range(n_order))[::-1])
    assert Augmentation.from_key(aug.key) == aug
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10
    assert np.array_equal(aug.invert_grid(aug.grid(g)), g)


def test_identity_key_and_readable_keys():
    assert Augmentation().key == "id"
    assert Augmentation().is_identity
    aug = Augmentation("rot90", (0, 3, 1, 8, 9, 2, 4, 5, 6, 7), (2, 0, 1))
    assert aug.key == "rot90/c0318924567/o2,0,1"
    assert not aug.is_identity
    # lists and numpy ints normalise to the same frozen value
    assert Augmentation("id", list(np.arange(10)), [1, 0]) == Augmentation("id", IDENTITY_COLOURS, (1, 0))


@pytest.mark.parametrize("key, fault", [
    ("", "not a non-empty string"),
    ("rot45", "unknown symmetry"),
    ("id/c012", "10 digits"),
    ("id/c01234567890", "10 digits"),
    ("id/c0123456788", "not a permutation of 0-9"),
    ("id/c012345678x", "10 digits"),
    ("id/o1,1", "not a permutation"),
    ("id/o0,,1", "comma-separated"),
    ("id/o-1,0", "comma-separated"),
    ("id/z12", "neither"),
    ("id//o0", "neither"),
    ("id/o0/o0", "given twice"),
    ("id/c0123456789/c0123456789", "given twice"),
])
def test_bad_keys_give_clear_errors(key, fault):
    with pytest.raises(ValueError, match="bad augmentation key") as e:
        Augmentation.from_key(key)
    assert fault in str(e.value)
    assert repr(key) in str(e.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown symmetry"):
        Augmentation("mirror")
    with pytest.raises(ValueError, match="permutation of 0-9"):
        Augmentation("id", (0,) * 10)
    with pytest.raises(ValueError, match="permutation"):
        Augmentation("id", IDENTITY_COLOURS, (0, 2))


def test_d8_is_a_group():
    g = np.arange(6, dtype=np.uint8).reshape(2, 3)  # no symmetry at all: all 8 images differ
    images = {name: Augmentation(name).grid(g) for name in D8_NAMES}
    assert len({(im.shape, im.tobytes()) for im in images.values()}) == 8
    assert np.array_equal(images["id"], g)

    def which(image):
        return next(n for n, im in images.items() if im.shape == image.shape and np.array_equal(im, image))

    def maps_back(a, b):
        image = Augmentation(b).grid(images[a])
        return image.shape == g.shape and np.array_equal(image, g)

    # closed under composition, and every element has an inverse among the 8
    for a in D8_NAMES:
        for b in D8_NAMES:
            which(Augmentation(b).grid(images[a]))
        assert any(maps_back(a, b) for b in D8_NAMES)
    # rot90 generates the rotations; transpose is a reflection
    r = Augmentation("rot90").grid
    assert which(r(r(g))) == "rot180" and which(r(r(r(g)))) == "rot270" and np.array_equal(r(r(r(r(g)))), g)
    assert which(Augmentation("transpose").grid(Augmentation("transpose").grid(g))) == "id"


def test_colour_permutation_maps_each_colour():
    aug = Augmentation("id", (5, 6, 7, 8, 9, 0, 1, 2, 3, 4))
    g = np.arange(10, dtype=np.uint8).reshape(2, 5)
    assert np.array_equal(aug.grid(g), (g + 5) % 10)


def test_keep_background_fixes_colour_zero():
    rng = np.random.default_rng(0)
    for _ in range(50):
        colours = random_colours(rng, keep_background=True)
        assert colours[0] == 0 and sorted(colours) == list(range(10))
    augs = sample_augmentations(40, rng, n_train=3, keep_background=True)
    assert all(a.colours[0] == 0 for a in augs)
    g = np.zeros((4, 4), dtype=np.uint8)
    assert all(np.array_equal(a.grid(g), g) for a in augs)
    # without it colour 0 does move in some of them
    moved = sample_augmentations(40, np.random.default_rng(0), keep_background=False)
    assert any(a.colours[0] != 0 for a in moved)


def test_sample_augmentations_distinct_and_cover_d8():
    augs = sample_augmentations(16, np.random.default_rng(1), n_train=4)
    assert augs[0].is_identity
    assert len({a.key for a in augs}) == 16
    assert {a.symmetry for a in augs[:9]} == set(D8_NAMES)
    assert all(a.order is not None and len(a.order) == 4 for a in augs[1:])
    # only 8 distinct ones exist without colours or order
    assert len(sample_augmentations(20, np.random.default_rng(1), colour=False)) == 8
    assert sample_augmentations(0, np.random.default_rng(1)) == []


def test_view_augmentations_are_reproducible(arc1_train):
    small_task = min(arc1_train, key=lambda t: t.cells())
    a = view_augmentations(small_task, 0, 6, keep_background=True, seed=3)
    assert [x.key for x in a] == [x.key for x in view_augmentations(small_task, 0, 6, keep_background=True, seed=3)]
    assert a[0].is_identity and len({x.key for x in a}) == 6 and all(x.colours[0] == 0 for x in a)


def test_whole_real_tasks_map_back_to_their_answers(arc1_eval):
    rng = np.random.default_rng(7)
    tasks = [t for t in arc1_eval if t.test_outputs][:60]
    for task in tasks:
        for aug in sample_augmentations(6, rng, n_train=len(task.train), keep_background=False):
            augmented = aug.task(task)
            assert augmented.id == task.id and len(augmented.train) == len(task.train)
            for pos, pair in enumerate(augmented.train):
                source = task.train[aug.order[pos]] if aug.order is not None else task.train[pos]
                assert np.array_equal(aug.invert_grid(pair.input), source.input)
                assert np.array_equal(aug.invert_grid(pair.output), source.output)
            for k, answer in enumerate(augmented.test_outputs):
                assert np.array_equal(aug.invert_grid(answer), task.test_outputs[k])
                assert np.array_equal(aug.invert_grid(aug.grid(task.test_inputs[k])), task.test_inputs[k])


def test_order_for_wrong_number_of_pairs_names_the_task(arc1_eval):
    task = arc1_eval[0]
    with pytest.raises(ValueError, match=task.id):
        Augmentation("id", IDENTITY_COLOURS, tuple(range(len(task.train) + 1))).task(task)
