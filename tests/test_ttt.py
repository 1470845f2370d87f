"""The per-task LoRA trainer on the tiny random Llama and real ARC tasks: schedule, batching, loss,
learning, deadline, out-of-memory fallback."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.formats import Encoded
from arcttt.model import LoraConfig, ModelConfig, load_model
from arcttt.ttt import TTTConfig, batch_loss, lr_at, mean_loss, pack_batches, train_task
from arcttt.ttt_data import DataConfig, training_sequences

RECOLOUR_TASK = "0d3d703e"  # arc-agi-1 training: a fixed colour map, same grid (found by search over the split)


def sequences_of(arc1_train, tm, task_id=RECOLOUR_TASK, n=32, colours=False):
    task = next(t for t in arc1_train if t.id == task_id)
    return training_sequences(task, tm, DataConfig(n_sequences=n, colours=colours)).sequences


def adapter_state(session):
    return {n: p.detach().clone() for n, p in session.trainable_parameters().items()}


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="lr must be > 0.*warmup_frac.*optimizer"):
        TTTConfig(lr=0, warmup_frac=1.0, optimizer="sgd")


@given(steps=st.integers(1, 500), warmup=st.floats(0, 0.9), min_frac=st.floats(0, 1))
def test_lr_schedule_warms_up_then_decays_towards_the_floor(steps, warmup, min_frac):
    cfg = TTTConfig(steps=steps, lr=1e-3, warmup_frac=warmup, min_lr_frac=min_frac)
    lrs = [lr_at(i, cfg) for i in range(steps)]
    n_warm = int(np.ceil(warmup * steps))
    assert all(0 < lr <= cfg.lr * (1 + 1e-12) for lr in lrs)
    assert all(lr >= cfg.lr * min_frac * (1 - 1e-12) for lr in lrs[n_warm:])
    assert all(a <= b for a, b in zip(lrs[:n_warm], lrs[1:n_warm]))  # rising during warmup
    assert all(a >= b * (1 - 1e-12) for a, b in zip(lrs[n_warm:], lrs[n_warm + 1:]))  # then falling
    if n_warm:
        assert lrs[n_warm - 1] == pytest.approx(cfg.lr)
    if n_warm < steps:
        assert lrs[n_warm] == pytest.approx(cfg.lr)
        assert lr_at(steps, cfg) == pytest.approx(cfg.lr * min_frac, abs=1e-15)  # the floor, one step later


@settings(deadline=None, max_examples=60)
@given(lengths=st.lists(st.integers(2, 60), min_size=1, max_size=30), budget=st.integers(16, 200),
       rows=st.integers(1, 8), seed=st.integers(0, 1000))
def test_pack_batches_keeps_every_sequence_once_within_the_budget(lengths, budget, rows, seed):
    rng = np.random.default_rng(seed)
    seqs = [Encoded(rng.integers(0, 15, n), rng.random(n) < 0.5, n // 2, meta={"k": k}) for k, n in enumerate(lengths)]
    batches = pack_batches(seqs, budget, rows, pad=15)
    seen = []
    for b in batches:
        n_rows, width = b.input_ids.shape
        assert n_rows <= rows and (n_rows == 1 or n_rows * width <= budget)
        assert b.tokens == int(b.attention_mask.sum())
        for r in range(n_rows):
            s = seqs[len(seen)]  # packing keeps the order
            n = len(s)
            assert width >= n and b.attention_mask[r, :n].all() and not b.attention_mask[r, n:].any()
            assert torch.equal(b.input_ids[r, :n], torch.from_numpy(s.ids)) and (b.input_ids[r, n:] == 15).all()
            assert torch.equal(b.targets[r, 1:n], torch.from_numpy(s.loss_mask[1:])) and not b.targets[r, n:].any()
            assert not b.targets[r, 0]
            seen.append(s.meta["k"])
    assert seen == list(range(len(seqs)))


def test_batch_loss_is_the_mean_over_target_tokens_and_ignores_padding(tiny_session, arc1_train):
    s = tiny_session
    seqs = sequences_of(arc1_train, s.token_map, task_id="6150a2bd", n=3) + \
        sequences_of(arc1_train, s.token_map, n=2)  # two tasks: different lengths, so padding
    assert len({len(q) for q in seqs}) > 1
    sums, counts = [], []
    with torch.inference_mode():
        for q in seqs:  # the plain way: full logits, shift by one, mask
            ids = torch.from_numpy(q.ids)[None]
            lg = s.model(input_ids=ids).logits[0, :-1]
            mask = torch.from_numpy(q.loss_mask[1:])
            sums.append(F.cross_entropy(lg[mask], ids[0, 1:][mask], reduction="sum"))
            counts.append(int(mask.sum()))
        batch = pack_batches(seqs, 10_000, 16, s.token_map.pad)
        assert len(batch) == 1
        got = batch_loss(s.model, batch[0], s.device)
    torch.testing.assert_close(got, sum(sums) / sum(counts))
    assert mean_loss(s, seqs, batch_tokens=200) == pytest.approx(float(got), rel=1e-5)


def test_ttt_learns_a_real_task_and_reset_restores_the_old_loss(tiny_model_dir, arc1_train):
    """On a recolouring task from ARC-AGI-1 training, TTT on the tiny model more than halves the loss on
    the task's own training sequences within seconds; reset gives back the old loss exactly."""
    s = load_model(tiny_model_dir, ModelConfig(backend="hf", lora=LoraConfig(
        rank=16, alpha=16, train_embeddings=True, train_lm_head=True)))
    seqs = sequences_of(arc1_train, s.token_map)
    assert len(seqs) == 32
    before = mean_loss(s, seqs)
    cfg = TTTConfig(steps=50, lr=5e-3, batch_tokens=4096, max_batch_size=32)
    logged: list[str] = []
    result = train_task(s, seqs, cfg, log=logged.append)
    after = mean_loss(s, seqs)
    assert result.stopped == "done" and result.skipped is None and result.steps == 50 and len(result.losses) == 50
    print(f"loss {before:.3f} -> {after:.3f} in {result.seconds:.1f} s")
    assert after < 0.5 * before, (before, after)
    assert result.tokens == 50 * sum(len(q) for q in seqs) and result.tokens_per_s > 0
    assert logged[0].startswith("ttt step 1/50") and not s.model.training
    s.reset()
    assert mean_loss(s, seqs) == before


