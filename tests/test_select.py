"""Selection: cached batched likelihoods against full forward passes, the product-of-experts score
and its ranking, hierarchical voting, deadlines, the fallbacks of choose_attempts, and the whole
search -> score -> choose path on the tiny model and a real task."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from arcttt import select
from arcttt.augment import Augmentation, view_augmentations
from arcttt.data import parse_grid
from arcttt.formats import answer_ids, encode
from arcttt.search import Candidate, SearchConfig, search_session
from arcttt.select import (ScoredCandidate, SelectConfig, answer_logprobs, choose_attempts,
                           hierarchical_votes, score_candidates, score_session)
from helpers import TM
# tests/ is on sys.path under pytest's default (prepend) import mode
from test_search import TableLM, random_fn, teacher_forced_logprob, tiny_llama


def grids():
    return [np.array([[3]], np.uint8), np.array([[1, 2, 0], [0, 4, 5]], np.uint8),
            np.arange(9, dtype=np.uint8).reshape(3, 3), np.array([[7], [7], [1], [0]], np.uint8)]


def views_of(task, augs):
    return [(a, encode(a.pairs(task.train), a.grid(task.test_inputs[0]), TM).ids) for a in augs]


AUGS = [Augmentation(), Augmentation("rot90", (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)), Augmentation("flipH", order=(1, 0))]


# --- the cached, batched likelihood --------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_answer_logprobs_equal_full_forward_passes(small_task, batch_size):
    model = tiny_llama()
    prompt = encode(small_task.train, small_task.test_inputs[0], TM).ids
    answers = [answer_ids(g, TM) for g in grids()]  # different lengths: right padding in a batch
    got = answer_logprobs(model, prompt, answers, batch_size=batch_size)
    for a, lp in zip(answers, got):
        assert lp == pytest.approx(teacher_forced_logprob(model, prompt, a), abs=1e-4)


def test_answer_logprobs_on_the_peft_session(small_task, tiny_session):
    prompt = encode(small_task.train, small_task.test_inputs[0], TM).ids
    answers = [answer_ids(g, tiny_session.token_map) for g in grids()[:3]]
    got = answer_logprobs(tiny_session.model, prompt, answers, batch_size=2, device=tiny_session.device)
    for a, lp in zip(answers, got):
        assert lp == pytest.approx(teacher_forced_logprob(tiny_session.model, prompt, a), abs=1e-4)


# --- the score and its ranking -------------------------------------------------------------------

def direct_logprob(fn, prompt, ids) -> float:
    seen, total = tuple(int(t) for t in prompt), 0.0
    for t in ids:
        logits = np.asarray(fn(seen), dtype=np.float64)
        total += logits[t] - np.logaddexp.reduce(logits)
        seen += (int(t),)
    return total


def candidates_with_hits(hits: list[int]) -> list[Candidate]:
    return [Candidate(g, [(AUGS[k % 3].key, -1.0 - 0.1 * j) for k in range(h)]) for j, (g, h) in enumerate(zip(grids(), hits))]


@pytest.mark.parametrize("hits_weight", [0.0, 0.7, 500.0])
def test_poe_score_is_the_sum_over_views_plus_hits_bonus(small_task, hits_weight):
    fn = random_fn(2)
    views = views_of(small_task, AUGS)
    cands = candidates_with_hits([1, 3, 2, 1])
    cfg = SelectConfig(n_views=3, hits_weight=hits_weight, batch_size=3)
    scored = score_candidates(TableLM(fn), small_task, 0, cands, views, TM, cfg)
    expected = {id(c): sum(direct_logprob(fn, p, answer_ids(a.grid(c.grid), TM)) for a, p in views)
                + hits_weight * math.log(c.hits) for c in cands}
    assert [s.score for s in scored] == pytest.approx(sorted(expected.values(), reverse=True), abs=1e-4)
    assert [id(s.candidate) for s in scored] == sorted(expected, key=expected.get, reverse=True)
    assert all(s.views == [a.key for a in AUGS] and len(s.view_logprobs) == 3 for s in scored)
    if hits_weight == 500.0:  # the bonus dominates: most-found first
        assert [s.candidate.hits for s in scored][:2] == [3, 2]


def test_legacy_tuple_caches_score_the_same(small_task):
    fn, views, cands = random_fn(2), views_of(small_task, AUGS[:2]), candidates_with_hits([1, 3, 2, 1])
    cfg = SelectConfig(n_views=2, batch_size=3)
    new = score_candidates(TableLM(fn), small_task, 0, cands, views, TM, cfg)
    old = score_candidates(TableLM(fn, legacy_cache=True), small_task, 0, cands, views, TM, cfg)
    assert [s.score for s in old] == pytest.approx([s.score for s in new], abs=1e-5)


def test_weights_change_the_order(small_task):
    # not vacuous: pure likelihood and hits-dominated orders differ on these candidates
    fn, views, cands = random_fn(2), views_of(small_task, AUGS), candidates_with_hits([1, 3, 2, 1])
    orders = [[id(s.candidate) for s in score_candidates(TableLM(fn), small_task, 0, cands, views, TM,
                                                         SelectConfig(n_views=3, hits_weight=w))] for w in (0.0, 500.0)]
    assert orders[0] != orders[1]


def test_a_past_deadline_ranks_by_search_logprob_and_hits(small_task):
    model = TableLM(random_fn(2))
    cands = candidates_with_hits([1, 3, 2, 1])
    scored = score_candidates(model, small_task, 0, cands, views_of(small_task, AUGS), TM,
                              SelectConfig(hits_weight=1.0), deadline=0.0)
    assert model.calls == 0 and all(s.view_logprobs == [] for s in scored)
    expected = sorted((c.search_logprob + math.log(c.hits) for c in cands), reverse=True)
    assert [s.score for s in scored] == pytest.approx(expected)


def test_a_deadline_mid_view_keeps_only_whole_views(small_task, monkeypatch):
    # clock = model calls; a view costs 2 calls (prompt, one batch): the second view is cut
    model = TableLM(random_fn(2))
    monkeypatch.setattr(select, "time", SimpleNamespace(time=lambda: float(model.calls)))
    scored = score_candidates(model, small_task, 0, candidates_with_hits([1, 2]), views_of(small_task, AUGS), TM,
                              SelectConfig(batch_size=8), deadline=2.5)
    assert model.calls == 3
    assert all(len(s.view_logprobs) == 1 and s.views == [AUGS[0].key] for s in scored)


def test_no_candidates_no_model_calls(small_task):
    model = TableLM(random_fn(0))
    assert score_candidates(model, small_task, 0, [], views_of(small_task, AUGS), TM, SelectConfig()) == []
    assert model.calls == 0


# --- voting --------------------------------------------------------------------------------------

def test_hierarchical_votes_and_ranking():
    g = grids()
    a = Candidate(g[0], [("id", -3.0), ("id/c0213456789", -2.0), ("rot90", -5.0)])
    b = Candidate(g[1], [("id/c0312456789", -1.0), ("rot90/c0213456789", -4.0), ("flipH", -0.5)])
    c = Candidate(g[2], [("flipH/c0213456789", -0.7)])
    d = Candidate(g[3], [("transpose", -9.0)])
    # top 1 per group: id -> a (found twice), rot90 -> b (better logprob), flipH -> b, transpose -> d
    assert hierarchical_votes([a, b, c, d], top_k=1) == [1, 2, 0, 1]
    # top 2 per group: id -> a, b; rot90 -> a, b; flipH -> b, c; transpose -> d
    assert hierarchical_votes([a, b, c, d], top_k=2) == [2, 3, 1, 1]
    ranked = score_candidates(None, SimpleNamespace(id="t", n_test=1), 0, [a, b, c, d], [], TM,
                              SelectConfig(method="vote", n_views=0, vote_top_k=1, hits_weight=0.0))
    # b (2 votes), then a and d (1 vote each: a's logprob -2.0 beats d's -9.0), then c
    assert [s.candidate for s in ranked] == [b, a, d, c]
    assert [s.votes for s in ranked] == [2, 1, 1, 0]


def test_vote_ties_are_broken_by_the_augmented_likelihood(small_task):
    fn = random_fn(5)
    g = grids()
    cands = [Candidate(g[0], [("id", -1.0)]), Candidate(g[1], [("rot90", -1.0)])]  # one vote each
    views = views_of(small_task, AUGS)
    scored = score_candidates(TableLM(fn), small_task, 0, cands, views, TM, SelectConfig(method="vote", n_views=3))
    lik = [sum(direct_logprob(fn, p, answer_ids(a.grid(c.grid), TM)) for a, p in views) for c in cands]
    assert [s.votes for s in scored] == [1, 1]
    assert scored[0].candidate is cands[int(np.argmax(lik))]


# --- attempts ------------------------------------------------------------------------------------

def test_choose_attempts_falls_back_to_the_default():
    default = [[0, 0], [0, 0]]
    a1, a2 = choose_attempts([], default)
    assert a1.tolist() == default and a2.tolist() == default and a1.dtype == np.uint8
    one = ScoredCandidate(Candidate(grids()[0], [("id", -1.0)]), -1.0, rank=(-1.0,))
    a1, a2 = choose_attempts([one], default)
    assert a1.tolist() == [[3]] and a2.tolist() == default


def test_choose_attempts_takes_the_two_best():
    cs = [ScoredCandidate(Candidate(g, [("id", -1.0)]), float(s), rank=(float(s),)) for g, s in zip(grids(), [-5, -1, -3, -9])]
    a1, a2 = choose_attempts(cs, [[0]])
    assert a1.tolist() == grids()[1].tolist() and a2.tolist() == grids()[2].tolist()


def test_scored_candidate_json_has_python_numbers(small_task):
    scored = score_candidates(TableLM(random_fn(1)), small_task, 0, candidates_with_hits([2, 1]),
                              views_of(small_task, AUGS[:2]), TM, SelectConfig(n_views=2))
    obj = json.loads(json.dumps([s.to_json() for s in scored]))
    assert {"grid", "hits", "search_logprob", "score", "votes", "view_logprobs", "found"} <= obj[0].keys()
    assert obj[0]["score"] == pytest.approx(scored[0].score) and len(obj[0]["view_logprobs"]) == 2


def test_select_config_checks():
    with pytest.raises(ValueError, match="batch_size"):
        SelectConfig(batch_size=0)
    with pytest.raises(ValueError, match="method"):
        SelectConfig(method="best")


# --- end to end on the tiny model ----------------------------------------------------------------

def test_search_score_choose_on_the_tiny_model(small_task, tiny_session):
    from arcttt.ttt_data import test_prompts

    task, tm = small_task, tiny_session.token_map
    search_views = test_prompts(task, 0, tm, view_augmentations(task, 0, 2, keep_background=True, seed=0), 4096)
    # greedy: the random model's answers always parse (the grammar ends them by 30 x 30)
    cands = search_session(tiny_session, task, 0, search_views, SearchConfig(greedy=True, n_augmentations=2))
    assert 1 <= len(cands) <= 2
    score_views = test_prompts(task, 0, tm, view_augmentations(task, 0, 2, keep_background=True, seed=1), 4096)
    scored = score_session(tiny_session, task, 0, cands, score_views, SelectConfig(n_views=2))
    assert all(len(s.view_logprobs) == 2 and math.isfinite(s.score) for s in scored)
    attempts = choose_attempts(scored, default=task.test_inputs[0])
    for grid in attempts:
        parse_grid(grid.tolist())  # a valid ARC grid
    assert attempts[0].tolist() == scored[0].grid.tolist()


def test_choose_attempts_fills_in_with_distinct_defaults():
    d1, d2 = [[1]], [[2]]
    assert [a.tolist() for a in choose_attempts([], d1, d2)] == [d1, d2]
    same_as_d1 = ScoredCandidate(Candidate(np.array([[1]], dtype=np.uint8), [("id", -1.0)]), -1.0, rank=(-1.0,))
    assert [a.tolist() for a in choose_attempts([same_as_d1], d1, d2)] == [d1, d2]
    other = ScoredCandidate(Candidate(np.array([[5]], dtype=np.uint8), [("id", -1.0)]), -1.0, rank=(-1.0,))
    assert [a.tolist() for a in choose_attempts([other], d1, d2)] == [[[5]], d1]


def test_nvarc_score_is_hits_minus_mean_nll():
    """NVARC's choice, by hand: hits - mean NLL over the views (poe: sum of logprobs + log hits)."""
    from arcttt.select import candidate_score

    a = Candidate(np.zeros((1, 1), np.uint8), [("id", -0.5), ("rot90", -0.7), ("flipH", -0.9)])  # 3 hits
    b = Candidate(np.ones((1, 1), np.uint8), [("id", -0.1)])                                   # 1 hit
    nvarc, poe = SelectConfig(method="nvarc"), SelectConfig(method="poe")
    assert candidate_score(a, [-1.0, -2.0], nvarc) == pytest.approx(3 - 1.5)
    assert candidate_score(b, [-0.2, -0.4], nvarc) == pytest.approx(1 - 0.3)
    assert candidate_score(a, [-1.0, -2.0], poe) == pytest.approx(-3.0 + math.log(3))
    assert candidate_score(a, [], nvarc) == pytest.approx(3 - 0.5)  # no view scored: the search's best
    ranked = select.rank([ScoredCandidate(b, candidate_score(b, [-0.2, -0.4], nvarc)),
                   ScoredCandidate(a, candidate_score(a, [-1.0, -2.0], nvarc))], nvarc)
    assert [s.candidate for s in ranked] == [a, b]
    with pytest.raises(ValueError, match="'poe', 'vote' or 'nvarc'"):
        SelectConfig(method="best")
