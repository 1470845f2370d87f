"""Choosing the two attempts among a test input's candidates.

Scoring (:func:`score_candidates`): every distinct candidate is scored by its teacher-forced
log-likelihood under M augmented views of the task: in a view, the candidate is augmented like the
view, and its answer tokens (grid rows, newlines and the whole end marker) are scored after the
view's prompt, by a softmax over the whole vocabulary (like the search, no renormalisation). The
views' log-likelihoods are summed -- a product of experts, each view one expert -- and a bonus of
``hits_weight * log(hits)`` rewards answers the search found under many views::

    score(c) = sum_v log p(answer_v(c) | prompt_v) + hits_weight * log(hits(c))

Per view, the prompt is run once (or not at all, when the search kept its cache) and its key/value
cache is expanded across a batch of candidates, which continue from it (only the answers are
computed per candidate); the batch is capped by ``max_cache_bytes``. Views are scored whole, in
turn, so at every moment all candidates have been scored on the same views; if the deadline passes,
the ranking uses the views scored so far, or, with none, the search's own logprob in place of the
sum (``score = search_logprob + hits_weight * log(hits)``).

``method="nvarc"`` scores as NVARC does: the hits count minus the *mean* negative log-likelihood
over the views (``score = hits_weight * hits + mean_v log p``).

Ranking: ``method="poe"`` and ``"nvarc"`` rank by the score. ``method="vote"`` is MIT-style hierarchical voting:
the views that found candidates are grouped by their symmetry; within a group, candidates are
ranked by how many of the group's views found them (then by their best search logprob), and the
group's top ``vote_top_k`` each get one vote; candidates are ranked by votes across groups, ties
broken by the likelihood score.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch

from arcttt.augment import Augmentation
from arcttt.backends import backend_of
from arcttt.data import Task
from arcttt.formats import TokenMap, answer_ids
from arcttt.forward import inference, last_logits_kwargs, model_device, positions
from arcttt.kvcache import PromptCaches, SlabCache, cache_bytes, new_cache, rows_within
from arcttt.search import Candidate, checked_views


@dataclass
class SelectConfig:
    """How a test input's candidates are ranked into two attempts."""

    method: Literal["poe", "vote", "nvarc"] = "poe"
    """poe: augmented likelihood (product of experts) + hits bonus; vote: hierarchical voting;
    nvarc: hits minus the mean NLL over the views."""
    n_views: int = 8
    """Augmented views each candidate is scored under (0: no scoring, rank by the search's logprob)."""
    hits_weight: float = 1.0
    """Weight of log(hits) in the score (hits: views whose search found the candidate)."""
    keep_background: bool = True
    """Colour permutations of the scoring views keep colour 0 in place."""
    batch_size: int = 8
    """Candidates scored together on one view (lower it for big vocabularies: logits are batch x answer x vocab)."""
    max_cache_bytes: int | None = 4 * 2**30
    """Memory for scoring's key/value caches: fewer than ``batch_size`` candidates are scored at once
    when their caches (the prompt's, measured after its prefill, plus the answer) and logits would
    pass it; the prompt caches the search keeps for scoring stay under it too. None: no cap."""
    vote_top_k: int = 3
    """Voting: how many candidates of each augmentation group get a vote."""
    keep_candidates: int = 8
    """How many ranked candidates a task's result file records."""
    seed: int = 1
    """Seed of the scoring views' augmentations."""

    def __post_init__(self):
        errors = []
        if self.method not in ("poe", "vote", "nvarc"):
            errors.append(f"method must be 'poe', 'vote' or 'nvarc', got {self.method!r}")
        if self.n_views < 0:
            errors.append(f"n_views must be >= 0, got {self.n_views}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_cache_bytes is not None and self.max_cache_bytes < 1:
            errors.append(f"max_cache_bytes must be >= 1 or None, got {self.max_cache_bytes}")
        if self.vote_top_k < 1:
            errors.append(f"vote_top_k must be >= 1, got {self.vote_top_k}")
        if self.keep_candidates < 0:
            errors.append(f"keep_candidates must be >= 0, got {self.keep_candidates}")
        if not math.isfinite(self.hits_weight):
            errors.append(f"hits_weight must be finite, got {self.hits_weight}")
        if errors:
            raise ValueError("; ".join(errors))


@dataclass
class ScoredCandidate:
    """A candidate with its score, the log-likelihoods it was scored with (one per view, in
    ``views`` order) and its votes."""

    candidate: Candidate
    score: float
    view_logprobs: list[float] = field(default_factory=list)
    views: list[str] = field(default_factory=list)   # augmentation keys of the scored views
    votes: int = 0
    rank: tuple = ()                                  # the sort key (larger ranks first)

    @property
    def grid(self) -> np.ndarray:
        return self.candidate.grid

    def to_json(self) -> dict:
        return {**self.candidate.to_json(score=self.score), "votes": self.votes,
                "view_logprobs": [float(x) for x in self.view_logprobs]}


# --- likelihood under augmented views -----------------------------------------------------------

def answer_logprobs(model: torch.nn.Module, prompt: np.ndarray, answers: Sequence[np.ndarray], *,
                    batch_size: int = 8, deadline: float | None = None,
                    device: torch.device | str | None = None, max_cache_bytes: int | None = None,
                    prefilled: tuple[Any, torch.Tensor] | None = None,
                    preallocate: bool = True) -> np.ndarray | None:
    """log p(answer | prompt) of each answer (token ids), teacher-forced: the prompt is run once and
    its cache expanded across each batch of answers. None if the deadline passes first.

    ``prefilled``: the prompt's (cache, last position's logits) from an earlier prefill (the
    search's, through :class:`arcttt.kvcache.PromptCaches`): no prefill then. ``max_cache_bytes``
    caps the candidates of one batch (:func:`batch_rows`). ``preallocate``: the prompt's cache is a
    :class:`arcttt.kvcache.SlabCache`, expanded once per call with room for the longest answer and
    reused by every batch (else the model's own cache, copied and expanded per batch). The
    log-probabilities stay on the device until a batch is done: one download a batch."""
    device = torch.device(device) if device is not None else model_device(model)
    answers = [np.asarray(a, dtype=np.int64) for a in answers]
    out_lp = np.zeros(len(answers))
    if not answers:
        return out_lp
    with inference(model):
        plen = len(prompt)
        if prefilled is None:
            ids = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)[None]
            out = model(input_ids=ids, position_ids=positions(0, plen, device), use_cache=True,
                        past_key_values=new_cache(model) if preallocate else None, **last_logits_kwargs(model))
            prompt_cache, last = out.past_key_values, out.logits[0, -1]
        else:
            prompt_cache, last = prefilled
        first = torch.log_softmax(last.float(), -1)
        firsts = torch.tensor([int(a[0]) for a in answers], device=device)
        first_scores = first[firsts].double().cpu().numpy()
        longest = max(len(a) for a in answers)
        rows = batch_rows(prompt_cache, plen, longest, first.shape[-1], batch_size, max_cache_bytes)
        slab = isinstance(prompt_cache, SlabCache) and longest > 1
        expanded = prompt_cache.expanded(min(rows, len(answers)), longest - 1) if slab else None
        for s in range(0, len(answers), rows):
            if deadline is not None and time.time() >= deadline:
                return None
            batch = answers[s:s + rows]
            scores = first_scores[s:s + len(batch)].copy()
            feed = max(len(a) for a in batch) - 1
            if feed > 0:
                # every answer but its last token is fed, right-padded: causal attention means the
                # padding (after an answer's end) never reaches the positions that are read
                inp = np.zeros((len(batch), feed), dtype=np.int64)
                for r, a in enumerate(batch):
                    inp[r, :len(a) - 1] = a[:-1]
                if slab:  # fresh layer objects at the prompt's length over the expanded buffers
                    cache = expanded.first_rows(len(batch))
                else:
                    cache = _expanded(prompt_cache, len(batch), keep=s + rows < len(answers))
                # the answers continue the prompt: explicit positions after it (a multi-token call on a
                # cache must not be taken for a fresh sequence, nor for unsloth's one-token decode)
                logits = model(input_ids=torch.from_numpy(inp).to(device), past_key_values=cache,
                               position_ids=positions(plen, feed, device, len(batch)), use_cache=True).logits
                totals = torch.zeros(len(batch), dtype=torch.float64, device=device)
                for r, a in enumerate(batch):  # row by row: one row's float32 log-softmax at a time
                    n = len(a) - 1
                    if n:
                        lp = torch.log_softmax(logits[r, :n].float(), -1)
                        tgt = torch.from_numpy(a[1:]).to(device)
                        totals[r] = lp.gather(-1, tgt[:, None]).sum()
                scores += totals.cpu().numpy()
            out_lp[s:s + len(batch)] = scores
    return out_lp