def test_same_seed_same_losses_after_reset(tiny_session, arc1_train):
    s = tiny_session
    seqs = sequences_of(arc1_train, s.token_map, n=8, colours=True)
    cfg = TTTConfig(steps=4, lr=1e-2, batch_tokens=512, max_batch_size=4)
    first = train_task(s, seqs, cfg)
    s.reset()
    second = train_task(s, seqs, cfg)
    s.reset()
    third = train_task(s, seqs, TTTConfig(steps=4, lr=1e-2, batch_tokens=512, max_batch_size=4, seed=1))
    assert first.losses == second.losses and first.losses != third.losses


def test_deadline_stops_training(tiny_session, arc1_train, monkeypatch):
    s = tiny_session
    seqs = sequences_of(arc1_train, s.token_map, n=8)
    initial = adapter_state(s)
    past = train_task(s, seqs, TTTConfig(steps=5), deadline=time.time() - 1)
    assert (past.steps, past.stopped, past.skipped) == (0, "deadline", "deadline reached before the first step")
    assert all(torch.equal(p, initial[n]) for n, p in adapter_state(s).items())
    # the mechanism, without racing the real clock: a fake clock that each forward pass moves on
    # by 10 s; with the deadline 25 s away, no step may start that would (judging by the last one)
    # end past it, so training stops after the second step, before the clock passes the deadline
    import types

    import arcttt.ttt as ttt_module

    clock = [1000.0]
    monkeypatch.setattr(ttt_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    forward = s.model.forward

    def slow_forward(*args, **kwargs):
        clock[0] += 10.0
        return forward(*args, **kwargs)

    monkeypatch.setattr(s.model, "forward", slow_forward)
    soon = train_task(s, seqs, TTTConfig(steps=1000, batch_tokens=256), deadline=clock[0] + 25.0)
    assert soon.stopped == "deadline" and soon.steps == 2 and clock[0] <= 1000.0 + 25.0
    assert not s.model.training


def test_empty_input(tiny_session):
    result = train_task(tiny_session, [], TTTConfig(steps=3))
    assert (result.steps, result.stopped, result.skipped) == (0, "empty", "no training sequences")


def fake_oom_forward(model, too_big):
    """The model's forward, raising CUDA's out-of-memory error whenever ``too_big(input_ids)``."""
    real = model.forward
    calls = []

    def forward(*args, **kwargs):
        ids = kwargs["input_ids"]
        calls.append(tuple(ids.shape))
        if too_big(ids):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    return forward, calls


def test_oom_retries_with_smaller_batches(tiny_session, arc1_train, monkeypatch):
    s = tiny_session
    seqs = sequences_of(arc1_train, s.token_map, n=8)
    forward, calls = fake_oom_forward(s.model, lambda ids: ids.shape[0] > 2)
    monkeypatch.setattr(s.model, "forward", forward)
    logged: list[str] = []
    result = train_task(s, seqs, TTTConfig(steps=6, batch_tokens=4096, max_batch_size=8), log=logged.append)
    assert result.stopped == "done" and result.steps == 6 and result.skipped is None
    assert calls[0][0] == 8 and all(rows <= 2 for rows, _ in calls[-6:])
    assert any("out of memory" in line for line in logged)


def test_oom_drops_the_longest_sequences_then_skips(tiny_session, arc1_train, monkeypatch):
    s = tiny_session
    seqs = sequences_of(arc1_train, s.token_map, task_id="6150a2bd", n=4) + sequences_of(arc1_train, s.token_map, n=4)
    short = min(len(q) for q in seqs)
    forward, calls = fake_oom_forward(s.model, lambda ids: ids.shape[1] > short)
    monkeypatch.setattr(s.model, "forward", forward)
    result = train_task(s, seqs, TTTConfig(steps=3, batch_tokens=4096))
    # first smaller batches, then one sequence a batch, then only the short ones are trained on
    assert calls[0][0] == len(seqs) and (1, max(len(q) for q in seqs)) in calls
    assert result.stopped == "done" and result.steps == 3 and result.tokens == 3 * short

    s.reset()
    initial = adapter_state(s)
    forward, calls = fake_oom_forward(s.model, lambda ids: True)
    monkeypatch.setattr(s.model, "forward", forward)
    result = train_task(s, seqs, TTTConfig(steps=3, batch_tokens=4096))
    assert (result.steps, result.stopped) == (0, "oom")
    assert result.skipped.startswith("oom: CUDA out of memory") and len(calls) > 2
    assert all(torch.equal(p, initial[n]) for n, p in adapter_state(s).items()) and not s.model.training
