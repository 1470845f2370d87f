"""The tree search without a model (arcttt/tree.py): exact against brute-force enumeration of every
symbol sequence under random next-symbol distributions -- the completions and their probabilities,
and the very nodes it asks about -- with and without the grammar, renormalised, greedy, rows
terminated or separated, and walked through drafts; the digit grammar against
``formats.parse_answer``; the draft walk by hand."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.formats import answer_ids, compact_token_map, parse_answer
from arcttt.tree import (END, MAX_ANSWER_TOKENS, NEWLINE, START, DigitGrammar, DraftWalk, digit_advance,
                         digit_allowed, draft_symbols, tree_search)

TM = compact_token_map()
SYMBOLS = TM.answer_symbols  # symbol index -> token id: digits, newline, end
SEPARATED = dataclasses.replace(TM, rows="separated")  # rows newline-separated (NVARC): the end closes the last


def table(seed: int, scale: float = 2.0, vocab: int = 16):
    """A fake next-symbol distribution: the 12 symbols' log-probabilities after a path (symbol
    indices), drawn from a hash of the path, from a softmax over ``vocab`` tokens (the mass on the
    other tokens is lost, as with a model); leaning towards short well-formed answers."""

    @functools.lru_cache(maxsize=None)
    def lp(path: tuple) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(np.asarray(path, np.int64).tobytes())])
        logits = rng.normal(size=vocab) * scale
        after_newline = bool(path) and path[-1] == NEWLINE
        logits[END] += 2.5 if after_newline else -1.0
        logits[NEWLINE] += 0.0 if after_newline or not path else 1.5
        return (logits - np.logaddexp.reduce(logits))[:12]

    return lp


def drive(lp, gram, *, min_lp: float, max_new: int, grammar: bool = True, renormalize: bool = False,
          greedy: bool = False, drafts=(), chunk: int = 2):
    """The tree search fed from ``lp`` through a :class:`DraftWalk`, as the model drivers feed it
    from a cache: (completions, the paths it asked about, the "forwards" the walk could not answer).
    Every answer the walk gives must be the asked node's own log-probabilities."""
    found, asked, calls = [], [], 0
    walk = DraftWalk(drafts, chunk)
    gen = tree_search(lp(()), found, min_lp=min_lp, max_new=max_new, grammar=grammar,
                      renormalize=renormalize, greedy=greedy, gram=gram)
    req = next(gen, None)
    while req is not None:
        got = walk.ask(*req)
        path = tuple(walk.path)
        assert len(path) == req[0] + 1 and path[-1] == req[1]
        asked.append(path)
        if got is None:
            keep, syms = walk.to_feed()
            assert tuple(syms[:len(path) - keep]) == path[keep:]  # the asked symbol is fed
            calls += 1
            got = walk.fed(keep, syms, [lp(path[:keep] + tuple(syms[:i + 1])) for i in range(len(syms))])
        assert np.array_equal(got, lp(path))
        try:
            req = gen.send(got)
        except StopIteration:
            req = None
    return {tuple(p): v for p, v in found}, asked, calls


def brute_force(lp, max_new: int, min_lp: float, *, grammar: bool, renormalize: bool, tm=TM):
    """Every sequence of at most ``max_new`` symbols ending with the end, scored from ``lp`` directly:
    the kept completions ({path: logprob}) and the nodes a search must ask about (every non-end
    prefix, of at most ``max_new - 1`` symbols, allowed and above ``min_lp``)."""
    gram = tm.grammar()
    kept, nodes = {}, set()
    for n in range(max_new):
        for seq in itertools.product(range(11), repeat=n):
            total, state, ok = 0.0, gram.start, True
            for i, s in enumerate((*seq, END)):
                allowed = gram.allowed(state) if grammar else range(12)
                ok = ok and s in allowed
                vals = lp(seq[:i])
                norm = np.logaddexp.reduce(vals[list(allowed)]) if renormalize else 0.0
                total += vals[s] - norm
                if s != END:
                    state = gram.advance(state, s)
                    if ok and total >= min_lp:
                        nodes.add(seq[:i + 1])
            parses = isinstance(parse_answer([SYMBOLS[s] for s in (*seq, END)], tm, require_end=True), np.ndarray)
            if total >= min_lp and (parses or not grammar):
                kept[(*seq, END)] = total
    return kept, nodes


def greedy_path(lp, max_new: int, gram, grammar: bool):
    """The argmax over the allowed symbols at every step: the completion, or None without room."""
    path, state, total = (), gram.start, 0.0
    while True:
        allowed = gram.allowed(state) if grammar else list(range(12))
        best = allowed[int(np.argmax(lp(path)[allowed]))]
        if best == END:
            return (*path, END)
        if len(path) + 2 > max_new:
            return None
        path, state = (*path, best), gram.advance(state, best)


