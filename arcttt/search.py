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
- A small grammar prunes what :func:`arcttt.formats.parse_answer` would reject anyway: no empty row,
  every row as wide as the first, at most 30 x 30, the end only after a whole row (after its
  newline when the format's rows are newline-terminated, in its place when they are separated). Without
  renormalisation this changes nothing in the kept completions, it only saves forward passes; it
  also bounds every answer to ``MAX_ANSWER_TOKENS`` = 30 * 31 + 1 tokens. The grammar is an object
  (:func:`answer_grammar`): :class:`DigitGrammar` for the token formats, ``templates.TemplateGrammar``
  for the template formats (mit, omni-arc), whose symbols are the model's own tokens made only of the
  grid writer's characters, checked by a character automaton; the search itself is the same.
- The most likely child is explored first. A branch is cut as soon as its cumulative probability
  falls below the threshold (probabilities only shrink along a path, so nothing above it is lost).
  Greedy decoding is the degenerate case "one child per node, no threshold" (:func:`greedy`).

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

Drafts (``SearchConfig.draft``, issue #22; the ARChitects' guess). A view may be given a draft, a
guess at its answer: one by one, the best candidates found so far in the earlier views (up to
``MAX_DRAFTS``), mapped into this view's frame (:func:`search_test_input`); before any, and in
lock-step where all views start together, the test input itself when every demonstration keeps its
shape. The path follows the first draft it is on. When the search takes
the draft's first symbol, the draft's next symbols are fed with it (``DRAFT_CHUNK`` = 32 at first,
then as many as are verified already), so one forward gives the logits after each of their
prefixes; the tree search walks them without a model call while its path is on the draft, and
where it leaves, the cache is cut back (``crop``; in lock-step the row's columns go dark) and it
decodes one token a call as before (:class:`_Walk`). Logits verified once stay known for the
draft's path, so coming back to it after a sibling costs no call; a later forward feeds the path's
tokens the cache lacks. A node's logits depend only on its path, so the completions are the plain
search's, with their probabilities, except for float rounding: a multi-token forward may round
differently from one-token forwards (about 1e-6 in float32), so a completion within that of the
threshold can be kept by one and cut by the other; the tests compare outside that band. Never more
model calls than without the draft (each call answers a node the plain search would also call
for); a draft wrong at its first token costs nothing, one wrong later at most ``DRAFT_CHUNK`` (or
the verified length) more tokens in a call, plus the path's tokens re-fed after a cut.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from arcttt.augment import Augmentation
from arcttt.backends import backend_of
from arcttt.data import MAX_SIDE, Task, grid_to_list
from arcttt.formats import TokenMap, answer_ids, parse_answer
from arcttt.kvcache import PromptCaches, SlabCache, SlabLayer, cache_bytes, new_cache
from arcttt.templates import TemplateMap

MAX_ANSWER_TOKENS = MAX_SIDE * (MAX_SIDE + 1) + 1  # 30 rows of 30 cells and a newline, then the end
N_SYMBOLS = 12  # answer symbols, in TokenMap.answer_symbols order: digits 0-9, newline, end
NEWLINE, END = 10, 11
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


def view_augmentations(task: Task, test_index: int, n: int, *, keep_background: bool, seed: int,
                       include_identity: bool = True) -> list[Augmentation]:
    """``n`` distinct augmentations for one test input, the identity first; reproducible from the
    seed, the task id and the test index (so resuming a run gives the same views)."""
    from arcttt.augment import sample_augmentations

    rng = np.random.default_rng([seed, zlib.crc32(task.id.encode()), test_index])
    return sample_augmentations(n, rng, n_train=len(task.train), keep_background=keep_background,
                                include_identity=include_identity)


# --- model plumbing ------------------------------------------------------------------------------

@contextlib.contextmanager
def inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no LoRA dropout) and no autograd for the duration; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def last_logits_kwargs(model: torch.nn.Module, n: int = 1) -> dict:
    """``logits_to_keep=n`` where the model takes it: a prefill then computes only the last ``n``
    positions' logits (a long prompt's full logits over a big vocabulary do not fit)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    takes = "logits_to_keep" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {"logits_to_keep": n} if takes else {}


def positions(start: int, n: int, device, rows: int = 1) -> torch.Tensor:
    """Position ids ``start .. start + n - 1`` for ``rows`` rows: int64 [rows, n]."""
    return torch.arange(start, start + n, device=device).expand(rows, n)


def _symbol_logprobs(logits: torch.Tensor, symbol_ids: torch.Tensor) -> np.ndarray:
    """Log-probabilities of the answer symbols from the logits of one position per row:
    float64 [rows, symbols] on the host (the search's one device sync per step)."""
    return torch.log_softmax(logits.float(), dim=-1).index_select(-1, symbol_ids).cpu().double().numpy()


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


# --- the search over one tree --------------------------------------------------------------------

# Grammar state at a node: (cells in the open row, width of the first row or 0, closed rows).
_START = (0, 0, 0)


def _allowed(state: tuple[int, int, int], separated: bool = False) -> list[int]:
    """Symbols that continue a well-formed answer. Terminated rows: the end comes after a row's
    newline. Separated rows: the end closes the last row itself, and a newline must open another."""
    col, width, rows = state
    out = []
    if rows < MAX_SIDE and col < (width or MAX_SIDE):
        out.extend(range(10))
    row_done = col > 0 and (width == 0 or col == width)
    if row_done and (not separated or rows + 1 < MAX_SIDE):
        out.append(NEWLINE)
    if (row_done if separated else col == 0 and rows > 0):
        out.append(END)
    return out


def _advance(state: tuple[int, int, int], sym: int) -> tuple[int, int, int]:
    col, width, rows = state
    if sym == NEWLINE:
        return 0, width or col, rows + 1
    return col + 1, width, rows


@dataclass(frozen=True)
class DigitGrammar:
    """The grammar of the token formats (one token per cell): the 12 answer symbols
    (``TokenMap.answer_symbols``) and the automaton of :func:`_allowed` / :func:`_advance`.

    A grammar is what the tree search asks at each node: ``symbols`` (the token ids it may feed, the
    end token last), ``start``, ``allowed(state)`` (symbol indices), ``advance(state, symbol)``,
    ``is_end(symbol)`` and ``max_tokens`` (the longest answer, end included). The template formats'
    grammar is ``templates.TemplateGrammar`` (a character automaton over the model's own tokens)."""

    symbols: tuple[int, ...]
    separated: bool = False
    start: tuple = _START
    max_tokens: int = MAX_ANSWER_TOKENS

    def allowed(self, state) -> list[int]:
        return _allowed(state, self.separated)

    def advance(self, state, sym: int):
        return _advance(state, sym)

    def is_end(self, sym: int) -> bool:
        return sym == END


def answer_grammar(tm: TokenMap | TemplateMap):
    """The search grammar of a format's token map."""
    if isinstance(tm, TemplateMap):
        return tm.grammar()
    return DigitGrammar(tuple(tm.answer_symbols), tm.separated)


def _children(lp: np.ndarray, cum: float, state, min_lp: float, grammar: bool, renormalize: bool,
              greedy: bool, gram) -> list[tuple[float, int]]:
    """Children worth exploring, as (cumulative logprob, symbol), least likely first (pop() takes
    the most likely). ``grammar=False``: every symbol of ``gram``."""
    syms = gram.allowed(state) if grammar else list(range(len(gram.symbols)))
    vals = lp[syms]
    if renormalize and len(syms):
        vals = vals - np.logaddexp.reduce(vals)
    if greedy:
        best = int(np.argmax(vals)) if len(syms) else None
        return [] if best is None else [(cum + float(vals[best]), syms[best])]
    kids = [(cum + float(v), s) for s, v in zip(syms, vals) if cum + v >= min_lp]
    kids.sort()
    return kids


def _tree_search(root_lp: np.ndarray, found: list[tuple[list[int], float]], *, min_lp: float,
                 max_new: int, grammar: bool, renormalize: bool, greedy: bool, gram=None):
    """One view's depth-first search as a generator, so that one driver can run many in lock-step.

    It yields ``(depth, symbol)``: "feed this symbol as answer token number ``depth``" (the cache
    must then hold the prompt and the first ``depth`` tokens of the current path), and is sent back
    the symbols' log-probabilities after that token. Finished paths (symbols, logprob) are appended
    to ``found``. Iterative, so that 931-token answers do not hit Python's recursion limit.
    ``gram``: the grammar (default: the token formats' with rows terminated).
    """
    gram = gram if gram is not None else DigitGrammar(tuple(range(N_SYMBOLS)))
    path: list[int] = []
    stack = [(_children(root_lp, 0.0, gram.start, min_lp, grammar, renormalize, greedy, gram), gram.start)]
    while stack:
        kids, state = stack[-1]
        if not kids:
            stack.pop()
            if path:
                path.pop()
            continue
        cum, sym = kids.pop()
        if gram.is_end(sym):
            found.append((path + [sym], cum))
            continue
        if len(path) + 2 > max_new:  # no room left for the end token
            continue
        lp = yield len(path), sym
        path.append(sym)
        state = gram.advance(state, sym)
        stack.append((_children(lp, cum, state, min_lp, grammar, renormalize, greedy, gram), state))


# --- drivers: one view, or many in lock-step -----------------------------------------------------

def _crop_to(cache, length: int):
    """The cache cut back to ``length`` positions: a ``Cache`` in place, or a legacy tuple of
    (key, value) per layer (which some patched backends return) as a new tuple."""
    if isinstance(cache, (tuple, list)):
        return tuple((k[..., :length, :], v[..., :length, :]) for k, v in cache)
    excess = cache.get_seq_length() - length
    if excess > 0:
        cache.crop(-excess)  # negative: remove that many positions (transformers 4.4x and 5.x alike)
    return cache


class _Walk:
    """One view's bookkeeping between its tree search and its cache, with drafts.

    ``drafts``: guesses at the answer, best first, as symbol indices (the end excluded) the search
    may walk; ``held``: the symbols after the prompt that the cache holds, with ``held_lp`` the
    symbols' logprobs after each; ``path``: the tree search's current path (mirrored from its
    requests); ``memo[j]``: the logprobs after each prefix of draft ``j`` that a forward has verified,
    kept when the cache is cut back (a node's logits depend on its path only). A request is answered
    from ``held_lp`` or a memo without a model call where they hold it; otherwise :meth:`to_feed`
    says what to feed: the path's symbols the cache lacks (after cutting it back to the common
    prefix) and, while the path is on a draft, that draft's next ``max(chunk, verified)`` symbols (so
    a draft right to its end costs about log2(length / chunk) calls, and one wrong early at most
    ``chunk`` tokens more in one call). The search chooses a draft's first symbol itself: a draft
    wrong at its first token costs nothing. Without drafts every request feeds one symbol: the plain
    search."""

    def __init__(self, drafts: Sequence[Sequence[int]] = (), chunk: int = 32):
        self.drafts, self.chunk = [list(d) for d in drafts if len(d)], chunk
        self.held: list[int] = []
        self.held_lp: list[np.ndarray] = []
        self.path: list[int] = []
        self.memo: list[list[np.ndarray]] = [[] for _ in self.drafts]
        self.common = 0                       # common prefix of held and path
        self.on = [0] * len(self.drafts)      # common prefix of path and each draft
        self.sure = [0] * len(self.drafts)    # common prefix of held and each draft

    def ask(self, depth: int, sym: int) -> np.ndarray | None:
        """The tree search asks for the logprobs after ``sym`` as token ``depth``: them, if known."""
        del self.path[depth:]
        self.path.append(sym)
        self.common = min(self.common, depth)
        if self.common == depth and depth < len(self.held) and self.held[depth] == sym:
            self.common += 1
        known = None
        for j, draft in enumerate(self.drafts):
            on = min(self.on[j], depth)
            if on == depth and depth < len(draft) and draft[depth] == sym:
                on += 1
                if known is None and depth < len(self.memo[j]):
                    known = self.memo[j][depth]
            self.on[j] = on
        if known is not None:
            return known
        return self.held_lp[depth] if self.common == depth + 1 else None

    def to_feed(self) -> tuple[int, list[int]]:
        """(keep, symbols): cut the cache back to the prompt and ``keep`` held symbols, then feed
        ``symbols`` (the asked one among them)."""
        d = len(self.path)
        more: list[int] = []
        for j, draft in enumerate(self.drafts):
            if d and self.on[j] == d and d < len(draft):  # the first draft the path is on
                more = draft[d:d + max(self.chunk, len(self.memo[j]))]
                break
        return self.common, self.path[self.common:] + more

    def fed(self, keep: int, syms: list[int], lps: np.ndarray) -> np.ndarray:
        """After the forward of :meth:`to_feed`: ``lps`` [len(syms), symbols]; the asked node's logprobs."""
        del self.held[keep:], self.held_lp[keep:]
        self.held += syms
        self.held_lp += list(lps)
        self.common = len(self.path)
        for j, draft in enumerate(self.drafts):
            sure = min(self.sure[j], keep)
            if sure == keep:
                while sure < min(len(self.held), len(draft)) and self.held[sure] == draft[sure]:
                    sure += 1
            self.sure[j] = sure
            if sure > len(self.memo[j]):
                self.memo[j] += self.held_lp[len(self.memo[j]):sure]
        return self.held_lp[len(self.path) - 1]


def _search_one(model, prompt: np.ndarray, symbol_ids: torch.Tensor, sym_tokens: np.ndarray,
                opts: dict, deadline: float | None, stats: SearchStats, cache: SlabCache | None = None,
                keep: PromptCaches | None = None,
                drafts: Sequence[Sequence[int]] = ()) -> list[tuple[list[int], float]]:
    """One view's search; ``cache``: an empty cache for the prefill (None: the model's own);
    ``drafts``: guesses as symbol indices (:class:`_Walk`)."""
    device = symbol_ids.device
    walk = _Walk(drafts, DRAFT_CHUNK)
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
    gen = _tree_search(_symbol_logprobs(out.logits[:, -1], symbol_ids)[0], found, **opts)
    req = next(gen, None)
    one = [torch.tensor([[t]], device=device) for t in sym_tokens]
    while req is not None:
        lp = walk.ask(*req)
        if lp is None:
            if _past(deadline):
                stats.timed_out = True
                break
            held, syms = walk.to_feed()
            cache = _crop_to(cache, plen + held)
            feed = one[syms[0]] if len(syms) == 1 else torch.as_tensor(sym_tokens[syms], device=device)[None]
            out = model(input_ids=feed, position_ids=positions(plen + held, len(syms), device),
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            stats.forwards += 1
            stats.tokens_fed += len(syms)
            stats.draft_fed += len(syms) - (len(walk.path) - held)
            lp = walk.fed(held, syms, _symbol_logprobs(out.logits[0, -len(syms):], symbol_ids))
        else:
            stats.verified += 1
        try:
            req = gen.send(lp)
        except StopIteration:
            req = None
    gen.close()
    return found


def _batchable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, SlabLayer) for layer in layers)


def _drop_columns(cache, keep: torch.Tensor) -> None:
    if isinstance(cache, SlabCache):
        cache.keep_columns(keep)  # moved to the front of its buffers
        return
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


def _search_batch(model, prompts: list[np.ndarray], pad: int, symbol_ids: torch.Tensor, sym_tokens: np.ndarray,
                  opts: dict, deadline: float | None, stats: SearchStats, cache: SlabCache | None = None,
                  keep: PromptCaches | None = None,
                  drafts: Sequence[Sequence[Sequence[int]]] | None = None) -> list[list[tuple[list[int], float]]] | None:
    """Lock-step search of several views in one batch; None when the cache cannot be batched
    this way (the caller then runs the views one by one). ``drafts``: each view's own guesses
    (symbol indices, :class:`_Walk`).

    A row's held symbols are cache columns (``held``); a step feeds each row what its walk asks
    (one symbol, or the path's missing symbols and the rest of its draft), as a block of the step's
    longest feed: a row's shorter feed leaves its last columns dark to it. The attention mask lives
    twice: ``alive`` on the host (the bookkeeping: which columns each row sees) and ``mask`` on the
    device, updated in place from one small upload a step (the step's tokens, positions, the new
    columns' visibility and the columns that went dark); it is uploaded whole only when columns are
    dropped or rows leave. A step then costs one upload and one download."""
    device = symbol_ids.device
    n, lens = len(prompts), [len(p) for p in prompts]
    walks = [_Walk(d, DRAFT_CHUNK) for d in (drafts or [()] * n)]
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
    if not _batchable(cache):
        return None
    if keep is not None and isinstance(cache, SlabCache):
        per_token = cache_bytes(cache) / max(1, n * cache.get_seq_length())
        for r, p in enumerate(prompts):  # a copy of the row's prompt, without its left padding
            if keep.wants(p, per_token * len(p)):  # within the budget before the copy is made
                keep.put(p, cache.copy_of(r, width - len(p), width), out.logits[r, -1])
    root = _symbol_logprobs(out.logits[:, -1], symbol_ids)
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
        gens[v] = _tree_search(root[v], found[v], **opts)
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
            _drop_columns(cache, torch.from_numpy(kept).to(device))
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
        lps = _symbol_logprobs(out.logits[:, -k:], symbol_ids)
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
    ``max_new_tokens``: default, the format's longest answer (:func:`answer_grammar`).

    ``preallocate``: give the prefills a :class:`arcttt.kvcache.SlabCache` (appends in place, crops
    move a length) where the model takes one; False: the model's own cache (``DynamicCache``).
    ``keep``: a copy of each prompt cache it wants is put there after the prefill (for the scoring).
    ``drafts``: per prompt, guesses at its answer, best first (each token ids, e.g. ``answer_ids`` of
    a grid), or None: verified in one forward where the search goes their way (the same completions,
    fewer calls; see the module doc)."""
    stats = stats if stats is not None else SearchStats()
    t0 = time.time()
    device = torch.device(device) if device is not None else model_device(model)
    gram = answer_grammar(tm)
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


def draft_symbols(draft: Sequence[int] | None, gram, max_new: int) -> list[int]:
    """A draft's token ids as the grammar's symbol indices the search would feed: up to its first
    token that is no symbol or is the end (never fed), at most ``max_new - 1`` of them."""
    if draft is None:
        return []
    index = {t: k for k, t in enumerate(gram.symbols)}
    out = []
    for t in list(draft)[:max(0, max_new - 1)]:
        k = index.get(int(t))
        if k is None or gram.is_end(k):
            break
        out.append(k)
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
