"""The preallocated key/value cache (arcttt/kvcache.py): the same logits as a ``DynamicCache``
through prefill, decode, crop, growth, column drops and batch expansion; appends in place and
crops that only move a length; the search and scoring on it equal to the model's own cache; the
prompt caches the search keeps for scoring; scoring's batch under a memory budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from arcttt import kvcache, search
from arcttt.augment import Augmentation
from arcttt.formats import answer_ids, encode
from arcttt.kvcache import PromptCaches, SlabCache, cache_bytes, new_cache
from arcttt.search import SearchStats, search_prompts
from arcttt.select import answer_logprobs, batch_rows
from helpers import TM
# tests/ is on sys.path under pytest's default (prepend) import mode
from test_search import TableLM, random_fn, small_prompt, teacher_forced_logprob, tiny_llama


def prompts_of(task):
    out = [encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids
           for a in (Augmentation(), Augmentation("rot90"), Augmentation("flipH", order=(1, 0)))]
    out[1] = out[1][3:]  # a different length, so a batch is padded
    return out


def feed(model, cache, tokens, **kw):
    with torch.no_grad():
        ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        return model(input_ids=ids[None] if ids.ndim == 1 else ids,
                     past_key_values=cache, use_cache=True, **kw)


def test_crop_then_feed_equals_fresh_forward():
    model, prompt = tiny_llama(), small_prompt(1, 2, 3)
    with torch.no_grad():
        cache = model(input_ids=torch.tensor(prompt)[None], use_cache=True).past_key_values
        model(input_ids=torch.tensor([[4, 5, 10]]), past_key_values=cache, use_cache=True)
        kvcache.crop_to(cache, len(prompt))
        assert cache.get_seq_length() == len(prompt)
        cached = model(input_ids=torch.tensor([[7]]), past_key_values=cache, use_cache=True).logits[0, -1]
        fresh = model(input_ids=torch.tensor(np.append(prompt, 7))[None]).logits[0, -1]
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-5)
    # a legacy tuple of (key, value) per layer comes back as a new, shorter tuple
    k = torch.arange(10.0).view(1, 1, 5, 2)
    (ck, cv), = kvcache.crop_to(((k, k + 1),), 3)
    assert torch.equal(ck, k[:, :, :3]) and torch.equal(cv, k[:, :, :3] + 1)


def test_slab_cache_follows_a_dynamic_cache_through_decode_crop_and_growth():
    model, prompt = tiny_llama(), small_prompt(1, 2, 3)
    slab, dyn = SlabCache(reserve=2), DynamicCache()  # reserve 2: it must grow several times
    feed(model, slab, prompt), feed(model, dyn, prompt)
    steps = [[4], [5], [10], "crop 2", [6], [7], [8], [9], "crop 4", [4, 5, 6], [1]]
    for step in steps:
        if isinstance(step, str):
            n = int(step.split()[1])
            slab.crop(-n), dyn.crop(-n)
            continue
        a, b = feed(model, slab, step).logits, feed(model, dyn, step).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert slab.get_seq_length() == dyn.get_seq_length()
    assert slab.layers[0].capacity > len(prompt) + 2  # it grew
    for ls, ld in zip(slab.layers, dyn.layers):
        torch.testing.assert_close(ls.keys, ld.keys)


def test_appends_write_in_place_and_a_crop_moves_only_the_length():
    model, prompt = tiny_llama(), small_prompt(1, 2, 3)
    cache = SlabCache(reserve=64)
    feed(model, cache, prompt)
    layer = cache.layers[0]
    ptr, cap = layer.key_buf.data_ptr(), layer.capacity
    for t in (4, 5, 10, 6):
        feed(model, cache, [t])
    assert layer.keys.data_ptr() == ptr and layer.capacity == cap  # no new tensor: written in place
    cache.crop(-3)
    assert cache.get_seq_length() == len(prompt) + 1
    assert layer.keys.data_ptr() == ptr and layer.key_buf.data_ptr() == ptr  # a view of the same buffer
    cached = feed(model, cache, [7]).logits[0, -1]
    with torch.no_grad():
        fresh = model(input_ids=torch.tensor(np.append(prompt, [4, 7]))[None]).logits[0, -1]
    torch.testing.assert_close(cached, fresh, atol=1e-5, rtol=1e-5)


def test_rows_columns_and_expansion():
    model = tiny_llama()
    ids = np.stack([small_prompt(1, 2, 3), small_prompt(4, 5, 6)])
    slab, dyn = SlabCache(reserve=4), DynamicCache()
    feed(model, slab, ids), feed(model, dyn, ids)
    cols = torch.tensor([0, 1, 2, 4, 5])
    slab.keep_columns(cols)
    for layer in dyn.layers:
        layer.keys, layer.values = layer.keys.index_select(-2, cols), layer.values.index_select(-2, cols)
    torch.testing.assert_close(feed(model, slab, [[7], [8]]).logits, feed(model, dyn, [[7], [8]]).logits)
    slab.batch_select_indices(torch.tensor([1])), dyn.batch_select_indices(torch.tensor([1]))
    one = SlabCache(layers=[layer.copy_of(0, 0, slab.get_seq_length(), 0) for layer in slab.layers])
    wide = one.expanded(3, room=2)
    assert one.get_seq_length() == wide.get_seq_length() and wide.layers[0].keys.shape[0] == 3
    dyn.batch_repeat_interleave(3)
    torch.testing.assert_close(feed(model, wide, [[1, 2], [3, 4], [5, 6]]).logits,
                               feed(model, dyn, [[1, 2], [3, 4], [5, 6]]).logits, atol=1e-5, rtol=1e-5)
    assert one.get_seq_length() == wide.get_seq_length() - 2  # the expansion is a copy
    two = wide.first_rows(2)
    assert two.layers[0].key_buf.data_ptr() == wide.layers[0].key_buf.data_ptr()


@pytest.mark.parametrize("batch", [False, True])
def test_search_on_the_preallocated_cache_equals_the_models_own(small_task, batch, monkeypatch):
    monkeypatch.setattr(search, "COMPACT_MIN_COLUMNS", 8)  # columns dropped often
    monkeypatch.setattr(kvcache, "RESERVE", 3)             # buffers grow often
    model, prompts = tiny_llama(), prompts_of(small_task)
    stats = SearchStats()
    slab = search_prompts(model, prompts, TM, threshold=0.005, max_new_tokens=12, batch=batch, stats=stats)
    own = search_prompts(model, prompts, TM, threshold=0.005, max_new_tokens=12, batch=batch, preallocate=False)
    assert stats.tokens_fed > 30 and sum(len(cs) for cs in slab) >= 4
    for p, a, b in zip(prompts, slab, own):
        assert [c.ids for c in a] == [c.ids for c in b]
        for ca, cb in zip(a, b):
            assert ca.logprob == pytest.approx(cb.logprob, abs=1e-5)
            assert ca.logprob == pytest.approx(teacher_forced_logprob(model, p, ca.ids), abs=1e-4)


def test_only_full_attention_models_get_the_preallocated_cache():
    from transformers import MistralConfig, MistralForCausalLM

    assert isinstance(new_cache(tiny_llama()), SlabCache)
    assert isinstance(new_cache(TableLM(random_fn(0))), SlabCache)  # no config: a stand-in or a wrapper
    sliding = MistralForCausalLM(MistralConfig(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, sliding_window=8))
    assert new_cache(sliding) is None


def test_a_transformers_without_layer_types_gets_the_models_own_cache(monkeypatch):
    import transformers.cache_utils

    monkeypatch.delattr(transformers.cache_utils, "get_layer_types_and_kwargs")
    assert new_cache(tiny_llama()) is None  # the model builds its own; the search works with either


class Counting(torch.nn.Module):
    """Counts the wrapped model's calls: prefills (no cache, or an empty one) and cached calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.prefills, self.cached = inner, 0, 0

    def forward(self, **kw):
        past = kw.get("past_key_values")
        if past is None or past.get_seq_length() == 0:
            self.prefills += 1
        else:
            self.cached += 1
        return self.inner(**kw)


