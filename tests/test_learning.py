"""Does test-time training make our own model solve more? The shipped model (weights/arcttt-tiny-syn)
on held-out colour-map tasks, through the pipeline's own ``solve_task`` with the ``cpu-tiny`` preset,
with and without TTT. A silent learning bug (a loss mask that misses the answer, an adapter that is
not trained or not used, an augmentation whose inverse is off) takes the TTT count back down to the
no-TTT count, and this test fails. Deterministic: fixed seeds, one torch thread, no clock."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from arcttt.budget import TaskDeadlines
from arcttt.config import load_config
from arcttt.model import SHIPPED_MODEL, load_model
from arcttt.solve import solve_task
from arcttt.synthetic import held_out

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHIPPED_MODEL / "config.json").is_file(), reason="no shipped model in weights/")]


def _solved(session, tasks, cfg) -> int:
    far = time.time() + 1e6
    count = 0
    for task in tasks:
        result = solve_task(session, task, cfg, TaskDeadlines(time.time(), far, far, far))
        count += sum(any(a == task.test_outputs[i].tolist() for a in t.attempts) for i, t in enumerate(result.tests))
    return count


def test_ttt_solves_held_out_tasks_the_model_alone_does_not():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config("cpu-tiny")
        session = load_model(SHIPPED_MODEL, cfg.model)
        # the first four colour maps of the held-out set of trained families (fixed before training)
        tasks = [t for t in held_out("trained", 12) if t.id.endswith("small_colour_map")]
        assert len(tasks) == 4
        without = _solved(session, tasks, replace(cfg, ttt=replace(cfg.ttt, steps=0)))
        with_ttt = _solved(session, tasks, cfg)
    finally:
        torch.set_num_threads(threads)
    assert with_ttt >= without + 2, (without, with_ttt)