def assert_same(got: dict, expected: dict):
    assert set(got) == set(expected)
    for path, v in got.items():
        assert v == pytest.approx(expected[path], abs=1e-9)


# --- exact against brute force ---------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.001, 0.5), max_new=st.integers(1, 5),
       grammar=st.booleans(), renormalize=st.booleans(), separated=st.booleans())
def test_the_search_finds_exactly_brute_forces_completions_and_asks_only_its_nodes(
        seed, threshold, max_new, grammar, renormalize, separated):
    tm = SEPARATED if separated else TM
    lp, min_lp = table(seed), math.log(threshold)
    got, asked, calls = drive(lp, tm.grammar(), min_lp=min_lp, max_new=max_new, grammar=grammar,
                              renormalize=renormalize)
    kept, nodes = brute_force(lp, max_new, min_lp, grammar=grammar, renormalize=renormalize, tm=tm)
    assert_same(got, kept)
    assert sorted(asked) == sorted(nodes) and calls == len(asked)  # each node once; no draft, no memo
    if asked:  # the most likely child first
        root = lp(())
        allowed = tm.grammar().allowed(START) if grammar else range(11)
        assert asked[0] == (max((s for s in allowed if s != END), key=lambda s: root[s]),)


def test_the_brute_force_check_is_not_vacuous():
    kept, nodes = brute_force(table(3), 5, math.log(0.01), grammar=True, renormalize=False)
    assert len(kept) >= 2 and len(nodes) >= 10


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), max_new=st.integers(1, 8), grammar=st.booleans(), separated=st.booleans())
def test_greedy_is_the_argmax_path(seed, max_new, grammar, separated):
    gram = (SEPARATED if separated else TM).grammar()
    lp = table(seed)
    got, asked, _ = drive(lp, gram, min_lp=-math.inf, max_new=max_new, grammar=grammar, greedy=True)
    path = greedy_path(lp, max_new, gram, grammar)
    assert list(got) == ([] if path is None else [path])
    if path is not None:
        assert got[path] == pytest.approx(sum(lp(path[:i])[s] for i, s in enumerate(path)), abs=1e-9)
    assert all(a == b[:len(a)] for a, b in zip(asked, asked[1:]))  # one child a node: a single path


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), threshold=st.floats(0.001, 0.3), max_new=st.integers(2, 6),
       chunk=st.integers(1, 4), data=st.data())
def test_drafts_change_nothing_but_the_calls(seed, threshold, max_new, chunk, data):
    """Drafts (random ones, and completions the plain search found, perhaps cut or bent) give the
    same completions with the same probabilities, every answer the node's own, in no more calls."""
    lp, gram, min_lp = table(seed), TM.grammar(), math.log(threshold)
    plain, asked, plain_calls = drive(lp, gram, min_lp=min_lp, max_new=max_new)
    found = [list(p[:-1]) for p in plain]
    symbol = st.integers(0, 10)
    drafts = data.draw(st.lists(st.one_of(st.lists(symbol, max_size=8), st.sampled_from(found or [[]]),
                                          st.sampled_from(found or [[]]).flatmap(
                                              lambda d: st.lists(symbol, max_size=3).map(lambda x: d[:2] + x))),
                                max_size=4))
    drafted, drafted_asked, calls = drive(lp, gram, min_lp=min_lp, max_new=max_new, drafts=drafts, chunk=chunk)
    assert drafted == plain and drafted_asked == asked and calls <= plain_calls
    if any(len(d) >= 2 and d in found for d in drafts):  # a right draft saves calls
        assert calls < plain_calls


# --- the digit grammar is parse_answer's -------------------------------------------------------------

def test_separated_grammar_by_hand():
    state = (0, 0, 0)
    assert digit_allowed(state, True) == list(range(10))            # an answer starts with a cell
    state = digit_advance(state, 3)
    assert digit_allowed(state, True) == [*range(10), NEWLINE, END]  # one cell: go on, next row, or end
    state = digit_advance(digit_advance(state, NEWLINE), 4)         # second row, as wide as the first
    assert digit_allowed(state, True) == [NEWLINE, END]
    assert digit_allowed(digit_advance(state, NEWLINE), True) == [*range(10)]  # never an empty row, never "\n<E>"
    thirty = (1, 1, 29)                                               # the 30th row open: it can only end
    assert digit_allowed(thirty, True) == [END] and NEWLINE in digit_allowed(thirty, False)