@pytest.mark.parametrize("batch", [False, True])
def test_the_search_keeps_the_prompt_caches_scoring_uses(small_task, batch):
    """A view in the search and the scoring (in a run, the identity) has its prefill run once;
    here the shorter prompt, left-padded in the batch."""
    model = Counting(tiny_llama())
    prompts = prompts_of(small_task)
    answers = [answer_ids(g, TM) for g in (small_task.train[0].output, small_task.test_outputs[0] if
                                           small_task.test_outputs else small_task.train[1].output)]
    shared = prompts[1]
    keep = PromptCaches([shared, small_prompt(9, 9)])  # and a prompt the search does not see
    search_prompts(model, prompts, TM, threshold=0.05, max_new_tokens=8, batch=batch, keep=keep)
    assert set(keep.kept) == {shared.tobytes()} and keep.bytes == cache_bytes(keep.kept[shared.tobytes()][0])
    before = model.prefills
    got = answer_logprobs(model, shared, answers, prefilled=keep.take(shared))
    assert model.prefills == before and keep.reused == 1 and not keep.kept  # no prefill; the cache is freed
    want = answer_logprobs(model, shared, answers)
    assert model.prefills == before + 1
    np.testing.assert_allclose(got, want, atol=1e-4)
    for a, lp in zip(answers, got):
        assert lp == pytest.approx(teacher_forced_logprob(model.inner, shared, a), abs=1e-4)


