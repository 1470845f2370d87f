"""The task's frame (pretransform.py): a symmetry of the inputs alone, chosen by the model's likelihood
of the demonstration outputs."""

from __future__ import annotations

import time
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from arcttt.augment import D8_NAMES, Augmentation
from arcttt.budget import TaskDeadlines
from arcttt.config import load_config
from arcttt.data import Pair, Task
from arcttt.formats import compact_token_map
from arcttt.model import SHIPPED_MODEL, load_model
from arcttt.solve import solve_task
from arcttt.pretransform import Frame, choose_frame, reframe
from arcttt.records import TaskResult
from arcttt.synthetic import held_out

grids = arrays(np.uint8, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=st.integers(0, 9))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(grids, grids), min_size=1, max_size=4), grids, st.sampled_from(D8_NAMES))
def test_reframe_moves_the_inputs_alone(pairs, query, symmetry):
    task = Task("t", tuple(Pair(a, b) for a, b in pairs), (query,), None)
    framed = reframe(task, symmetry)
    aug = Augmentation(symmetry)
    for p, q in zip(task.train, framed.train):
        assert np.array_equal(q.input, aug.grid(p.input))
        assert q.output is p.output  # untouched: an answer in the frame is the task's answer
    assert np.array_equal(framed.test_inputs[0], aug.grid(query))
    assert np.array_equal(aug.invert_grid(framed.test_inputs[0]), query)


def test_reframe_of_the_identity_is_the_task():
    task = held_out("trained", 1)[0]
    assert reframe(task, "id") is task


class _Blind(torch.nn.Module):
    """A model that ignores its input: every frame is as likely as every other."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kw):
        return types.SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.w)


def test_the_identity_wins_a_tie_and_a_task_with_nothing_to_compare():
    tm = compact_token_map()
    task = held_out("trained", 1)[0]  # a flip
    frame = choose_frame(_Blind(16), task, tm, max_len=4096)
    assert frame.symmetry == "id" and sorted(frame.logprobs) == sorted(D8_NAMES)
    assert len(set(frame.logprobs.values())) == 1
    # demonstrations longer than max_len: nothing compared, the task as it is
    assert choose_frame(_Blind(16), task, tm, max_len=8) == Frame("id", {})
    one_demo = replace(task, train=task.train[:1])  # no output after the first to score
    assert choose_frame(_Blind(16), one_demo, tm, max_len=4096) == Frame("id", {})


def test_a_frame_survives_the_record_round_trip():
    record = TaskResult("t", frame=Frame("flipV", {"id": -3.0, "flipV": -1.0}).to_json())
    assert TaskResult.from_json(record.to_json()).frame == {"symmetry": "flipV", "logprobs": {"id": -3.0, "flipV": -1.0}}
    assert TaskResult.from_json({"task_id": "t"}).frame is None  # a record written before frames


needs_model = pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped model in weights/")


@needs_model
def test_our_model_finds_the_rule_s_own_symmetry():
    """The shipped model cannot flip or rotate, but it copies: the frame that makes a flip task a copy
    is the rule's own symmetry (synthetic.py records it in the task's params; here by its outputs)."""
    session = load_model(SHIPPED_MODEL, load_config("cpu-tiny").model)
    tasks = [t for t in held_out("trained", 12) if not t.id.endswith("small_colour_map")][:4]
    for task in tasks:
        rule = next(s for s in D8_NAMES if all(np.array_equal(Augmentation(s).grid(p.input), p.output)
                                               for p in task.train))
        frame = choose_frame(session.model, task, session.token_map, max_len=1024)
        assert frame.symmetry == rule, (task.id, frame)


@needs_model
def test_solve_task_records_its_frame_and_answers_in_the_task_s_own_space():
    cfg = load_config("cpu-tiny", ["ttt.steps=0", "data.input_frame=true"])
    session = load_model(SHIPPED_MODEL, cfg.model)
    task = held_out("trained", 1)[0]
    far = time.time() + 1e6
    result = solve_task(session, task, cfg, TaskDeadlines(time.time(), far, far, far))
    assert result.frame["symmetry"] != "id" and len(result.frame["logprobs"]) == 8
    assert [p.phase for p in result.phases][:2] == ["frame", "data"]
    # the same answers as the framed task solved as it is: nothing inverted on the way out
    plain = replace(cfg, data=replace(cfg.data, input_frame=False))
    framed = solve_task(session, reframe(task, result.frame["symmetry"]), plain, TaskDeadlines(time.time(), far, far, far))
    assert [t.attempts for t in framed.tests] == [t.attempts for t in result.tests]
    assert framed.frame is None and "frame" not in [p.phase for p in framed.phases]