def batch_rows(prompt_cache, prompt_len: int, longest: int, vocab: int, batch_size: int,
               max_bytes: int | None) -> int:
    """How many candidates to score at once: :func:`arcttt.kvcache.rows_within` with the prompt
    cache's bytes a token, measured after its prefill."""
    return rows_within(cache_bytes(prompt_cache) / max(prompt_len, 1), prompt_len, longest, vocab, batch_size,
                       max_bytes)


def _expanded(cache, n: int, keep: bool):
    """The prompt's cache repeated ``n`` times along the batch; ``keep``: leave ``cache`` itself
    intact for later batches (a ``Cache`` is expanded in place, so a copy is expanded then)."""
    if isinstance(cache, (tuple, list)):  # legacy (key, value) per layer: repeat makes new tensors
        return tuple((k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in cache)
    cache = copy.deepcopy(cache) if keep else cache
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


def score_candidates(model: torch.nn.Module, task: Task, test_index: int, candidates: Sequence[Candidate],
                     views: Sequence[Any], tm: TokenMap, cfg: SelectConfig, deadline: float | None = None,
                     device: torch.device | str | None = None, prompt_caches: PromptCaches | None = None,
                     preallocate: bool = True) -> list[ScoredCandidate]:
    """Score and rank the candidates of one test input (best first); see the module doc.
    ``views``: ``ttt_data.View``s or (augmentation, prompt ids) pairs; the first ``cfg.n_views``
    are used. ``prompt_caches``: prompt caches the search kept (their prefill is skipped)."""
    pairs = checked_views(task, test_index, views, tm)[:cfg.n_views]
    cands = list(candidates)
    if not cands:
        return []
    per_view: list[np.ndarray] = []
    keys: list[str] = []
    for aug, prompt in pairs:
        if deadline is not None and time.time() >= deadline:
            break
        answers = [answer_ids(aug.grid(c.grid), tm) for c in cands]
        got = answer_logprobs(model, prompt, answers, batch_size=cfg.batch_size, deadline=deadline, device=device,
                              max_cache_bytes=cfg.max_cache_bytes, preallocate=preallocate,
                              prefilled=prompt_caches.take(prompt) if prompt_caches is not None else None)
        if got is None:
            break  # a view scored in part is dropped, so that all candidates stay comparable
        per_view.append(got)
        keys.append(aug.key)
    scored = []
    for j, c in enumerate(cands):
        lps = [float(v[j]) for v in per_view]
        scored.append(ScoredCandidate(c, candidate_score(c, lps, cfg), lps, list(keys)))
    return rank(scored, cfg)


def candidate_score(c: Candidate, view_logprobs: list[float], cfg: SelectConfig) -> float:
    """The score of the module doc; with no view scored, the search's logprob stands in for the
    views' sum (poe, vote) or mean (nvarc)."""
    if cfg.method == "nvarc":
        base = float(np.mean(view_logprobs)) if view_logprobs else c.search_logprob
        return cfg.hits_weight * c.hits + base
    base = sum(view_logprobs) if view_logprobs else c.search_logprob
    return base + cfg.hits_weight * math.log(max(c.hits, 1))


def rank(scored: list[ScoredCandidate], cfg: SelectConfig) -> list[ScoredCandidate]:
    """Sort best first by the configured method (sets ``votes`` and ``rank``)."""
    votes = hierarchical_votes([s.candidate for s in scored], cfg.vote_top_k)
    for s, v in zip(scored, votes):
        s.votes = v
        tail = (s.candidate.hits, s.candidate.search_logprob)
        s.rank = (v, s.score, *tail) if cfg.method == "vote" else (s.score, *tail)
    return sorted(scored, key=lambda s: s.rank, reverse=True)


def hierarchical_votes(candidates: Sequence[Candidate], top_k: int) -> list[int]:
    """Votes of each candidate: the views that found candidates are grouped by symmetry; in each
    group the ``top_k`` candidates found by most of the group's views (then with the best logprob
    in the group) get a vote."""
    groups: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j, c in enumerate(candidates):
        for key, lp in c.found:
            groups[Augmentation.from_key(key).symmetry][j].append(lp)
    votes = [0] * len(candidates)
    for found in groups.values():
        ranked = sorted(found, key=lambda j: (len(found[j]), max(found[j])), reverse=True)
        for j in ranked[:top_k]:
            votes[j] += 1
    return votes


def choose_attempts(scored: Sequence[ScoredCandidate], default: np.ndarray | list,
                    second_default: np.ndarray | list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two best grids. Missing attempts are filled with ``default``, then ``second_default``,
    skipping a default equal to a grid already chosen (a repeated attempt wastes the second try);
    with no candidate and no distinct second default, both attempts are ``default``."""
    ranked = sorted(scored, key=lambda s: s.rank, reverse=True)
    grids = [np.asarray(s.grid, dtype=np.uint8) for s in ranked[:2]]
    for fallback in (default, second_default):
        if fallback is None or len(grids) == 2:
            continue
        fallback = np.asarray(fallback, dtype=np.uint8)
        if not any(g.shape == fallback.shape and (g == fallback).all() for g in grids):
            grids.append(fallback)
    grids += [np.asarray(default, dtype=np.uint8)] * (2 - len(grids))
    return grids[0], grids[1]


def score_session(session, task: Task, test_index: int, candidates: Sequence[Candidate], views: Sequence[Any],
                  cfg: SelectConfig, deadline: float | None = None,
                  prompt_caches: PromptCaches | None = None) -> list[ScoredCandidate]:
    """:func:`score_candidates` on a loaded ``model.ModelSession`` (switched to inference mode), on
    the preallocated cache where the session's library takes it (``backends.py``)."""
    session.eval_mode()
    return score_candidates(session.model, task, test_index, candidates, views, session.token_map, cfg,
                            deadline=deadline, device=session.device, prompt_caches=prompt_caches,
                            preallocate=backend_of(session).preallocate)
