"""The draft-verified search (issue #22): given a guess at the answer, the search returns the same
completions with the same probabilities as without one -- against plain search and brute-force
enumeration, on both grammars, both caches, one view at a time and in lock-step, with drafts right,
wrong at their first, middle and last token, too long, and of another spelling -- and makes the
model calls counted by hand. The draft walk alone (no model) is tests/test_tree.py.

Probabilities from one multi-token forward and from one-token forwards may differ by float
rounding (on the real Llama below; the table stand-in computes each position alone, so it is exact):
a completion within ``tol`` of the threshold may be kept by one and not the other, so sets are
compared outside that band and log-probabilities within ``tol`` (``test_search.assert_same``)."""

from __future__ import annotations

import numpy as np
import pytest

from arcttt import search
from arcttt.augment import Augmentation
from arcttt.data import Pair, Task
from arcttt.formats import answer_ids, encode, parse_answer
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.search import SearchConfig, SearchStats, search_prompts, search_test_input
from helpers import TM
from test_search import (END_ID, TableLM, assert_same, brute_force, copy_query_fn, random_fn, small_prompt,
                         teacher_forced_logprob, tiny_llama)

G = lambda rows: np.array(rows, dtype=np.uint8)  # noqa: E731


def variants(ids) -> dict[str, list[int]]:
    """A right draft (an answer's token ids, end included) and the same wrong at its first, middle
    and last token (before the end), one cut short and one too long."""
    ids = [int(t) for t in ids]
    body = len(ids) - 1

    def wrong(at: int) -> list[int]:
        out = list(ids)
        out[at] = TM.digits[(TM.digits.index(out[at]) + 1) % 10] if out[at] in TM.digits else TM.digits[3]
        return out

    return {"right": ids, "first": wrong(0), "middle": wrong(body // 2), "last": wrong(body - 1),
            "short": ids[:max(1, body // 2)], "long": ids[:-1] + [TM.digits[1]] * 9 + [END_ID]}


# --- exact against plain search and brute force: the digit grammar ----------------------------------

@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("preallocate", [True, False])
@pytest.mark.parametrize("seed", [3, 5])
def test_drafts_change_nothing_but_the_calls_digits(seed, preallocate, batch, monkeypatch):
    monkeypatch.setattr(search, "COMPACT_MIN_COLUMNS", 1)  # column dropping on every lock-step step
    fn, threshold, max_new = random_fn(seed), 0.003, 6
    prompts = [small_prompt(1), small_prompt(2, 3, 4), small_prompt(5, 6)]
    model = TableLM(fn)
    plain = search_prompts(model, prompts, TM, threshold=threshold, max_new_tokens=max_new, batch=batch,
                           preallocate=preallocate)
    plain_calls = model.calls
    for p, got in zip(prompts, plain):
        assert_same(got, brute_force(fn, p, max_new, threshold, grammar=True), threshold)
    assert sum(map(len, plain)) >= 4
    best = [c[0].ids for c in plain]
    for name in variants(best[0]):
        model.calls = 0
        drafts = [variants(b)[name] for b in best]
        stats = SearchStats()
        got = search_prompts(model, prompts, TM, threshold=threshold, max_new_tokens=max_new, batch=batch,
                             preallocate=preallocate, drafts=[[d] for d in drafts], stats=stats)
        for g, s in zip(got, plain):
            assert_same(g, {tuple(c.ids): c.logprob for c in s}, threshold, tol=1e-6)
        assert model.calls <= plain_calls, name
        if name == "right":
            assert model.calls < plain_calls and stats.verified > 0
    # several drafts a view: every completion (least likely first), and a wrong one before the right one
    for guesses in ([[c.ids for c in reversed(cs)] for cs in plain],
                    [[variants(b)["middle"], b] for b in best]):
        model.calls = 0
        got = search_prompts(model, prompts, TM, threshold=threshold, max_new_tokens=max_new, batch=batch,
                             preallocate=preallocate, drafts=guesses)
        for g, s in zip(got, plain):
            assert_same(g, {tuple(c.ids): c.logprob for c in s}, threshold, tol=1e-6)
        # in lock-step a step waits for the slowest view, so a saving in another view need not show
        assert model.calls <= plain_calls if batch else model.calls < plain_calls


def copy_answer(task: Task) -> np.ndarray:
    return answer_ids(task.test_inputs[0], TM)


@pytest.mark.parametrize("preallocate", [True, False])
@pytest.mark.parametrize("side, right_calls", [(2, 2), (6, 3)])
def test_the_calls_counted_by_hand(preallocate, side, right_calls):
    """One confident answer of L tokens (the end included): plain search makes L calls (the prefill,
    then every token but the end). A right draft: the prefill, then one call at the first token
    verifying the next 32 (``DRAFT_CHUNK``), then one verifying as many again: a 2 x 2 answer
    (L = 7) costs 2 calls, a 6 x 6 one (L = 43: 1 + 32 symbols, then the other 10) 3. A draft wrong
    at token j (j >= 1, L <= 33): 2 + (L - 1 - j), the prefill, the call verifying the j right
    tokens, then one a token; wrong at the first token it is not taken: L."""
    query = np.arange(side * side).reshape(side, side) % 10
    task = Task("t", (Pair(G([[1, 2], [3, 4]]), G([[1, 2], [3, 4]])),), (G(query),), None)
    prompt = encode(task.train, task.test_inputs[0], TM).ids
    truth = copy_answer(task).tolist()
    L = len(truth)
    cases = [(None, L), (truth, right_calls), (variants(truth)["first"], L)]
    if L <= 33:
        cases += [(variants(truth)[k], 2 + (L - 1 - j)) for k, j in (("middle", (L - 1) // 2), ("last", L - 2))]
    model = TableLM(copy_query_fn())
    for draft, calls in cases:
        model.calls = 0
        got = search_prompts(model, [prompt], TM, threshold=0.05, drafts=[[draft] if draft else None], preallocate=preallocate)[0]
        assert [c.ids for c in got] == [truth] and model.calls == calls, (draft, model.calls, calls)


# --- the template grammar: several spellings of one answer --------------------------------------------

@pytest.mark.parametrize("fmt, max_new", [("mit", 7), ("omni-arc", 16)])
@pytest.mark.parametrize("batch", [False, True])
def test_drafts_change_nothing_template_formats(fmt, max_new, batch):
    from test_template_formats import brute_force as template_brute_force
    from test_template_formats import steering_fn

    tm = token_map_from_tokenizer(fmt, build_tokenizer(fmt))
    tok = tm.tokenizer
    prompt = encode([Pair(G([[1]]), G([[2]]))], G([[3]]), tm).ids
    prompts = [prompt, prompt[1:]]
    threshold = 0.002
    expected = template_brute_force(tm, steering_fn(tm, 0, len(prompt)), prompt, max_new, threshold)
    model = TableLM(steering_fn(tm, 0, len(prompt)), vocab=len(tok.vocab()))
    plain = search_prompts(model, prompts, tm, threshold=threshold, max_new_tokens=max_new, batch=batch)
    assert_same(plain[0], expected, threshold)
    # a grid of several spellings among the completions, so some draft is not the path the search takes first
    grids = [parse_answer(c.ids, tm, require_end=True) for c in plain[0]]
    assert len({g.tobytes() + bytes(g.shape) for g in grids}) < len(grids)
    canonical = tm.answer_ids(grids[0]).tolist()
    other = next(c.ids for c, g in zip(plain[0], grids) if np.array_equal(g, grids[0]) and c.ids != canonical)
    text = tm.writer.answer_text(grids[0])
    cut = len(text) // 2
    wrong_middle = tok.encode(text[:cut]) + tok.encode("9" if text[cut] != "9" else "8") + tok.encode(text[cut + 1:])
    for draft in (canonical, other, wrong_middle + list(tm.end), [tm.end[0]], canonical[:1]):
        model.calls = 0
        got = search_prompts(model, prompts, tm, threshold=threshold, max_new_tokens=max_new, batch=batch,
                             drafts=[[draft], [draft]])
        for g, s in zip(got, plain):
            assert_same(g, {tuple(c.ids): c.logprob for c in s}, threshold, tol=1e-6)


# --- a real model: multi-token forwards against one-token forwards --------------------------------------

@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("preallocate", [True, False])
def test_drafts_on_a_real_llama(small_task, batch, preallocate):
    model, task = tiny_llama(), small_task
    prompts = [encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids
               for a in (Augmentation(), Augmentation("rot90"), Augmentation("flipH", order=(1, 0)))]
    prompts[1] = prompts[1][3:]  # a different length, so the batch is padded
    kw = dict(threshold=0.005, max_new_tokens=12, batch=batch, preallocate=preallocate)
    plain_stats, draft_stats = SearchStats(), SearchStats()
    plain = search_prompts(model, prompts, TM, stats=plain_stats, **kw)
    assert sum(map(len, plain)) >= 4
    for name in ("right", "middle"):
        drafts = [variants(cs[0].ids)[name] if cs else None for cs in plain]
        got = search_prompts(model, prompts, TM, drafts=[[d] if d else None for d in drafts], stats=draft_stats, **kw)
        for p, g, s in zip(prompts, got, plain):
            assert_same(g, {tuple(c.ids): c.logprob for c in s}, 0.005, tol=1e-4)
            for c in g:
                assert c.logprob == pytest.approx(teacher_forced_logprob(model, p, c.ids), abs=1e-4)
    assert draft_stats.verified > 0 and draft_stats.forwards < 2 * plain_stats.forwards


# --- one test input: the drafts come from earlier views ----------------------------------------------

_AUGS = [Augmentation(), Augmentation("rot90", (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)),
         Augmentation("transpose", order=(1, 0)), Augmentation("flipV")]


def _two_tasks_four_views(arc1_train):
    """The smallest task whose demonstrations keep their shapes and the smallest whose do not, each
    with its test input's prompt under four views; and the shape-keeping ones."""
    keeps = [t for t in arc1_train if all(p.input.shape == p.output.shape for p in t.train)]
    changes = [t for t in arc1_train if any(p.input.shape != p.output.shape for p in t.train)]
    for task in (min(keeps, key=lambda t: t.cells()), min(changes, key=lambda t: t.cells())):
        yield task, [(a, encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids) for a in _AUGS], keeps


@pytest.mark.parametrize("batch", [False, True])
def test_search_test_input_same_candidates_fewer_calls(arc1_train, batch):
    """An unsure identity stand-in (hundreds of completions above the threshold) under four views,
    on a task whose demonstrations keep their shapes (the first view's draft: the test input) and one
    whose do not (no draft for it): the same candidates, found in the same views, with the same
    probabilities, with drafts and without."""
    for task, views, keeps in _two_tasks_four_views(arc1_train):
        got = {}
        for draft in (False, True):
            model, stats = TableLM(copy_query_fn(confidence=5.5)), SearchStats()
            cands = search_test_input(model, task, 0, TM, views,
                                      SearchConfig(threshold=0.001, batch_views=batch, draft=draft), stats=stats)
            got[draft] = (cands, stats)
        (plain, ps), (drafted, ds) = got[False], got[True]
        assert len(plain) >= 2  # near misses too, not one answer alone
        assert [(search.grid_key(c.grid), [k for k, _ in c.found]) for c in plain] == \
            [(search.grid_key(c.grid), [k for k, _ in c.found]) for c in drafted]
        for a, b in zip(plain, drafted):
            assert [lp for _, lp in a.found] == pytest.approx([lp for _, lp in b.found], abs=1e-6)
        assert ps.draft_fed == ps.verified == 0 and (batch or ps.tokens_fed == ps.forwards - 4)  # one token a call
        assert ds.forwards <= ps.forwards and (ds.verified > 0) == (task in keeps or not batch)


@pytest.mark.parametrize("batch", [False, True])
def test_search_test_input_calls_counted_by_hand(arc1_train, batch, monkeypatch):
    """One confident answer a view, of L_v tokens in view v's frame. Plain: sum_v L_v calls one view
    at a time, max_v L_v in lock-step (the prefill, then a step a token but the end). Drafts (verified
    whole in one call here) one by one: the first view costs 2 calls when its draft, the test input,
    is its answer (every demonstration keeps its shape, and the stand-in copies) else L_0; each later
    view 2 (the first's answer, in its frame). In lock-step every view gets the test input only: 2
    calls, or max_v L_v."""
    monkeypatch.setattr(search, "DRAFT_CHUNK", 10_000)
    for task, views, keeps in _two_tasks_four_views(arc1_train):
        lens = [len(answer_ids(a.grid(task.test_inputs[0]), TM)) for a in _AUGS]
        first = 2 if task in keeps else lens[0]
        expected = (max(lens), 2 if task in keeps else max(lens)) if batch else (sum(lens), first + 6)
        calls = []
        for draft in (False, True):
            stats = SearchStats()
            cands = search_test_input(TableLM(copy_query_fn()), task, 0, TM, views,
                                      SearchConfig(threshold=0.05, batch_views=batch, draft=draft), stats=stats)
            assert len(cands) == 1 and cands[0].hits == 4
            calls.append(stats.forwards)
        assert tuple(calls) == expected, (task.id, calls, expected)
