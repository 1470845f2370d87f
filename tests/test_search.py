"""The answer search: exact against brute-force enumeration on a stand-in model whose next-token
distribution the test sets, cache reuse against full forward passes on a tiny real Llama, the time
limit on a clock that counts the model's calls, and the per-test-input merge under augmentations on
a real task. The tree search alone (no model) is tests/test_tree.py.

``TableLM`` and ``tiny_llama`` are shared with tests/test_select.py."""

from __future__ import annotations

import dataclasses

import json
import math
import time
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt import search
from arcttt.augment import Augmentation
from arcttt.formats import encode, parse_answer
from arcttt.search import (SearchConfig, SearchStats, dfs, greedy, search_prompts,
                           search_test_input)
from helpers import TM

SYMBOLS = TM.answer_symbols  # digits, newline, end
END_ID = TM.end[0]
OUT_ID = TM.output[0]


class TableLM(torch.nn.Module):
    """A causal LM whose next-token logits are ``fn(visible tokens)``.

    Its cache is a real ``DynamicCache`` holding the token ids as keys, and a row sees only the
    columns its attention mask lets it see; so a wrong crop, batch expansion, column drop or mask
    changes what it sees and so what it answers. Wrong position ids fail an assertion.
    """

    def __init__(self, fn, vocab: int = 16, legacy_cache: bool = False):
        super().__init__()
        self.fn, self.vocab, self.legacy_cache = fn, vocab, legacy_cache
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, logits_to_keep=0):
        from transformers import DynamicCache
        from transformers.modeling_outputs import CausalLMOutputWithPast

        self.calls += 1
        b, n = input_ids.shape
        x = input_ids.to(torch.float32)[:, None, :, None]
        if self.legacy_cache:  # a tuple of (key, value) per layer, as some patched backends return
            if past_key_values is not None and not isinstance(past_key_values, tuple):
                # an empty Cache object counts as none (unsloth's _cache_as_legacy_tuple)
                assert past_key_values.get_seq_length() == 0
                past_key_values = None
            keys = x if past_key_values is None else torch.cat([past_key_values[0][0], x], dim=2)
            cache = ((keys, keys.clone()),)
        else:
            cache = past_key_values if past_key_values is not None else DynamicCache()
            keys, _ = cache.update(x, x.clone(), 0)
        total = keys.shape[2]
        mask = attention_mask if attention_mask is not None else torch.ones(b, total, dtype=torch.long)
        assert tuple(mask.shape) == (b, total), (tuple(mask.shape), b, total)
        first = n - logits_to_keep if logits_to_keep else 0
        logits = torch.zeros(b, n - first, self.vocab)
        for r in range(b):
            toks, seen_mask = keys[r, 0, :, 0].long().tolist(), mask[r].tolist()
            for q in range(first, n):
                col = total - n + q
                if not seen_mask[col]:
                    continue  # a padding position: nobody reads its output
                seen = tuple(t for t, a in zip(toks[:col + 1], seen_mask[:col + 1]) if a)
                if position_ids is not None:
                    assert int(position_ids[r, q]) == len(seen) - 1, "wrong position id"
                logits[r, q - first] = torch.as_tensor(self.fn(seen), dtype=torch.float32)
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache)


def random_fn(seed: int, scale: float = 2.0, end_bias: float = 2.5):
    """Logits drawn from a hash of the whole visible prefix (so every view and branch differs),
    leaning towards short well-formed answers: mostly answer symbols, a newline after some cells,
    the end after a newline (but every token keeps some probability)."""

    def fn(seen: tuple) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(np.asarray(seen, np.int64).tobytes())])
        logits = rng.normal(size=16) * scale
        logits[[TM.input[0], OUT_ID, TM.bos[0], TM.pad]] -= 3.0
        after_newline = seen[-1] == TM.newline
        logits[END_ID] += end_bias if after_newline else -1.0
        logits[TM.newline] += 0.0 if after_newline or seen[-1] == OUT_ID else 1.5
        return logits

    return fn


