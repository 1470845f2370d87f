"""unsloth's calling contract, enforced on CPU. On a GPU, unsloth 2026.10.9 sends every one-token
call on a cache to its decode path, which reads ``position_ids.max()`` (llama) / ``.dim()`` (qwen3):
a call without position ids raises there. A multi-token call on a cache goes through its cached
prefill, which fills in the positions after the cache itself: ours must be exactly those. And its
fast LoRA path keeps cast copies of the adapter keyed on each tensor's version counter, so a reset
must bump every adapter tensor's version. On CPU unsloth falls back to stock transformers, so none of
this runs in the unsloth tests; the stand-in below raises exactly where the GPU path would."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from arcttt.budget import TaskDeadlines
from arcttt.config import load_config
from arcttt.formats import answer_ids
from arcttt.solve import solve_task
from arcttt.search import dfs
from arcttt.select import answer_logprobs


def _cache_len(cache) -> int:
    if cache is None:
        return 0
    if isinstance(cache, (tuple, list)):
        return cache[0][0].shape[-2]
    return cache.get_seq_length()


class UnslothContract(torch.nn.Module):
    """Wraps a causal LM; raises where unsloth's CUDA fast path would, then calls it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = {"prefill": 0, "decode": 0, "cached_prefill": 0}

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, **kwargs):
        past = _cache_len(past_key_values)
        n = input_ids.shape[1]
        if past and position_ids is None:
            # unsloth/models/llama.py LlamaModel_fast_forward_inference: position_ids.max()
            raise AttributeError("'NoneType' object has no attribute 'max' (unsloth decode without position_ids)")
        if past:
            expected = torch.arange(past, past + n, device=input_ids.device).expand_as(position_ids)
            if attention_mask is None and not torch.equal(position_ids, expected):
                raise AssertionError(f"positions {position_ids.tolist()} after a cache of {past}: unsloth's cached "
                                     f"prefill would use {expected.tolist()}")
            self.calls["decode" if n == 1 else "cached_prefill"] += 1
        else:
            self.calls["prefill"] += 1
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=past_key_values, **kwargs)


def test_search_and_scoring_keep_the_contract(tiny_session, arc1_eval):
    model = UnslothContract(tiny_session.model)
    tm = tiny_session.token_map
    task = arc1_eval[0]
    from arcttt.formats import encode

    prompt = encode(task.train, task.test_inputs[0], tm).ids
    plain = dfs(tiny_session.model, prompt, tm, threshold=0.02, max_new_tokens=6)
    got = dfs(model, prompt, tm, threshold=0.02, max_new_tokens=6)
    assert [(c.ids, round(c.logprob, 4)) for c in got] == [(c.ids, round(c.logprob, 4)) for c in plain]
    assert model.calls["decode"] > 0
    answers = [answer_ids(g, tm) for g in (task.test_outputs[0], task.train[0].output)]
    want = answer_logprobs(tiny_session.model, prompt, answers)
    assert np.allclose(answer_logprobs(model, prompt, answers), want, atol=1e-4)
    assert model.calls["cached_prefill"] > 0


def test_solve_task_keeps_the_contract(tiny_session, arc1_eval):
    """The whole task, views one by one (as on the unsloth backend): TTT, search, scoring."""
    wrapped = UnslothContract(tiny_session.model)
    session = dataclasses.replace(tiny_session, model=wrapped,
                                  snapshot={f"inner.{k}": v for k, v in tiny_session.snapshot.items()})
    cfg = load_config("cpu-smoke", ["ttt.steps=1", "data.n_sequences=2", "search.batch_views=false"])
    now = time.time()
    result = solve_task(session, arc1_eval[0], cfg, TaskDeadlines(now, now + 300, now + 600, now + 900))
    assert result.status == "ok" and all(t.error is None for t in result.tests), result
    assert wrapped.calls["decode"] > 0 and wrapped.calls["cached_prefill"] > 0
    tiny_session.reset()


def test_reset_bumps_every_adapter_version(tiny_session):
    """unsloth keys its cast LoRA copies on the tensors' version counters: a reset that wrote
    through ``.data`` would leave them stale."""
    params = tiny_session.trainable_parameters()
    before = {n: p._version for n, p in params.items()}
    tiny_session.reset()
    assert all(p._version > before[n] for n, p in params.items())


def test_gradient_checkpointing_follows_the_config(tiny_model_dir):
    from arcttt.model import LoraConfig, ModelConfig, load_model

    for on in (False, True):
        s = load_model(tiny_model_dir, ModelConfig(backend="hf", gradient_checkpointing=on,
                                                   lora=LoraConfig(rank=4, alpha=8)))
        s.train_mode()
        assert s.model.get_base_model().is_gradient_checkpointing is on
        s.eval_mode()


class RunsOutOfMemory(torch.nn.Module):
    """Calls the inner model, but raises CUDA's out-of-memory error on the calls it is told to."""

    def __init__(self, inner, fail):
        super().__init__()
        self.inner, self.fail, self.n = inner, fail, 0

    def forward(self, **kwargs):
        self.n += 1
        if self.fail(self.n, kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.70 GiB")
        return self.inner(**kwargs)


def test_candidates_survive_an_oom_in_search_and_in_scoring(tiny_session, arc1_eval):
    """Views searched before an OOM keep their candidates; an OOM in scoring ranks them by the
    search alone instead of throwing them away."""
    from arcttt.solve import Phases, answer_test_input
    from arcttt.submission import fallback_attempts

    task = arc1_eval[0]
    cfg = load_config("cpu-smoke", ["search.n_augmentations=3", "search.batch_views=false", "select.n_views=2"])
    # a prefill (no cache) of the third view in the search, then any cached call in scoring
    prefills = []

    def fail(n, kw):
        past = _cache_len(kw.get("past_key_values"))  # a prefill may be given an empty cache to fill
        if not past and kw["input_ids"].shape[1] > 1:
            prefills.append(n)
        in_scoring = past and kw["input_ids"].shape[1] > 1
        return len(prefills) == 3 and prefills[-1] == n or in_scoring

    session = dataclasses.replace(tiny_session, model=RunsOutOfMemory(tiny_session.model, fail),
                                  snapshot={f"inner.{k}": v for k, v in tiny_session.snapshot.items()})
    now = time.time()
    out = answer_test_input(session, task, 0, cfg, fallback_attempts(task)[0], Phases(),
                             search_end=now + 300, select_end=now + 600)
    assert out.search["oom"] and out.search["views"] == 3
    assert out.candidates and "out of memory in scoring" in out.error
    assert all(c["view_logprobs"] == [] for c in out.candidates)  # ranked by the search alone
    found = {k for c in out.candidates for k, _ in c["found"]}
    assert len(found) == 2  # the two views searched before the OOM
