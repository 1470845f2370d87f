"""TTT data of one task on real ARC tasks: leave-one-out answers that map back to the task's own
train outputs, determinism, deduplication, fitting to max_len, skipping, and test prompts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import arcttt.ttt_data as ttt_data
from arcttt.augment import D8_NAMES, Augmentation, sample_augmentations
from arcttt.data import Pair
from arcttt.formats import FORMATS, TOKEN_FORMATS, encode, parse_answer
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.ttt_data import DataConfig, View, max_answer_len, sequence_length_stats, training_sequences


@pytest.fixture(scope="module", params=FORMATS)
def tm(request):
    return token_map_from_tokenizer(request.param, build_tokenizer(request.param))


@pytest.fixture(scope="module", params=TOKEN_FORMATS)
def token_tm(request):
    """The formats of one token per cell (exact lengths and markers; the template formats' loss masks
    and fitting are tested in tests/test_template_formats.py)."""
    return token_map_from_tokenizer(request.param, build_tokenizer(request.param))


@pytest.fixture(scope="module")
def tasks(arc1_eval):
    return arc1_eval[:25]


def _full_len(task, tm) -> int:
    """Longest leave-one-out sequence with every other pair shown, identity augmentation."""
    return max(len(encode([p for j, p in enumerate(task.train) if j != i], task.train[i].input, tm,
                          task.train[i].output)) for i in range(len(task.train)))


def _check_sequence(seq, task, tm, cfg):
    meta = seq.meta
    aug = Augmentation.from_key(meta["aug"])
    i = meta["held_out"]
    others = [j for j in range(len(task.train)) if j != i]
    # the answer is the augmented held-out output, and maps back to the task's own train output
    answer = parse_answer(seq.ids[seq.prompt_len:], tm, require_end=True)
    assert isinstance(answer, np.ndarray), answer
    assert np.array_equal(answer, aug.grid(task.train[i].output))
    assert np.array_equal(aug.invert_grid(answer), task.train[i].output)
    # demonstrations: the other pairs, in the augmentation's order, some maybe dropped
    shown = [others[k] for k in aug.order] if aug.order is not None else others
    assert i not in meta["demos"]
    assert meta["demos"] == [j for j in shown if j in meta["demos"]]
    assert meta["dropped"] == len(shown) - len(meta["demos"])
    want = encode([Pair(aug.grid(task.train[j].input), aug.grid(task.train[j].output)) for j in meta["demos"]],
                  aug.grid(task.train[i].input), tm, aug.grid(task.train[i].output),
                  loss_on_demo_outputs=cfg.loss_on_demo_outputs, loss_on_first_output=cfg.loss_on_first_output)
    assert np.array_equal(seq.ids, want.ids) and np.array_equal(seq.loss_mask, want.loss_mask)
    assert seq.prompt_len == want.prompt_len
    assert len(seq) <= cfg.max_len
    if cfg.keep_background:
        assert aug.colours[0] == 0


def test_leave_one_out_sequences_are_correct(tasks, tm):
    cfg = DataConfig(n_sequences=24)
    for task in tasks:
        data = training_sequences(task, tm, cfg)
        assert data.skipped is None
        assert len(data.sequences) == data.stats.made == 24
        for seq in data.sequences:
            _check_sequence(seq, task, tm, cfg)
        # round-robin over the held-out pairs, symmetries cycled for each
        counts = data.stats.held_out
        assert sum(counts) == 24 and max(counts) - min(counts) <= 1
        held = [s.meta["held_out"] for s in data.sequences]
        assert held[:len(task.train)] == list(range(len(task.train)))
        for i in range(len(task.train)):
            syms = [Augmentation.from_key(s.meta["aug"]).symmetry for s in data.sequences if s.meta["held_out"] == i]
            # the symmetry cycle, less any candidate that was a duplicate
            cycle = iter(D8_NAMES * (len(syms) + data.stats.duplicates))
            assert all(sym in cycle for sym in syms)
            if not data.stats.duplicates:
                assert syms == [D8_NAMES[k % 8] for k in range(len(syms))]
        assert data.stats.tokens == sum(len(s) for s in data.sequences)
        assert data.stats.max_seq_len == max(len(s) for s in data.sequences)


def test_deterministic_for_a_seed(tasks, tm):
    cfg = DataConfig(n_sequences=16)
    for task in tasks[:8]:
        a, b = training_sequences(task, tm, cfg), training_sequences(task, tm, cfg)
        assert [s.ids.tolist() for s in a.sequences] == [s.ids.tolist() for s in b.sequences]
        assert [s.meta for s in a.sequences] == [s.meta for s in b.sequences]
        c = training_sequences(task, tm, replace(cfg, seed=1))
        assert [s.meta["aug"] for s in a.sequences] != [s.meta["aug"] for s in c.sequences]


def test_sequences_are_distinct_and_duplicates_are_dropped(tasks, tm):
    task = tasks[0]
    data = training_sequences(task, tm, DataConfig(n_sequences=64))
    assert len({s.ids.tobytes() for s in data.sequences}) == 64
    # with nothing to vary, only one sequence per held-out pair exists
    bare = DataConfig(n_sequences=64, symmetries=False, colours=False, order=False)
    data = training_sequences(task, tm, bare)
    assert len(data.sequences) == len(task.train) and data.stats.duplicates > 0
    assert all(s.meta["aug"] == "id" for s in data.sequences)
    # symmetries alone: at most 8 per pair, all distinct
    data = training_sequences(task, tm, replace(bare, symmetries=True))
    assert len({s.ids.tobytes() for s in data.sequences}) == len(data.sequences) <= 8 * len(task.train)


def test_single_train_pair_is_its_own_answer(tasks, tm):
    task = replace(tasks[3], train=tasks[3].train[:1])
    cfg = DataConfig(n_sequences=8)
    data = training_sequences(task, tm, cfg)
    assert data.skipped is None and len(data.sequences) == 8
    for seq in data.sequences:
        assert seq.meta["held_out"] == 0 and seq.meta["demos"] == []
        assert Augmentation.from_key(seq.meta["aug"]).order is None
        _check_sequence(seq, task, tm, cfg)


def test_loss_on_demo_outputs(tasks, token_tm):
    tm = token_tm
    task = tasks[1]
    plain = training_sequences(task, tm, DataConfig(n_sequences=4))
    more = training_sequences(task, tm, DataConfig(n_sequences=4, loss_on_demo_outputs=True))
    for a, b in zip(plain.sequences, more.sequences):
        assert np.array_equal(a.ids, b.ids)
        assert b.loss_mask.sum() > a.loss_mask.sum()
        assert np.array_equal(b.loss_mask[a.prompt_len:], a.loss_mask[a.prompt_len:])
        _check_sequence(b, task, tm, DataConfig(loss_on_demo_outputs=True))
    every = training_sequences(task, tm, DataConfig(n_sequences=4, loss_on_demo_outputs=True,
                                                    loss_on_first_output=True))
    for b, c in zip(more.sequences, every.sequences):
        # the first demonstration's output grid and end marker are now targets too
        first = int(np.flatnonzero(c.loss_mask)[0])
        assert c.loss_mask.sum() - b.loss_mask.sum() == first_output_len(b, tm)
        assert not b.loss_mask[first] and c.ids[first - len(tm.output):first].tolist() == list(tm.output)
        _check_sequence(c, task, tm, DataConfig(loss_on_demo_outputs=True, loss_on_first_output=True))


def first_output_len(seq, tm) -> int:
    """Tokens of the first demonstration's output grid and its end marker, found from the ids."""
    ids = seq.ids.tolist()
    k = len(tm.bos) + len(tm.input)
    while ids[k:k + len(tm.output)] != list(tm.output):
        k += 1
    start = k + len(tm.output)
    stop = start
    while ids[stop:stop + len(tm.end)] != list(tm.end):
        stop += 1
    return stop + len(tm.end) - start


