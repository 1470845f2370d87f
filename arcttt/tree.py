"""The tree search over answer symbols, without a model: which symbols a node may continue with (a
grammar), which children are worth exploring, the depth-first walk, and the draft bookkeeping that
lets one forward answer many nodes. Numpy only; ``search.py`` drives it with a model and a cache.

- A grammar is what the walk asks at each node: ``symbols`` (the token ids it may feed, the end
  token last), ``start``, ``allowed(state)`` (symbol indices), ``advance(state, symbol)``,
  ``is_end(symbol)`` and ``max_tokens`` (the longest answer, end included); a format's map gives its
  own (``tm.grammar()``). :class:`DigitGrammar` (the token formats: 10 digits, the newline, the end)
  prunes what :func:`arcttt.formats.parse_answer` would reject anyway: no empty row, every row as
  wide as the first, at most 30 x 30, the end only after a whole row (after its newline when rows are
  newline-terminated, in its place when they are separated); it bounds every answer to
  ``MAX_ANSWER_TOKENS`` = 30 * 31 + 1 tokens. Without renormalisation it changes nothing in the kept
  completions, it only saves forward passes. The template formats' grammar is
  ``templates.TemplateGrammar`` (a character automaton over the model's own tokens).
- The most likely child is explored first. A branch is cut as soon as its cumulative probability
  falls below the threshold (probabilities only shrink along a path, so nothing above it is lost).
  Greedy decoding is the degenerate case "one child per node, no threshold". ``renormalize``
  renormalises over the symbols the grammar allows at each step (a completion can then only gain).
- :func:`tree_search` is a generator: it asks for the symbols' log-probabilities after a node and is
  sent them back, so one driver can run many searches in lock-step, and a node's answer can come
  from a model call, a draft's earlier forward (:class:`DraftWalk`) or a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generator, Sequence

import numpy as np

from arcttt.data import MAX_SIDE

MAX_ANSWER_TOKENS = MAX_SIDE * (MAX_SIDE + 1) + 1  # 30 rows of 30 cells and a newline, then the end
N_SYMBOLS = 12  # answer symbols, in TokenMap.answer_symbols order: digits 0-9, newline, end
NEWLINE, END = 10, 11

# Digit grammar state at a node: (cells in the open row, width of the first row or 0, closed rows).
START = (0, 0, 0)


def digit_allowed(state: tuple[int, int, int], separated: bool = False) -> list[int]:
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


def digit_advance(state: tuple[int, int, int], sym: int) -> tuple[int, int, int]:
    """The digit grammar's state after ``sym`` (a digit or the newline)."""
    col, width, rows = state
    if sym == NEWLINE:
        return 0, width or col, rows + 1
    return col + 1, width, rows


@dataclass(frozen=True)
class DigitGrammar:
    """The grammar of the token formats (one token per cell): the 12 answer symbols
    (``TokenMap.answer_symbols``) and the automaton of :func:`digit_allowed` / :func:`digit_advance`."""

    symbols: tuple[int, ...]
    separated: bool = False
    start: tuple = START
    max_tokens: int = MAX_ANSWER_TOKENS

    def allowed(self, state) -> list[int]:
        return digit_allowed(state, self.separated)

    def advance(self, state, sym: int):
        return digit_advance(state, sym)

    def is_end(self, sym: int) -> bool:
        return sym == END


def children(lp: np.ndarray, cum: float, state, min_lp: float, grammar: bool, renormalize: bool,
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


def tree_search(root_lp: np.ndarray, found: list[tuple[list[int], float]], *, min_lp: float,
                max_new: int, grammar: bool, renormalize: bool, greedy: bool,
                gram=None) -> Generator[tuple[int, int], np.ndarray, None]:
    """One view's depth-first search as a generator, so that one driver can run many in lock-step.

    ``root_lp``: the symbols' log-probabilities after the prompt. It yields ``(depth, symbol)``:
    "feed this symbol as answer token number ``depth``" (the cache must then hold the prompt and the
    first ``depth`` tokens of the current path), and is sent back the symbols' log-probabilities
    after that token. Finished paths (symbol indices, end included; logprob) are appended to
    ``found``, at most ``max_new`` symbols each. Iterative, so that 931-token answers do not hit
    Python's recursion limit. ``gram``: the grammar (default: the token formats' with rows
    terminated).
    """
    gram = gram if gram is not None else DigitGrammar(tuple(range(N_SYMBOLS)))
    path: list[int] = []
    stack = [(children(root_lp, 0.0, gram.start, min_lp, grammar, renormalize, greedy, gram), gram.start)]
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
        stack.append((children(lp, cum, state, min_lp, grammar, renormalize, greedy, gram), state))


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


class DraftWalk:
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