def tiny_llama(seed: int = 0, attn: str = "sdpa"):
    """A 2-layer random Llama over the compact vocabulary, with a head that makes short answers
    likely (scaled weights, a bias towards the end and newline tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      bos_token_id=TM.bos[0], eos_token_id=END_ID, pad_token_id=TM.pad,
                      tie_word_embeddings=False, attn_implementation=attn)
    model = LlamaForCausalLM(cfg).eval()
    head = torch.nn.Linear(32, 16, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight * 60)
        head.bias.copy_(torch.tensor([0.0] * 10 + [0.5, -4, -4, 2.0, -4, -4]))
    model.lm_head = head
    return model


def small_prompt(*cells: int) -> np.ndarray:
    return encode([], np.array([list(cells)], dtype=np.uint8), TM).ids


def brute_force(fn, prompt, max_new: int, threshold: float, *, grammar: bool, renormalize: bool = False, tm=TM):
    """Every answer-symbol sequence ending in the end token, of at most ``max_new`` tokens, with its
    exact logprob computed from ``fn`` directly; kept if above the threshold (and, with the grammar, if
    it parses). A prefix below the threshold is not expanded: log-probabilities only fall along a path.
    """
    out = {}

    def expand(seq: tuple, lp: float):
        logits = np.asarray(fn(tuple(int(t) for t in prompt) + seq), dtype=np.float64)
        if renormalize:
            logits = np.where(np.isin(np.arange(16), SYMBOLS), logits, -np.inf)
        logp = logits - np.logaddexp.reduce(logits)
        end = seq + (END_ID,)
        if lp + logp[END_ID] >= math.log(threshold) and (
                not grammar or isinstance(parse_answer(end, tm, require_end=True), np.ndarray)):
            out[end] = lp + logp[END_ID]
        if len(seq) + 2 <= max_new:
            for t in (t for t in SYMBOLS[:-1] if lp + logp[t] >= math.log(threshold)):
                expand(seq + (t,), lp + logp[t])

    expand((), 0.0)
    return out


def assert_same(got, expected, threshold, tol=1e-5):
    got = {tuple(c.ids): c.logprob for c in got}
    band = lambda lp: abs(lp - math.log(threshold)) < tol  # float32 vs float64 at the very edge
    assert {s for s in got if not band(got[s])} == {s for s in expected if not band(expected[s])}
    for s, lp in got.items():
        assert lp == pytest.approx(expected[s], abs=tol)


# --- exactness on the stand-in -------------------------------------------------------------------

@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.002, 0.3), grammar=st.booleans())
def test_dfs_returns_exactly_the_completions_above_threshold(seed, threshold, grammar):
    fn, prompt = random_fn(seed), small_prompt(1, 2)
    got = dfs(TableLM(fn), prompt, TM, threshold=threshold, max_new_tokens=5, grammar=grammar)
    assert_same(got, brute_force(fn, prompt, 5, threshold, grammar=grammar), threshold)
    assert [c.logprob for c in got] == sorted((c.logprob for c in got), reverse=True)


# the compact vocabulary with rows newline-separated (as NVARC writes them): the end closes the last row
SEPARATED = dataclasses.replace(TM, rows="separated")


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.002, 0.3))
def test_dfs_is_exact_with_separated_rows(seed, threshold):
    """Brute force with the separated parser: the search keeps exactly the completions it accepts,
    e.g. ``1 2 <E>`` and ``1 \\n 2 <E>``, never ``1 \\n <E>``."""
    fn = random_fn(seed, end_bias=0.0)
    prompt = encode([], np.array([[1, 2]], dtype=np.uint8), SEPARATED).ids
    got = dfs(TableLM(fn), prompt, SEPARATED, threshold=threshold, max_new_tokens=5)
    assert_same(got, brute_force(fn, prompt, 5, threshold, grammar=True, tm=SEPARATED), threshold)
    assert all(isinstance(parse_answer(c.ids, SEPARATED, require_end=True), np.ndarray) for c in got)


def test_legacy_tuple_caches_work_one_view_at_a_time():
    fn, prompts = random_fn(6), [small_prompt(4), small_prompt(1, 2)]
    got = search_prompts(TableLM(fn, legacy_cache=True), prompts, TM, threshold=0.004, max_new_tokens=6)
    for p, g in zip(prompts, got):
        assert_same(g, brute_force(fn, p, 6, 0.004, grammar=True), 0.004)
    assert sum(map(len, got)) >= 3


def test_dfs_finds_several_and_prunes_by_grammar():
    fn, prompt = random_fn(3), small_prompt(4)
    expected = brute_force(fn, prompt, 6, 0.004, grammar=True)
    assert len(expected) >= 3  # the check below is not vacuous
    model = TableLM(fn)
    assert_same(dfs(model, prompt, TM, threshold=0.004, max_new_tokens=6), expected, 0.004)
    # without the grammar the same completions come back among unparsable ones, at more cost
    calls, model.calls = model.calls, 0
    loose = dfs(model, prompt, TM, threshold=0.004, max_new_tokens=6, grammar=False)
    assert {tuple(c.ids) for c in loose} >= set(expected) and model.calls > calls


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.01, 0.5))
def test_renormalised_search_is_exact_over_answer_symbols(seed, threshold):
    # renormalised over the 12 answer symbols (no grammar): brute force renormalises the same way
    fn, prompt = random_fn(seed), small_prompt(7)
    got = dfs(TableLM(fn), prompt, TM, threshold=threshold, max_new_tokens=4, grammar=False, renormalize=True)
    assert_same(got, brute_force(fn, prompt, 4, threshold, grammar=False, renormalize=True), threshold)


def test_renormalised_search_with_grammar_only_gains():
    fn, prompt = random_fn(11), small_prompt(2)
    plain = {tuple(c.ids): c.logprob for c in dfs(TableLM(fn), prompt, TM, threshold=0.005, max_new_tokens=6)}
    renorm = {tuple(c.ids): c.logprob for c in dfs(TableLM(fn), prompt, TM, threshold=0.005, max_new_tokens=6,
                                                     renormalize=True)}
    assert plain and set(plain) <= set(renorm)
    assert all(renorm[s] >= lp - 1e-9 for s, lp in plain.items())
    assert any(renorm[s] > lp + 1e-3 for s, lp in plain.items())


def test_batched_views_equal_one_by_one_and_brute_force(monkeypatch):
    # different prompt lengths (left padding), views that finish at different times (rows leave
    # the batch), and column dropping forced on every step
    monkeypatch.setattr(search, "COMPACT_MIN_COLUMNS", 1)
    fn = random_fn(5)
    prompts = [small_prompt(1), small_prompt(2, 3, 4), small_prompt(5, 6), small_prompt(9, 9, 9, 9, 9)]
    model = TableLM(fn)
    batched = search_prompts(model, prompts, TM, threshold=0.003, max_new_tokens=6, batch=True)
    batched_calls, model.calls = model.calls, 0
    single = search_prompts(model, prompts, TM, threshold=0.003, max_new_tokens=6, batch=False)
    assert batched_calls < model.calls  # it did batch
    assert sum(len(b) for b in batched) >= 4
    for b, s, p in zip(batched, single, prompts):
        assert_same(b, brute_force(fn, p, 6, 0.003, grammar=True), 0.003)
        assert [(c.ids, round(c.logprob, 9)) for c in b] == [(c.ids, round(c.logprob, 9)) for c in s]


def test_batches_are_split_by_token_cap():
    assert search._groups([10, 10, 10, 50, 5], 40) == [[0, 1, 2], [3], [4]]
    assert search._groups([10, 10], 1) == [[0], [1]]


# --- greedy --------------------------------------------------------------------------------------

def argmax_path(fn, prompt, max_new: int) -> list[int]:
    seen, path = tuple(int(t) for t in prompt), []
    while len(path) < max_new and (not path or path[-1] != END_ID):
        logits = np.asarray(fn(seen))
        path.append(SYMBOLS[int(np.argmax(logits[SYMBOLS]))])  # argmax over answer symbols
        seen += (path[-1],)
    return path


def test_greedy_is_the_argmax_path_and_the_degenerate_search():
    fn, prompt = random_fn(3), small_prompt(3, 1)
    path = argmax_path(fn, prompt, 8)
    assert path[-1] == END_ID and path[0] == TM.newline  # ends; not a grid (no grammar here)
    got = greedy(TableLM(fn), prompt, TM, max_new_tokens=8, grammar=False)
    assert got is not None and got.ids == path
    logits = [np.asarray(fn(tuple(int(t) for t in prompt) + tuple(path[:i]))) for i in range(len(path))]
    assert got.logprob == pytest.approx(sum(l[t] - np.logaddexp.reduce(l) for l, t in zip(logits, path)), abs=1e-5)
    above_half = dfs(TableLM(fn), prompt, TM, threshold=0.5, max_new_tokens=8, grammar=False)
    assert len(above_half) <= 1 and (not above_half or above_half[0].ids == got.ids)
    # with the grammar the first newline is not allowed: another, well-formed answer
    ruled = greedy(TableLM(fn), prompt, TM, max_new_tokens=8)
    assert ruled is not None and isinstance(parse_answer(ruled.ids, TM, require_end=True), np.ndarray)


def test_greedy_gives_none_when_the_answer_does_not_end():
    fn, prompt = random_fn(4), small_prompt(3, 1)
    assert argmax_path(fn, prompt, 8)[-1] != END_ID
    assert greedy(TableLM(fn), prompt, TM, max_new_tokens=8, grammar=False) is None


# --- the cache on a real model -------------------------------------------------------------------

def teacher_forced_logprob(model, prompt, ids) -> float:
    seq = torch.tensor(np.concatenate([prompt, ids]))[None]
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
    return float(sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(ids)))




@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_search_matches_full_forward_passes(small_task, attn, monkeypatch):
    monkeypatch.setattr(search, "COMPACT_MIN_COLUMNS", 8)
    model = tiny_llama(attn=attn)
    task = small_task
    prompts = [encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids
               for a in (Augmentation(), Augmentation("rot90"), Augmentation("flipH", order=(1, 0)))]
    prompts[1] = prompts[1][3:]  # a different length, so the batch is padded
    stats = SearchStats()
    single = search_prompts(model, prompts, TM, threshold=0.005, max_new_tokens=12, batch=False, stats=stats)
    assert stats.tokens_fed > 3 * max(len(c.ids) for cs in single for c in cs)  # it branched
    batched = search_prompts(model, prompts, TM, threshold=0.005, max_new_tokens=12, batch=True)
    assert sum(len(cs) for cs in single) >= 4
    for p, s, b in zip(prompts, single, batched):
        assert [c.ids for c in s] == [c.ids for c in b]
        for cs, cb in zip(s, b):
            full = teacher_forced_logprob(model, p, cs.ids)
            assert cs.logprob == pytest.approx(full, abs=1e-4)
            assert cb.logprob == pytest.approx(full, abs=1e-4)


# --- the time limit ------------------------------------------------------------------------------

def calls_clock(monkeypatch, model) -> None:
    """The search's clock is the model's call count (so a deadline of 5.5 passes during call 6)."""
    monkeypatch.setattr(search, "time", SimpleNamespace(time=lambda: float(model.calls)))


def test_most_likely_child_first_so_a_cut_search_has_the_best(monkeypatch):
    # the clock is the model's call count: stopped right after the greedy path has been fed, the
    # search has already found the greedy answer
    fn, prompt = random_fn(3), small_prompt(3, 1)
    best = greedy(TableLM(fn), prompt, TM, max_new_tokens=8)
    model = TableLM(fn)
    calls_clock(monkeypatch, model)
    got = dfs(model, prompt, TM, threshold=1e-4, max_new_tokens=8, deadline=len(best.ids) + 0.5)
    assert best.ids in [c.ids for c in got] and model.calls == len(best.ids) + 1


def test_deadline_in_the_past_runs_nothing():
    model, stats = TableLM(random_fn(0)), SearchStats()
    got = search_prompts(model, [small_prompt(1)] * 3, TM, threshold=0.01, deadline=time.time() - 1, stats=stats)
    assert got == [[], [], []] and model.calls == 0 and stats.timed_out


@pytest.mark.parametrize("batch", [False, True])
def test_deadline_stops_a_slow_model(batch, monkeypatch):
    # a search that would need hundreds of steps stops after the step during which the deadline passed
    model, stats = TableLM(random_fn(1, end_bias=0.0, scale=0.5)), SearchStats()
    calls_clock(monkeypatch, model)
    search_prompts(model, [small_prompt(1), small_prompt(2)], TM, threshold=1e-4, batch=batch,
                   deadline=5.5, stats=stats)
    assert stats.timed_out and model.calls == 6


@pytest.mark.parametrize("deadline, calls", [(None, 5), (100.0, 5), (2.5, 3)])
def test_config_time_limit_caps_the_call(small_task, monkeypatch, deadline, calls):
    # the call's own limit (4.5 from its start, at clock 0) caps it on top of the caller's deadline
    model, stats = TableLM(random_fn(1, end_bias=0.0, scale=0.5)), SearchStats()
    calls_clock(monkeypatch, model)
    cfg = SearchConfig(threshold=1e-4, time_limit_s=4.5)
    views = [(Augmentation(), encode(small_task.train, small_task.test_inputs[0], TM).ids)]
    search_test_input(model, small_task, 0, TM, views, cfg, deadline=deadline, stats=stats)
    assert stats.timed_out and model.calls == calls


# --- one test input under augmentations ----------------------------------------------------------

def copy_query_fn(confidence: float = 9.0):
    """Answers the query grid itself (an identity task), with the end token after it: the answer
    is the same in every view's own frame, so every view should find the task's test input."""

    def fn(seen: tuple) -> np.ndarray:
        o = len(seen) - 1 - seen[::-1].index(OUT_ID)
        i = o - 1 - seen[o - 1::-1].index(TM.input[0])
        query, answer = seen[i + 1:o], seen[o + 1:]
        logits = np.zeros(16)
        logits[query[len(answer)] if len(answer) < len(query) else END_ID] = confidence
        return logits

    return fn


def test_search_test_input_inverts_and_merges(small_task):
    task = small_task
    augs = [Augmentation(), Augmentation("rot90", (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)),
            Augmentation("transpose", order=(1, 0)), Augmentation("flipV")]
    views = [(a, encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids) for a in augs]
    for batch in (False, True):
        cands = search_test_input(TableLM(copy_query_fn()), task, 0, TM, views,
                                  SearchConfig(threshold=0.05, batch_views=batch))
        assert len(cands) == 1 and cands[0].hits == 4
        np.testing.assert_array_equal(cands[0].grid, task.test_inputs[0])
        assert [k for k, _ in cands[0].found] == [a.key for a in augs]
        obj = json.loads(json.dumps(cands[0].to_json()))
        assert obj["grid"] == task.test_inputs[0].tolist() and obj["hits"] == 4
        assert obj["search_logprob"] == pytest.approx(cands[0].search_logprob)


def test_search_test_input_keeps_distinct_grids_and_caps_per_view(small_task):
    task = small_task
    views = [(a, encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids)
             for a in (Augmentation(), Augmentation("rot180"))]
    cfg = SearchConfig(threshold=0.001, max_candidates_per_view=2)
    cands = search_test_input(TableLM(copy_query_fn(confidence=5.5)), task, 0, TM, views, cfg)
    assert 2 <= len(cands) <= 4 and sum(c.hits for c in cands) <= 4
    assert len({search.grid_key(c.grid) for c in cands}) == len(cands)
    assert cands == sorted(cands, key=lambda c: (-c.hits, -c.search_logprob))


def test_bad_input_is_reported_with_the_task(small_task):
    with pytest.raises(ValueError, match=small_task.id):
        search_test_input(TableLM(random_fn(0)), small_task, 5, TM, [], SearchConfig())
    bad = [(Augmentation(), np.array([TM.bos[0], 1, 2]))]
    with pytest.raises(ValueError, match=f"{small_task.id}.*output marker"):
        search_test_input(TableLM(random_fn(0)), small_task, 0, TM, bad, SearchConfig())


def test_search_config_checks():
    with pytest.raises(ValueError, match="threshold.*n_augmentations|n_augmentations.*threshold"):
        SearchConfig(threshold=0.0, n_augmentations=0)
    with pytest.raises(ValueError, match="time_limit_s"):
        SearchConfig(time_limit_s=0)
