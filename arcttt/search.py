"""Answer search: a depth-first search over answer tokens that keeps every completion whose
probability stays above a threshold, reusing the key/value cache across branches; run under several
augmented views of a test input, with the answers mapped back and merged into candidates.

How the search reads the model:

- Only answer symbols are ever fed: the 10 digits, the newline and the first token of the end marker
  (``TokenMap.answer_symbols``). Their probabilities are the model's own, from a softmax over the whole
  vocabulary, *not renormalised* over the answer symbols (as the ARChitects do): a completion's
  logprob is then its real probability under the model, and a threshold of 0.1 means the same as in
  their work; the mass the model puts on other tokens is simply lost. ``renormalize=True`` instead
  renormalises over the symbols the grammar allows at each step (a completion can then only gain).
- The tree search itself (``tree.py``: the grammar that prunes what
  :func:`arcttt.formats.parse_answer` would reject, the most likely child first, the cut below the
  threshold) knows no model: this module feeds it the model's log-probabilities. The grammar is the
  format's (``tm.grammar()``): ``tree.DigitGrammar`` for the token formats, ``templates.TemplateGrammar``
  for the template formats (mit, omni-arc), whose symbols are the model's own tokens made only of the
  grid writer's characters; the search is the same. Greedy decoding is its degenerate case
  (:func:`greedy`).

Cache reuse. One view (:func:`dfs`): the prompt is run once; each step feeds one token with the
cached past; backtracking crops the cache back to the branch point (``crop`` with a negative count,
which removes that many positions). The prefill is given a preallocated
:class:`arcttt.kvcache.SlabCache` where the model takes one: a token is written in place and a crop
only moves the length (a ``DynamicCache``, the model's own otherwise, copies its whole tensors at
every token). Several views at once (``batch_views``): the views
run in lock-step, one token per view per forward, in one batched cache. Views' prompts are
left-padded; since the views' searches are at different depths, a step's token always goes in a new
cache column, and each row's attention mask lets it see only its prompt and the columns of its own
current path (explicit position ids keep positions right). Columns nobody can see any more are
dropped from time to time, and a view that is done leaves the batch. This needs a cache of plain
(non-sliding) ``DynamicLayer``s or ``SlabLayer``s; otherwise the views run one after another.
A step costs one upload (tokens, positions, the mask's changes) and one download (the symbols'
log-probabilities, which choose the next branch). The prompt caches the scoring will need again
(the identity view's) can be kept (``keep``: :class:`arcttt.kvcache.PromptCaches`).

Drafts (``SearchConfig.draft``, issue #22; the ARChitects' guess). A view may be given drafts,
guesses at its answer: one by one, the best candidates found so far in the earlier views (up to
``MAX_DRAFTS``), mapped into this view's frame (:func:`search_test_input`); before any, and in
lock-step where all views start together, the test input itself when every demonstration keeps its
shape. While the search's path is on a draft, the draft's next symbols are fed with the asked one
(``DRAFT_CHUNK`` = 32 at first, then as many as are verified already), so one forward answers the
nodes along it; where the path leaves, the cache is cut back (``crop``; in lock-step the row's
columns go dark); :class:`arcttt.tree.DraftWalk` keeps the books. A node's logits depend only on its
path, so the completions are the plain search's, with their probabilities, except for float
rounding: a multi-token forward may round differently from one-token forwards (about 1e-6 in
float32), so a completion within that of the threshold can be kept by one and cut by the other; the
tests compare outside that band. Never more model calls than without the draft (each call answers a
node the plain search would also call for); a draft wrong at its first token costs nothing, one
wrong later at most ``DRAFT_CHUNK`` (or the verified length) more tokens in a call, plus the path's
tokens re-fed after a cut.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch

from arcttt.augment import Augmentation
from arcttt.backends import backend_of
from arcttt.data import Task, grid_to_list
from arcttt.formats import TokenMap, answer_ids, parse_answer
from arcttt.forward import inference, last_logits_kwargs, model_device, positions, symbol_logprobs
from arcttt.kvcache import (PromptCaches, SlabCache, batchable, cache_bytes, crop_to, drop_columns,
                            new_cache)
from arcttt.templates import TemplateMap
from arcttt.tree import DraftWalk, draft_symbols, tree_search

DRAFT_CHUNK = 32  # draft symbols verified in one call at first; then as many as are verified already
MAX_DRAFTS = 4    # a view's drafts: the best candidates so far (a noisy view's first choice is often the second)
COMPACT_MIN_COLUMNS = 64  # batched search: drop dead cache columns once this many (and a quarter) are dead


@dataclass
class SearchConfig:
    """How answers are searched for one test input."""

    n_augmentations: int = 8
    """Views of the test input searched (augmented prompts; the first is the identity)."""
    threshold: float = 0.1
    """Lowest cumulative probability of a kept completion (a branch below it is cut)."""
    max_candidates_per_view: int = 8
    """Keep at most this many completions of a view, the most likely ones."""
    keep_background: bool = True
    """Colour permutations of the views keep colour 0 in place."""
    time_limit_s: float | None = None
    """Cap on one search call (all views of a test input), on top of the caller's deadline."""
    greedy: bool = False
    """Only the single most likely answer per view (the degenerate search)."""
    batch_views: bool = True
    """Search all views in lock-step in one batch (else one after another)."""
    max_batch_tokens: int = 32768
    """Cap on views x longest prompt in one batched prefill; more views are split into groups."""
    renormalize: bool = False
    """Renormalise the probabilities over the answer symbols the grammar allows (see module doc)."""
    seed: int = 0
    """Seed of the views' augmentations."""
    draft: bool = True
    """Draft-verified search (see the module doc): a view one by one is given the best answers found
    so far in earlier views, mapped into its frame, and verifies them in one forward; in lock-step
    (all views at once) only the test input, where the demonstrations keep their shapes. The same
    completions, never more model calls."""

    def __post_init__(self):
        errors = []
        if self.n_augmentations < 1:
            errors.append(f"n_augmentations must be >= 1, got {self.n_augmentations}")
        if not 0.0 < self.threshold <= 1.0:
            errors.append(f"threshold must be in (0, 1], got {self.threshold}")
        if self.max_candidates_per_view < 1:
            errors.append(f"max_candidates_per_view must be >= 1, got {self.max_candidates_per_view}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            errors.append(f"time_limit_s must be positive or None, got {self.time_limit_s}")
        if self.max_batch_tokens < 1:
            errors.append(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")
        if errors:
            raise ValueError("; ".join(errors))


@dataclass(frozen=True)
class Completion:
    """Generated token ids after the prompt (ending with the end marker's first token) and their
    total log-probability."""

    ids: list[int]
    logprob: float


@dataclass
class SearchStats:
    """What one or more search calls cost; filled in when passed to the search functions."""

    views: int = 0
    forwards: int = 0       # model calls, prefills included
    tokens_fed: int = 0     # answer tokens fed after the prompts (summed over rows), drafts included
    draft_fed: int = 0      # of those, draft tokens fed beyond the one the search asked for
    verified: int = 0       # tree nodes whose logits came from a draft's forward (no model call of their own)
    completions: int = 0
    timed_out: bool = False
    oom: bool = False       # out of memory: the views searched before it keep their completions
    seconds: float = 0.0


@dataclass
class Candidate:
    """One distinct answer grid (in the task's own frame) and every view that found it."""

    grid: np.ndarray
    found: list[tuple[str, float]] = field(default_factory=list)   # (augmentation key, logprob)

    @property
    def hits(self) -> int:
        return len(self.found)

    @property
    def search_logprob(self) -> float:
        return max(lp for _, lp in self.found) if self.found else -math.inf

    def to_json(self, score: float | None = None) -> dict:
        return {"grid": grid_to_list(self.grid), "hits": self.hits,
                "search_logprob": float(self.search_logprob), "score": None if score is None else float(score),
                "found": [[key, float(lp)] for key, lp in self.found]}


def grid_key(grid: np.ndarray) -> tuple:
    """A hashable identity of a grid (shape and cells)."""
    g = np.asarray(grid, dtype=np.uint8)
    return g.shape, g.tobytes()


# --- drivers: one view, or many in lock-step -----------------------------------------------------

def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def _search_one(model, prompt: np.ndarray, symbol_ids: torch.Tensor, sym_tokens: np.ndarray,
                opts: dict, deadline: float | None, stats: SearchStats, cache: SlabCache | None = None,
                keep: PromptCaches | None = None,
                drafts: Sequence[Sequence[int]] = ()) -> list[tuple[list[int], float]]:
    """One view's search; ``cache``: an empty cache for the prefill (None: the model's own);
    ``drafts``: guesses as symbol indices (:class:`arcttt.tree.DraftWalk`)."""
    device = symbol_ids.device
    walk = DraftWalk(drafts, DRAFT_CHUNK)
    ids = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)[None]
    # explicit positions on every call: unsloth's one-token decode path reads position_ids (and
    # fails without them on a GPU); a cached call's positions continue the cache
    out = model(input_ids=ids, position_ids=positions(0, ids.shape[1], device), past_key_values=cache,
                use_cache=True, **last_logits_kwargs(model))
    stats.forwards += 1
    cache, plen = out.past_key_values, ids.shape[1]
    if keep is not None and isinstance(cache, SlabCache) and keep.wants(prompt, cache_bytes(cache)):
        keep.put(prompt, cache.copy_of(0, 0, plen), out.logits[0, -1])
    found: list[tuple[list[int], float]] = []
    gen = tree_search(symbol_logprobs(out.logits[:, -1], symbol_ids)[0], found, **opts)
    req = next(gen, None)
    one = [torch.tensor([[t]], device=device) for t in sym_tokens]
    while req is not None:
        lp = walk.ask(*req)
        if lp is None:
            if _past(deadline):
                stats.timed_out = True
                break
            held, syms = walk.to_feed()
            cache = crop_to(cache, plen + held)
            feed = one[syms[0]] if len(syms) == 1 else torch.as_tensor(sym_tokens[syms], device=device)[None]
            out = model(input_ids=feed, position_ids=positions(plen + held, len(syms), device),
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            stats.forwards += 1
            stats.tokens_fed += len(syms)
            stats.draft_fed += len(syms) - (len(walk.path) - held)
            lp = walk.fed(held, syms, symbol_logprobs(out.logits[0, -len(syms):], symbol_ids))
        else:
            stats.verified += 1
        try:
            req = gen.send(lp)
        except StopIteration:
            req = None
    gen.close()
    return found


def _search_batch(model, prompts: list[np.ndarray], pad: int, symbol_ids: torch.Tensor, sym_tokens: np.ndarray,
                  opts: dict, deadline: float | None, stats: SearchStats, cache: SlabCache | None = None,
                  keep: PromptCaches | None = None,
                  drafts: Sequence[Sequence[Sequence[int]]] | None = None) -> list[list[tuple[list[int], float]]] | None:
    """Lock-step search of several views in one batch; None when the cache cannot be batched
    this way (the caller then runs the views one by one). ``drafts``: each view's own guesses
    (symbol indices, :class:`arcttt.tree.DraftWalk`).

    A row's held symbols are cache columns (``held``); a step feeds each row what its walk asks
    (one symbol, or the path's missing symbols and the rest of its draft), as a block of the step's
    longest feed: a row's shorter feed leaves its last columns dark to it. The attention mask lives
    twice: ``alive`` on the host (the bookkeeping: which columns each row sees) and ``mask`` on the
    device, updated in place from one small upload a step (the step's tokens, positions, the new
    columns' visibility and the columns that went dark); it is uploaded whole only when columns are
    dropped or rows leave. A step then costs one upload and one download."""
    device = symbol_ids.device
    n, lens = len(prompts), [len(p) for p in prompts]
    walks = [DraftWalk(d, DRAFT_CHUNK) for d in (drafts or [()] * n)]
    width = max(lens)
    ids = np.full((n, width), pad, dtype=np.int64)
    alive = np.zeros((n, width + 256), dtype=np.int64)  # attention mask, with room to grow
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = p
        alive[r, width - len(p):width] = 1
    pos = np.clip(np.cumsum(alive[:, :width], 1) - 1, 0, None)
    out = model(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(alive[:, :width]).to(device),
                position_ids=torch.from_numpy(pos).to(device), past_key_values=cache, use_cache=True,
                **last_logits_kwargs(model))
    stats.forwards += 1
    cache = out.past_key_values
    if not batchable(cache):
        return None
    if keep is not None and isinstance(cache, SlabCache):
        per_token = cache_bytes(cache) / max(1, n * cache.get_seq_length())
        for r, p in enumerate(prompts):  # a copy of the row's prompt, without its left padding
            if keep.wants(p, per_token * len(p)):  # within the budget before the copy is made
                keep.put(p, cache.copy_of(r, width - len(p), width), out.logits[r, -1])
    root = symbol_logprobs(out.logits[:, -1], symbol_ids)
    mask = torch.tensor(alive, device=device)  # a copy (also on a CPU, so the tests see its updates)
    found: list[list] = [[] for _ in range(n)]
    gens, reqs, held = {}, {}, {}

    def answer(v: int, lp) -> None:
        """Send ``lp`` to view ``v``'s search (None: start it), then answer its requests from its
        walk until one needs the model (left in ``reqs``) or it is done."""
        try:
            req = next(gens[v]) if lp is None else gens[v].send(lp)
            while (lp := walks[v].ask(*req)) is not None:
                stats.verified += 1
                req = gens[v].send(lp)
            reqs[v] = req
        except StopIteration:
            reqs.pop(v, None)

    for v in range(n):
        held[v] = []
        gens[v] = tree_search(root[v], found[v], **opts)
        answer(v, None)
    rows = list(range(n))  # batch row -> view
    ncols = width
    while True:
        done = [r for r, v in enumerate(rows) if v not in reqs]
        if done:  # views that are finished leave the batch
            staying = [r for r, v in enumerate(rows) if v in reqs]
            if not staying:
                break
            cache.batch_select_indices(torch.tensor(staying, device=device))
            alive, rows = alive[staying], [rows[r] for r in staying]
            mask = torch.tensor(alive, device=device)
        if _past(deadline):
            stats.timed_out = True
            break
        live = alive[:, :ncols].any(0)
        if ncols - live.sum() >= max(COMPACT_MIN_COLUMNS, ncols // 4):  # drop columns no row can see
            kept = np.flatnonzero(live)
            drop_columns(cache, torch.from_numpy(kept).to(device))
            new_index = np.cumsum(live) - 1
            for v in rows:
                held[v] = [int(new_index[c]) for c in held[v]]
            alive = np.concatenate([alive[:, kept], np.zeros((len(rows), alive.shape[1] - ncols), np.int64)], 1)
            ncols = len(kept)
            mask = torch.tensor(alive, device=device)
        nrows = len(rows)
        feeds = [walks[v].to_feed() for v in rows]
        k = max(len(syms) for _, syms in feeds)
        if ncols + k > alive.shape[1]:
            alive = np.concatenate([alive, np.zeros((nrows, max(alive.shape[1], k)), np.int64)], 1)
            mask = torch.tensor(alive, device=device)
        step = np.zeros((3, nrows, k), np.int64)  # tokens, positions, the new columns' visibility
        step[0] = pad
        dark_rows, dark_cols = [], []
        for r, (v, (kept_n, syms)) in enumerate(zip(rows, feeds)):
            cols = held[v]
            if len(cols) > kept_n:  # cut back: the abandoned columns go dark
                alive[r, cols[kept_n:]] = 0
                dark_rows += [r] * (len(cols) - kept_n)
                dark_cols += cols[kept_n:]
                del cols[kept_n:]
            m = len(syms)
            cols += range(ncols, ncols + m)
            step[0, r, :m] = sym_tokens[syms]
            step[1, r] = lens[v] + kept_n + np.arange(k)
            step[2, r, :m] = 1
        alive[:nrows, ncols:ncols + k] = step[2]
        up = torch.from_numpy(np.concatenate([step.reshape(-1), np.asarray(dark_rows + dark_cols, np.int64)])).to(device)
        blocks = up[:3 * nrows * k].view(3, nrows, k)
        if dark_rows:
            d = len(dark_rows)
            mask[up[3 * nrows * k:3 * nrows * k + d], up[3 * nrows * k + d:]] = 0
        mask[:, ncols:ncols + k] = blocks[2]
        ncols += k
        out = model(input_ids=blocks[0], attention_mask=mask[:, :ncols], position_ids=blocks[1],
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        stats.forwards += 1
        lps = symbol_logprobs(out.logits[:, -k:], symbol_ids)
        for r, (v, (kept_n, syms)) in enumerate(zip(rows, feeds)):
            stats.tokens_fed += len(syms)
            stats.draft_fed += len(syms) - (len(walks[v].path) - kept_n)
            answer(v, walks[v].fed(kept_n, syms, lps[r, :len(syms)]))
    for gen in gens.values():
        gen.close()
    return found


def search_prompts(model: torch.nn.Module, prompts: Sequence[np.ndarray], tm: TokenMap | TemplateMap, *,
                   threshold: float, greedy: bool = False, max_new_tokens: int | None = None, renormalize: bool = False,
                   grammar: bool = True, batch: bool = True, max_batch_tokens: int = 32768,
                   deadline: float | None = None, device: torch.device | str | None = None,
                   stats: SearchStats | None = None, preallocate: bool = True,
                   keep: PromptCaches | None = None,
                   drafts: Sequence[Sequence[Sequence[int]] | None] | None = None) -> list[list[Completion]]:
    """The search on each prompt (each ending with the output marker): per prompt, its completions,
    most likely first. Stops at ``deadline`` (``time.time()``), returning what was found by then.
    ``max_new_tokens``: default, the format's longest answer (``tm.grammar()``).

    ``preallocate``: give the prefills a :class:`arcttt.kvcache.SlabCache` (appends in place, crops
    move a length) where the model takes one; False: the model's own cache (``DynamicCache``).
    ``keep``: a copy of each prompt cache it wants is put there after the prefill (for the scoring).
    ``drafts``: per prompt, guesses at its answer, best first (each token ids, e.g. ``answer_ids`` of
    a grid), or None: verified in one forward where the search goes their way (the same completions,
    fewer calls; see the module doc)."""
    stats = stats if stats is not None else SearchStats()
    t0 = time.time()
    device = torch.device(device) if device is not None else model_device(model)
    gram = tm.grammar()
    sym_ids = list(gram.symbols)
    symbol_ids = torch.tensor(sym_ids, device=device)
    opts = dict(min_lp=-math.inf if greedy else math.log(threshold),
                max_new=gram.max_tokens if max_new_tokens is None else max_new_tokens,
                grammar=grammar, renormalize=renormalize, greedy=greedy, gram=gram)
    prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
    syms = [[draft_symbols(d, gram, opts["max_new"]) for d in guesses or ()]
            for guesses in (drafts or [None] * len(prompts))]
    if len(syms) != len(prompts):
        raise ValueError(f"{len(syms)} drafts for {len(prompts)} prompts")
    results: list[list[tuple[list[int], float]] | None] = [None] * len(prompts)
    with inference(model):
        groups = _groups([len(p) for p in prompts], max_batch_tokens) if batch and len(prompts) > 1 else \
            [[i] for i in range(len(prompts))]
        for group in groups:
            if _past(deadline):
                stats.timed_out = True
                break
            got = None
            try:
                if len(group) > 1:
                    got = _search_batch(model, [prompts[i] for i in group], tm.pad, symbol_ids,
                                        np.asarray(sym_ids), opts, deadline, stats,
                                        new_cache(model) if preallocate else None, keep, [syms[i] for i in group])
                if got is None:
                    got = [_search_one(model, prompts[i], symbol_ids, np.asarray(sym_ids), opts, deadline, stats,
                                       new_cache(model) if preallocate else None, keep, syms[i]) for i in group]
            except torch.OutOfMemoryError:
                stats.oom = True  # what the earlier groups found stands; the caller sees the flag
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                break
            for i, f in zip(group, got):
                results[i] = f
    stats.views += len(prompts)
    stats.seconds += time.time() - t0
    out = []
    for found in results:
        comps = sorted((Completion([sym_ids[s] for s in path], lp) for path, lp in found or []),
                       key=lambda c: -c.logprob)
        stats.completions += len(comps)
        out.append(comps)
    return out


def _groups(lens: list[int], max_tokens: int) -> list[list[int]]:
    """Consecutive groups of views whose padded batch (views x longest prompt) stays under the cap."""
    groups: list[list[int]] = []
    for i, n in enumerate(lens):
        g = groups[-1] if groups else None
        if g is not None and (len(g) + 1) * max(n, *(lens[j] for j in g)) <= max_tokens:
            g.append(i)
        else:
            groups.append([i])
    return groups


def dfs(model: torch.nn.Module, prompt_ids: np.ndarray, tm: TokenMap | TemplateMap, *, threshold: float,
        max_new_tokens: int | None = None, deadline: float | None = None,
        device: torch.device | str | None = None, renormalize: bool = False, grammar: bool = True,
        stats: SearchStats | None = None) -> list[Completion]:
    """Every completion of ``prompt_ids`` (ending with the end marker's first token, at most
    ``max_new_tokens`` tokens) whose probability is at least ``threshold``, most likely first."""
    return search_prompts(model, [prompt_ids], tm, threshold=threshold, max_new_tokens=max_new_tokens,
                          renormalize=renormalize, grammar=grammar, deadline=deadline, device=device,
                          stats=stats)[0]


def greedy(model: torch.nn.Module, prompt_ids: np.ndarray, tm: TokenMap | TemplateMap, *,
           max_new_tokens: int | None = None, deadline: float | None = None,
           device: torch.device | str | None = None, grammar: bool = True,
           stats: SearchStats | None = None) -> Completion | None:
    """The most likely answer symbol at every step (the search with one child per node and no
    threshold); None if it does not end within ``max_new_tokens`` or by the deadline."""
    got = search_prompts(model, [prompt_ids], tm, threshold=1.0, greedy=True, max_new_tokens=max_new_tokens,
                         grammar=grammar, deadline=deadline, device=device, stats=stats)[0]
    return got[0] if got else None


# --- one test input under augmentations ----------------------------------------------------------

def as_view(view: Any) -> tuple[Augmentation, np.ndarray]:
    """(augmentation, prompt ids) of a ``ttt_data.View`` or of such a pair."""
    if isinstance(view, tuple):
        aug, prompt = view
    else:
        aug, prompt = view.aug, view.prompt
    return aug, np.asarray(prompt, dtype=np.int64)


def checked_views(task: Task, test_index: int, views: Sequence[Any], tm: TokenMap | TemplateMap) -> list[tuple[Augmentation, np.ndarray]]:
    if not 0 <= test_index < task.n_test:
        raise ValueError(f"task {task.id}: test index {test_index} out of range (it has {task.n_test} test inputs)")
    out = [as_view(v) for v in views]
    marker = np.asarray(tm.output, dtype=np.int64)
    for aug, prompt in out:
        if len(prompt) < len(marker) or not np.array_equal(prompt[-len(marker):], marker):
            raise ValueError(f"task {task.id} test {test_index} view {aug.key}: prompt does not end with the output marker")
    return out


def search_test_input(model: torch.nn.Module, task: Task, test_index: int, tm: TokenMap | TemplateMap, views: Sequence[Any],
                      cfg: SearchConfig, deadline: float | None = None, device: torch.device | str | None = None,
                      stats: SearchStats | None = None, preallocate: bool = True,
                      keep: PromptCaches | None = None) -> list[Candidate]:
    """Search every view of test input ``test_index``, parse each completion, map it back to the
    task's frame and merge equal grids. Candidates come most-found first, then most likely.

    A template format can spell one answer in several tokenizations: a view's completions of one
    grid count as one find, with the sum of their probabilities (the probability of the text).

    ``preallocate``, ``keep``: see :func:`search_prompts`."""
    pairs = checked_views(task, test_index, views, tm)
    if cfg.time_limit_s is not None:
        cap = time.time() + cfg.time_limit_s
        deadline = cap if deadline is None else min(deadline, cap)
    stats = stats if stats is not None else SearchStats()
    rooms = [getattr(v, "answer_room", None) for v in views]  # what the prompts left room for
    kw = dict(threshold=cfg.threshold, greedy=cfg.greedy, renormalize=cfg.renormalize, batch=cfg.batch_views,
              max_batch_tokens=cfg.max_batch_tokens, deadline=deadline, device=device, stats=stats,
              preallocate=preallocate, keep=keep,
              max_new_tokens=max(rooms) if rooms and None not in rooms else None)
    merged: dict[tuple, Candidate] = {}
    # One by one with drafts, each view after the last, with the best answer so far as its draft. In
    # lock-step all views start together, so no view has an earlier one's answer: each gets the cheap
    # guess only. (Searching the first view alone, then the rest in lock-step with its answer, was
    # measured: the rest's main paths ran beside each other anyway, so it saved no calls, and on a
    # search with many branches it doubled them: tests/test_draft_search.py, bench/RESULTS.md.)
    waves = [list(range(len(pairs)))] if cfg.batch_views or not cfg.draft else [[v] for v in range(len(pairs))]
    for wave in waves:
        if stats.oom:
            break
        drafts = None
        if cfg.draft:
            guesses = _guesses(merged, task, test_index)
            drafts = [[answer_ids(pairs[v][0].grid(g), tm) for g in guesses] for v in wave]
        results = search_prompts(model, [pairs[v][1] for v in wave], tm, drafts=drafts, **kw)
        for v, comps in zip(wave, results):
            _merge(merged, pairs[v][0], comps, tm, cfg.max_candidates_per_view)
    return sorted(merged.values(), key=lambda c: (-c.hits, -c.search_logprob))


def _guesses(merged: dict[tuple, Candidate], task: Task, test_index: int) -> list[np.ndarray]:
    """The drafts, in the task's frame: the best ``MAX_DRAFTS`` candidates so far (most found, then
    most likely); before any, the test input itself when every demonstration keeps its grid's shape."""
    if merged:
        return [c.grid for c in sorted(merged.values(), key=lambda c: (-c.hits, -c.search_logprob))[:MAX_DRAFTS]]
    if task.train and all(p.input.shape == p.output.shape for p in task.train):
        return [task.test_inputs[test_index]]
    return []


def _merge(merged: dict[tuple, Candidate], aug: Augmentation, comps: list[Completion], tm, cap: int) -> None:
    """One view's completions parsed, mapped back to the task's frame and merged into ``merged``."""
    view: dict[tuple, tuple[np.ndarray, float]] = {}  # this view's grids
    for comp in comps:
        grid = parse_answer(comp.ids, tm, require_end=True)
        if isinstance(grid, np.ndarray):
            grid = aug.invert_grid(grid)
            key = grid_key(grid)
            lp = float(np.logaddexp(view[key][1], comp.logprob)) if key in view else comp.logprob
            view[key] = (grid, lp)
    # the view's most likely grids (the cap counts grids, not spellings of one grid)
    best = sorted(view.items(), key=lambda kv: -kv[1][1])[:cap]
    for key, (grid, lp) in best:
        merged.setdefault(key, Candidate(grid)).found.append((aug.key, lp))


def search_session(session, task: Task, test_index: int, views: Sequence[Any], cfg: SearchConfig,
                   deadline: float | None = None, stats: SearchStats | None = None,
                   keep: PromptCaches | None = None) -> list[Candidate]:
    """:func:`search_test_input` on a loaded ``model.ModelSession`` (switched to inference mode:
    unsloth needs its own switch, not just ``model.eval()``). Lock-step views and the preallocated
    cache where the session's library takes them (``backends.py``: hf, not unsloth)."""
    session.eval_mode()
    library = backend_of(session)
    if cfg.batch_views and not library.lock_step:
        cfg = replace(cfg, batch_views=False)
    return search_test_input(session.model, task, test_index, session.token_map, views, cfg, deadline=deadline,
                             device=session.device, stats=stats, preallocate=library.preallocate, keep=keep)