def test_max_len_drops_longest_demos_never_the_answer(arc1_eval, tm):
    task = max(arc1_eval[:60], key=lambda t: _full_len(t, tm))
    full = _full_len(task, tm)
    cfg = DataConfig(n_sequences=32, max_len=full * 2 // 3)
    data = training_sequences(task, tm, cfg)
    assert data.skipped is None and data.sequences
    assert data.stats.dropped_demos > 0 and data.stats.max_seq_len <= cfg.max_len
    for seq in data.sequences:
        _check_sequence(seq, task, tm, cfg)
        aug = Augmentation.from_key(seq.meta["aug"])
        i = seq.meta["held_out"]
        others = [j for j in range(len(task.train)) if j != i]
        dropped = [j for j in others if j not in seq.meta["demos"]]

        def size(j):
            return len(encode([], aug.grid(task.train[j].input), tm, aug.grid(task.train[j].output)))

        # what was dropped is at least as long as anything kept
        if dropped and seq.meta["demos"]:
            assert min(size(j) for j in dropped) >= max(size(j) for j in seq.meta["demos"])
        # and keeping one more of the dropped would not have fit
        if dropped:
            assert len(seq) + min(size(j) for j in dropped) - len(tm.bos) > cfg.max_len


def test_task_that_cannot_fit_is_skipped_with_a_reason(tasks, tm):
    task = tasks[0]
    data = training_sequences(task, tm, DataConfig(max_len=8))
    assert data.sequences == [] and data.stats.made == 0
    assert task.id in data.skipped and "max_len=8" in data.skipped
    assert data.stats.unfit_pairs == list(range(len(task.train)))


def test_pair_too_long_to_be_the_answer_is_left_out(tasks, tm):
    small = Pair(np.ones((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    big = Pair(np.ones((30, 30), np.uint8), np.zeros((30, 30), np.uint8))
    task = replace(tasks[0], train=(small, big, small))
    cfg = DataConfig(n_sequences=6, max_len=1000)
    data = training_sequences(task, tm, cfg)
    assert data.skipped is None and data.stats.unfit_pairs == [1]
    assert {s.meta["held_out"] for s in data.sequences} <= {0, 2}
    for seq in data.sequences:
        assert 1 not in seq.meta["demos"]  # the big pair never fits beside an answer either
        _check_sequence(seq, task, tm, cfg)


def test_data_config_checks():
    with pytest.raises(ValueError, match="n_sequences.*max_len"):
        DataConfig(n_sequences=0, max_len=1)


# --- test prompts ---------------------------------------------------------------------------------

def test_prompts_under_augmentations(tasks, tm):
    rng = np.random.default_rng(0)
    for task in tasks[:10]:
        augs = sample_augmentations(8, rng, n_train=len(task.train))
        for k in range(task.n_test):
            views = ttt_data.test_prompts(task, k, tm, augs, max_len=16384)
            assert [v.aug for v in views] == augs
            for v in views:
                assert isinstance(v, View) and v.prompt.dtype == np.int64
                assert v.prompt[-len(tm.output):].tolist() == list(tm.output)
                assert v.n_demos == len(task.train) == len(v.demos)
                # the same prompt as the whole task augmented (a separate code path)
                augmented = v.aug.task(task)
                assert np.array_equal(v.prompt, encode(augmented.train, augmented.test_inputs[k], tm).ids)
                # and its answer is the augmented test output
                assert np.array_equal(v.aug.invert_grid(augmented.test_outputs[k]), task.test_outputs[k])


def test_prompts_fit_max_len_with_answer_reserve(arc1_eval, token_tm):
    tm = token_tm
    task = max(arc1_eval[:60], key=lambda t: len(encode(t.train, t.test_inputs[0], tm)))
    full = len(encode(task.train, task.test_inputs[0], tm))
    augs = sample_augmentations(4, np.random.default_rng(3), n_train=len(task.train))
    max_len = full // 2 + max_answer_len(tm)
    views = ttt_data.test_prompts(task, 0, tm, augs, max_len=max_len)
    for v in views:
        assert 0 < v.n_demos < len(task.train)
        assert len(v.prompt) + max_answer_len(tm) <= max_len
        order = v.aug.order if v.aug.order is not None else range(len(task.train))  # the identity has none
        assert list(v.demos) == [j for j in order if j in v.demos]
    small = ttt_data.test_prompts(task, 0, tm, augs, max_len=full // 2 + 50, answer_reserve=50)
    assert all(len(v.prompt) + 50 <= full // 2 + 50 for v in small)
    assert max_answer_len(tm) == 30 * 30 + (30 if tm.rows == "terminated" else 29) + len(tm.end)


def test_prompt_errors_name_the_task(tasks, tm):
    task = tasks[0]
    with pytest.raises(ValueError, match=f"task {task.id}.*over max_len"):
        ttt_data.test_prompts(task, 0, tm, [Augmentation()], max_len=100)
    with pytest.raises(ValueError, match=f"task {task.id}: no test input"):
        ttt_data.test_prompts(task, task.n_test, tm, [Augmentation()], max_len=8192)
    with pytest.raises(ValueError, match=f"task {task.id}.*orders"):
        ttt_data.test_prompts(task, 0, tm, [Augmentation(order=(0,))], max_len=8192)


def test_sequence_length_stats(tasks, tm):
    stats = sequence_length_stats(tasks, tm)
    lengths = [len(encode(t.train, x, tm, y)) for t in tasks for x, y in zip(t.test_inputs, t.test_outputs)]
    assert stats.n == len(lengths) and stats.max == max(lengths) and stats.median == float(np.median(lengths))
    with pytest.raises(ValueError, match="no tasks"):
        sequence_length_stats([], tm)


def _z(h, w):
    return np.zeros((h, w), dtype=np.uint8)


def test_answer_room_by_the_tasks_evidence():
    from arcttt.data import Task
    from arcttt.formats import compact_token_map

    tm = compact_token_map()  # rows terminated by a newline, one end token: h x w costs h * (w + 1) + 1
    # outputs twice the input's sides: the 4 x 5 test input's answer may be 8 x 10
    doubled = Task("d", (Pair(_z(2, 3), _z(4, 6)), Pair(_z(3, 3), _z(6, 6))), (_z(4, 5),), None)
    assert ttt_data.answer_shape(doubled, 0) == (8, 10)
    assert ttt_data.answer_room(doubled, 0, tm) == max(8 * 11, 10 * 9) + 1
    # a fixed 1 x 1 output beside a 6 x 2 test input: room for the test input either way round
    fixed = Task("f", (Pair(_z(5, 5), _z(1, 1)), Pair(_z(3, 7), _z(1, 1))), (_z(6, 2),), None)
    assert ttt_data.answer_shape(fixed, 0) == (6, 6)
    assert ttt_data.answer_room(fixed, 0, tm) == 6 * 7 + 1
    # never more than the largest answer
    big = Task("b", (Pair(_z(10, 10), _z(30, 30)),), (_z(20, 20),), None)
    assert ttt_data.answer_room(big, 0, tm) == max_answer_len(tm) == 30 * 31 + 1


def test_prompts_keep_the_demonstrations_the_evidence_leaves_room_for(arc1_eval):
    from arcttt.formats import compact_token_map

    tm = compact_token_map()
    task = next(t for t in arc1_eval if all(p.output.shape == p.input.shape for p in t.train)
                and max(t.test_inputs[0].shape) <= 12 and len(t.train) >= 3)
    room = ttt_data.answer_room(task, 0, tm)
    full = len(encode(task.train, task.test_inputs[0], tm))
    assert room < max_answer_len(tm)
    query = len(encode([], task.test_inputs[0], tm))
    max_len = max(full, query + max_answer_len(tm)) + room  # the query fits beside the largest answer
    (largest,) = ttt_data.test_prompts(task, 0, tm, [Augmentation()], max_len - room)
    (evidence,) = ttt_data.test_prompts(task, 0, tm, [Augmentation()], full + room, room)
    assert largest.n_demos < len(task.train) == evidence.n_demos
    assert (largest.answer_room, evidence.answer_room) == (max_answer_len(tm), room)
    assert len(evidence.prompt) + room <= full + room