def grammar_accepts(symbols: list[int]) -> bool:
    state = START
    for s in symbols:
        if s not in digit_allowed(state):
            return False
        if s == END:
            return True
        state = digit_advance(state, s)
    return False


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.lists(st.integers(0, 11), max_size=40),
    st.tuples(st.integers(1, 30), st.integers(1, 30), st.integers(0, 9), st.lists(st.integers(0, 11), max_size=3),
              st.integers(0, 999)),
))
def test_grammar_accepts_exactly_what_parses(example):
    if isinstance(example, tuple):  # a valid grid's answer, perhaps with a few symbols spliced in
        h, w, v, noise, at = example
        syms = [SYMBOLS.index(t) for t in answer_ids(np.full((h, w), v, np.uint8), TM)]
        at = at % len(syms)
        syms = syms[:at] + noise + syms[at:]
    else:
        syms = example
    if END in syms:
        syms = syms[:syms.index(END) + 1]
    ids = [SYMBOLS[s] for s in syms]
    assert grammar_accepts(syms) == isinstance(parse_answer(ids, TM, require_end=True), np.ndarray)


def test_a_token_maps_grammar():
    assert TM.grammar() == DigitGrammar(tuple(TM.answer_symbols)) and not TM.grammar().separated
    assert SEPARATED.grammar().separated and SEPARATED.grammar().max_tokens == MAX_ANSWER_TOKENS == 30 * 31 + 1
    gram = TM.grammar()
    assert gram.is_end(END) and not gram.is_end(NEWLINE) and gram.start == START


def test_draft_symbols_by_hand():
    gram = TM.grammar()
    ids = answer_ids(np.array([[1, 2], [3, 4]], np.uint8), TM)         # 1 2 \n 3 4 \n <E>
    assert draft_symbols(ids, gram, 100) == [1, 2, NEWLINE, 3, 4, NEWLINE]  # the end is never fed
    assert draft_symbols(ids, gram, 4) == [1, 2, NEWLINE]                 # room for the end kept
    assert draft_symbols([TM.digits[5], TM.output[0], TM.digits[6]], gram, 100) == [5]  # up to a non-symbol
    assert draft_symbols(None, gram, 100) == [] and draft_symbols(ids, gram, 0) == []


# --- the walk by hand ----------------------------------------------------------------------------

def test_walk_by_hand():
    a, b, c, d, x, y = (np.full(3, float(i)) for i in range(6))
    w = DraftWalk([[1, 2, 3, 4, 5, 6]], chunk=2)
    assert w.ask(0, 1) is None                         # the search took the draft's first symbol
    assert w.to_feed() == (0, [1, 2, 3])               # it, and the next chunk (2) of the draft
    assert w.fed(0, [1, 2, 3], [a, b, c]) is a
    assert w.ask(1, 2) is b and w.ask(2, 3) is c       # on the draft: no call
    assert w.ask(3, 4) is None
    assert w.to_feed() == (3, [4, 5, 6])               # as many as are verified (3), up to the draft's end
    assert w.fed(3, [4, 5, 6], [d, x, y]) is d
    assert w.ask(2, 7) is None and w.to_feed() == (2, [7])   # off the draft: cut back to [1, 2], one symbol
    assert w.fed(2, [7], [x]) is x
    assert w.ask(2, 3) is c and w.ask(3, 4) is d       # back on it: verified before, no call
    assert w.ask(4, 9) is None
    assert w.to_feed() == (2, [3, 4, 9])               # the cache holds [1, 2, 7]: feed what the path lacks
    assert w.fed(2, [3, 4, 9], [c, d, y]) is y
    assert w.ask(1, 8) is None and w.to_feed() == (1, [8])


def test_walk_with_two_drafts_by_hand():
    a, b, c, x, y = (np.full(3, float(i)) for i in range(5))
    w = DraftWalk([[1, 2, 3], [1, 5, 6]], chunk=2)
    assert w.ask(0, 1) is None and w.to_feed() == (0, [1, 2, 3])   # on both: the first one is fed
    w.fed(0, [1, 2, 3], [a, b, c])
    assert w.ask(1, 5) is None and w.to_feed() == (1, [5, 6])      # on the second only: it is fed
    assert w.fed(1, [5, 6], [x, y]) is x
    assert w.ask(2, 6) is y                                         # verified by that call
    assert w.ask(1, 2) is b and w.ask(2, 3) is c                    # the first's memo outlived the cut


def test_walk_without_a_draft_feeds_one_symbol_a_call():
    w = DraftWalk()
    for depth, sym in [(0, 4), (1, 5), (1, 6), (0, 7), (1, 5)]:
        assert w.ask(depth, sym) is None and w.to_feed() == (depth, [sym])
        w.fed(depth, [sym], [np.zeros(3)])