@pytest.mark.parametrize("batch", [False, True])
def test_prompt_caches_stay_under_their_budget(small_task, batch, monkeypatch):
    copies = []
    original = SlabCache.copy_of
    monkeypatch.setattr(SlabCache, "copy_of", lambda self, *a, **k: copies.append(a) or original(self, *a, **k))
    prompts = prompts_of(small_task)
    keep = PromptCaches(prompts, max_bytes=1)
    search_prompts(tiny_llama(), prompts, TM, threshold=0.5, max_new_tokens=4, keep=keep, batch=batch)
    assert not keep.kept and keep.take(prompts[0]) is None
    assert copies == []  # the budget is asked before a copy is made, not after
    roomy = PromptCaches(prompts)
    search_prompts(tiny_llama(), prompts, TM, threshold=0.5, max_new_tokens=4, keep=roomy, batch=batch)
    assert len(roomy.kept) == len(copies) == len({p.tobytes() for p in prompts})


def test_a_small_memory_budget_splits_the_batch_and_gives_the_same_scores(small_task):
    model = Counting(tiny_llama())
    prompt = encode(small_task.train, small_task.test_inputs[0], TM).ids
    grids = [np.array([[3]], np.uint8), np.array([[1, 2, 0], [0, 4, 5]], np.uint8),
             np.arange(9, dtype=np.uint8).reshape(3, 3), np.array([[7], [7], [1], [0]], np.uint8)]
    answers = [answer_ids(g, TM) for g in grids]
    whole = answer_logprobs(model, prompt, answers, batch_size=8)
    assert model.cached == 1
    # the tiny Llama's cache: 2 layers x (k + v) x 2 heads x 8 dims x 4 bytes = 256 bytes a token
    longest = max(len(a) for a in answers)
    row = 256 * (len(prompt) + longest) + longest * 16 * 4
    assert batch_rows(SlabCache(), len(prompt), longest, 16, 8, None) == 8
    split = answer_logprobs(model, prompt, answers, batch_size=8, max_cache_bytes=2 * row + 1)
    assert model.cached == 1 + 2  # two rows at a time
    np.testing.assert_allclose(split, whole, atol=1e-5)
    one = answer_logprobs(model, prompt, answers, batch_size=8, max_cache_bytes=1)  # never fewer than one
    assert model.cached == 3 + 4
    np.testing.assert_allclose(one, whole, atol=1e-5)


class Recording(torch.nn.Module):
    """Records each prefill's cache (what it was given) and its rows."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.prefills = inner, []

    def forward(self, **kw):
        past = kw.get("past_key_values")
        if past is None or past.get_seq_length() == 0:
            self.prefills.append((past, kw["input_ids"].shape[0]))
        return self.inner(**kw)


@pytest.mark.parametrize("library, ours, lock_step", [("hf", True, True), ("unsloth", False, False)])
def test_each_library_gets_its_cache_and_layout(small_task, library, ours, lock_step):
    """backends.py: on hf the views run in lock-step on our cache; on unsloth one by one on its own."""
    from types import SimpleNamespace

    from arcttt.search import Candidate, SearchConfig, search_session
    from arcttt.select import SelectConfig, score_session

    model = Recording(tiny_llama())
    session = SimpleNamespace(backend=library, model=model, token_map=TM, device=torch.device("cpu"),
                              eval_mode=lambda: None)
    views = [(a, p) for a, p in zip((Augmentation(), Augmentation("rot90"), Augmentation("flipH", order=(1, 0))),
                                    prompts_of(small_task))]
    search_session(session, small_task, 0, views, SearchConfig(n_augmentations=3, threshold=0.3))
    assert [rows for _, rows in model.prefills] == ([3] if lock_step else [1, 1, 1])
    assert all(isinstance(past, SlabCache) == ours for past, _ in model.prefills)
    model.prefills.clear()
    cands = [Candidate(small_task.train[0].output, [("id", -1.0)])]
    score_session(session, small_task, 0, cands, views, SelectConfig(n_views=2))
    assert len(model.prefills) == 2 and all(isinstance(past, SlabCache) == ours for past, _ in model.prefills)
