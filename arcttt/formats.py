"""Task <-> tokens. One token per cell, a newline token between or after rows, markers around grids.

A sequence is laid out as::

    bos  (input grid output grid end)*  input query output  [answer end]

A format is a value, :class:`FormatSpec`: the text of each marker (``bos``, ``input``, ``output``,
``end``; nothing sits between pairs beyond them), whether a grid's rows are newline-*terminated*
(``12\\n34\\n``) or newline-*separated* (``12\\n34``), and, for formats whose vocabulary is fixed,
the token strings in id order. A :class:`TokenMap` is that format's pieces as ids of one
vocabulary; a model directory records it in ``arcttt.json`` (``modeldir.write_model_meta``), so
encoding never calls a tokenizer and works alike before and after the vocabulary is cut.
:meth:`TokenMap.encode`, :meth:`TokenMap.parse_answer`, the search grammar (:meth:`TokenMap.grammar`), the TTT
loss masks and answer scoring all follow the token map's ``rows``.

Formats, by name (:data:`SPECS`):
- ``compact``: 16 tokens of its own (digits, newline, I/O/end markers, bos, pad), rows terminated.
- ``chat``: ChatML turns, a user turn per input and an assistant turn per output, each grid's rows
  terminated and each ``<|im_end|>`` followed by a newline (arcttt's own Qwen-style layout).
- ``nvarc``: NVARC's Qwen3-4B checkpoint exactly as trained (repository 1ytic/NVARC): per pair
  ``<|im_start|>user\\n{in}<|im_end|><|im_start|>assistant\\n{out}<|im_end|>``, rows separated (no
  newline after the last row), nothing after ``<|im_end|>``, no bos, no system turn; a fixed
  16-token vocabulary (digits = ids 0-9, ``Ċ`` 10, ``user`` 11, ``assistant`` 12,
  ``<|endoftext|>`` 13 = pad, ``<|im_start|>`` 14, ``<|im_end|>`` 15 = eos).
- ``architects``: the ARChitects' models (da-fr/arc-prize-2024): the tokenizer's bos and the 48
  letters ``ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz`` once, then per pair ``I{in}\\n+/-=O{out}\\n``
  and the tokenizer's eos, rows joined by ``\\n``; written here as rows terminated with the output
  marker ``+/-=O`` and the end marker eos (the same text, and the answer's end is unambiguous).

:meth:`TokenMap.encode`, :meth:`TokenMap.parse_answer`, :meth:`TokenMap.grid_len` and the rest of
a map's methods are shared with ``templates.TemplateMap`` (the template formats ``mit`` and
``omni-arc``, over the model's own vocabulary): a caller calls ``tm.encode(...)`` whatever the
format, and the module-level :func:`encode`, :func:`parse_answer`, :func:`answer_ids` and
:func:`grid_len` are the same methods as functions of the map.

:func:`derive_token_map` derives a token format's ids in a tokenizer (``tokenizer.py``) and checks
that every digit and marker round-trips (encodes to ids that decode to the same text);
:func:`check_token_map` compares a recorded map with the tokenizer's, naming the marker and both id
sequences on a mismatch. A format's own vocabulary and small local tokenizer (tiny test models, cut
vocabularies; no download) are ``tokenizer.py``'s. Any format by name, token or template:
``modeldir.token_map_from_tokenizer`` and ``modeldir.build_tokenizer``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from arcttt.data import MAX_SIDE, Pair
from arcttt.tokenizer import (COMPACT_TOKENS, NVARC_TOKENS, FormatError, TextTokenizer, as_text_tokenizer,
                              fixture_tokenizer)
from arcttt.tree import DigitGrammar

ROWS = ("terminated", "separated")

ARCHITECTS_PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"


@dataclass(frozen=True)
class FormatSpec:
    """A format as text. ``{bos}``, ``{eos}`` and ``{pad}`` in a marker stand for the tokenizer's own
    bos/eos/pad token (the pad falls back to eos)."""

    name: str
    bos: str
    input: str
    output: str
    end: str
    rows: str
    """terminated: a newline after every row; separated: newlines only between rows."""
    pad: str = "{pad}"
    vocabulary: tuple[str, ...] | None = None
    """The format's own vocabulary (token strings in id order), for :func:`own_token_map` and
    :func:`detect_format` (``tokenizer.fixture_tokenizer`` builds it); None: the model's own
    vocabulary."""
    fixed_ids: bool = False
    """The vocabulary's ids are part of the format (a model trained on it): a tokenizer that gives
    other ids for a piece is refused."""
    whole_markers: bool = False
    """Markers are single vocabulary entries, found by their spelling when text encoding splits them."""

    def __post_init__(self):
        if self.rows not in ROWS:
            raise FormatError(f"format {self.name}: rows must be one of {ROWS}, got {self.rows!r}")
        if not self.output or not self.end:
            raise FormatError(f"format {self.name}: needs non-empty output and end markers")


SPECS: dict[str, FormatSpec] = {s.name: s for s in (
    FormatSpec("compact", bos="<s>", input="<I>", output="<O>", end="<E>", rows="terminated", pad="<pad>",
               vocabulary=COMPACT_TOKENS, whole_markers=True),
    FormatSpec("chat", bos="", input="<|im_start|>user\n", output="<|im_end|>\n<|im_start|>assistant\n",
               end="<|im_end|>\n", rows="terminated"),
    FormatSpec("nvarc", bos="", input="<|im_start|>user\n", output="<|im_end|><|im_start|>assistant\n",
               end="<|im_end|>", rows="separated", pad="<|endoftext|>", vocabulary=NVARC_TOKENS, fixed_ids=True),
    FormatSpec("architects", bos="{bos}" + ARCHITECTS_PREPROMPT, input="I", output="+/-=O", end="{eos}",
               rows="terminated"),
)}
TOKEN_FORMATS = tuple(SPECS)
"""The formats of one token per cell (digits, a newline and markers): the 12-symbol search."""
TEMPLATE_FORMATS = ("mit", "omni-arc")
"""The formats defined by a template over the model's own vocabulary (``templates.TemplateSpec``)."""
FORMATS = (*TOKEN_FORMATS, *TEMPLATE_FORMATS)
# kept for callers of the first version: the chat format's marker texts
CHAT_PIECES = {k: getattr(SPECS["chat"], k) for k in ("bos", "input", "output", "end")}


def spec(name: str) -> FormatSpec:
    if name in TEMPLATE_FORMATS:
        raise FormatError(f"{name} is a template format (the model's own vocabulary, text grids): it has no "
                          f"one-token-per-cell spec; only {', '.join(TOKEN_FORMATS)} do")
    if name not in SPECS:
        raise FormatError(f"unknown format {name!r}; known: {', '.join(FORMATS)}")
    return SPECS[name]


# --- encoded sequences and parse failures (what both kinds of map give) ---------------------------

@dataclass
class Encoded:
    """Token ids of one sequence, the mask of positions that carry loss, and the prompt length
    (the answer, if any, starts at ``prompt_len``)."""

    ids: np.ndarray                      # int64 [n]
    loss_mask: np.ndarray                # bool [n]: True where the token is a training target
    prompt_len: int
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ParseFailure:
    """Why generated tokens are not a grid: empty, ragged, stray token, too large, no end."""

    reason: str

    def __bool__(self) -> bool:  # a failure is falsy, so `if grid := ...` style checks read well
        return False


class FormatMap(Protocol):
    """What every format's map offers, :class:`TokenMap` and ``templates.TemplateMap`` alike: the
    ids of its fixed pieces, and the methods that encode, parse and measure in that format. Code
    that takes a map calls these and never asks which kind it holds."""

    format: str
    bos: tuple[int, ...]
    output: tuple[int, ...]
    end: tuple[int, ...]
    pad: int

    @property
    def used_ids(self) -> list[int]: ...

    def to_json(self) -> dict: ...

    def encode(self, demos: Sequence[Pair], query: np.ndarray, answer: np.ndarray | None = None, *,
               loss_on_demo_outputs: bool = False, loss_on_first_output: bool = False) -> Encoded: ...

    def answer_ids(self, grid: np.ndarray) -> np.ndarray: ...

    def parse_answer(self, ids: Sequence[int], *, require_end: bool = False) -> np.ndarray | ParseFailure: ...

    def grid_len(self, shape: tuple[int, int]) -> int: ...

    def overheads(self) -> tuple[int, int]: ...

    def max_answer_len(self) -> int: ...

    def answer_room(self, shape: tuple[int, int]) -> int: ...

    def grammar(self) -> Any: ...


@dataclass(frozen=True)
class TokenMap:
    """Token ids of every piece of a format for one vocabulary."""

    format: str
    digits: tuple[int, ...]   # ids of "0".."9"
    newline: int
    bos: tuple[int, ...]
    input: tuple[int, ...]    # marker before an input grid
    output: tuple[int, ...]   # marker before an output grid
    end: tuple[int, ...]      # marker after an output grid (end of answer)
    pad: int
    rows: str = "terminated"  # newline after every row, or only between rows

    def __post_init__(self):
        if self.format not in FORMATS:
            raise FormatError(f"unknown format {self.format!r}; known: {', '.join(FORMATS)}")
        if len(self.digits) != 10 or len(set(self.digits)) != 10:
            raise FormatError("a token map needs 10 distinct digit ids")
        if not self.end or not self.output:
            raise FormatError("a token map needs non-empty output and end markers")
        if self.rows not in ROWS:
            raise FormatError(f"a token map's rows must be one of {ROWS}, got {self.rows!r}")
        if self.end[0] in (*self.digits, self.newline):
            raise FormatError("the end marker must not start with a digit or the newline (the answer's end "
                              "would be ambiguous)")

    @property
    def separated(self) -> bool:
        return self.rows == "separated"

    @property
    def used_ids(self) -> list[int]:
        """Every id the format can emit, sorted (what a shrunk vocabulary keeps)."""
        ids = {*self.digits, self.newline, *self.bos, *self.input, *self.output, *self.end, self.pad}
        return sorted(ids)

    @property
    def answer_symbols(self) -> list[int]:
        """Ids valid while generating an answer: digits, newline and the first end token."""
        return [*self.digits, self.newline, self.end[0]]

    def grammar(self) -> DigitGrammar:
        """The answer search's grammar over :attr:`answer_symbols` (``tree.DigitGrammar``)."""
        return DigitGrammar(tuple(self.answer_symbols), self.separated)

    def grid_len(self, shape: tuple[int, int]) -> int:
        """Tokens of a grid of ``shape``: its cells and its newlines."""
        h, w = shape
        return h * (w + 1) - (1 if self.separated else 0)

    def answer_ids(self, grid: np.ndarray) -> np.ndarray:
        """What the model should generate after a prompt: the grid then the end marker."""
        return np.concatenate([grid_ids(grid, self), np.asarray(self.end, dtype=np.int64)])

    def overheads(self) -> tuple[int, int]:
        """Tokens a demonstration adds beside its two grids (its markers), and the rest of a
        sequence beside its query and answer grids (bos and the query's markers)."""
        demo = len(self.input) + len(self.output) + len(self.end)
        return demo, len(self.bos) + demo

    def max_answer_len(self) -> int:
        """Tokens of the largest possible answer: a 30x30 grid and the end marker."""
        return self.grid_len((MAX_SIDE, MAX_SIDE)) + len(self.end)

    def answer_room(self, shape: tuple[int, int]) -> int:
        """Tokens an answer of ``shape`` takes, end marker included (exact)."""
        return self.grid_len(shape) + len(self.end)

    def encode(self, demos: Sequence[Pair], query: np.ndarray, answer: np.ndarray | None = None, *,
               loss_on_demo_outputs: bool = False, loss_on_first_output: bool = False) -> Encoded:
        """Encode demonstrations, a query input and optionally its answer.

        Loss falls on the answer and its end marker; with ``loss_on_demo_outputs`` also on every
        demonstration output (and end marker) after the first, and with ``loss_on_first_output`` too
        on the first (NVARC trains on every output).
        """
        pieces: list = []
        losses: list[bool] = []  # one per piece; the mask is expanded once at the end (TTT data is hot)

        def add(ids, loss: bool = False):
            pieces.append(ids)
            losses.append(loss)

        add(self.bos)
        for k, pair in enumerate(demos):
            demo_loss = loss_on_demo_outputs and (k > 0 or loss_on_first_output)
            add(self.input)
            add(grid_ids(pair.input, self))
            add(self.output)
            add(grid_ids(pair.output, self), loss=demo_loss)
            add(self.end, loss=demo_loss)
        add(self.input)
        add(grid_ids(query, self))
        add(self.output)
        n_prompt = len(pieces)
        if answer is not None:
            add(grid_ids(answer, self), loss=True)
            add(self.end, loss=True)
        lengths = [len(p) for p in pieces]
        ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])
        return Encoded(ids, np.repeat(np.asarray(losses, dtype=bool), lengths), sum(lengths[:n_prompt]))

    def parse_answer(self, ids: Sequence[int], *, require_end: bool = False) -> np.ndarray | ParseFailure:
        """Generated ids (after the prompt) back to a grid, or a typed :class:`ParseFailure`.

        Reads up to the first token of the end marker. Terminated rows: every row ends with a newline.
        Separated rows: newlines only between rows (the last row ends at the end marker). All rows
        have the same width, 1-30 cells, at most 30 rows.
        """
        ids = [int(i) for i in ids]
        end_at = ids.index(self.end[0]) if self.end[0] in ids else None
        if end_at is None and require_end:
            return ParseFailure("no end marker")
        body = ids[:end_at] if end_at is not None else ids
        digit = {d: v for v, d in enumerate(self.digits)}
        rows: list[list[int]] = []
        row: list[int] = []
        for t in body:
            if t == self.newline:
                if not row:
                    return ParseFailure("empty row")
                rows.append(row)
                row = []
            elif t in digit:
                row.append(digit[t])
            else:
                return ParseFailure(f"stray token {t}")
            if len(row) > MAX_SIDE or len(rows) > MAX_SIDE:
                return ParseFailure(f"larger than {MAX_SIDE}x{MAX_SIDE}")
        if self.separated:
            if not row:
                return ParseFailure("empty row" if rows else "empty")
            rows.append(row)
            if len(rows) > MAX_SIDE:
                return ParseFailure(f"larger than {MAX_SIDE}x{MAX_SIDE}")
        elif row:
            return ParseFailure("last row not closed by a newline")
        if not rows:
            return ParseFailure("empty")
        if any(len(r) != len(rows[0]) for r in rows):
            return ParseFailure("ragged rows")
        return np.array(rows, dtype=np.uint8)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TokenMap:
        if not isinstance(obj, dict):
            raise FormatError(f"token map is not an object (got {type(obj).__name__})")

        def ids(name: str) -> tuple[int, ...]:
            value = obj[name]
            value = [value] if name in ("newline", "pad") else value
            if not isinstance(value, list) or not all(type(i) is int and i >= 0 for i in value):
                raise FormatError(f"token map field {name} must hold token ids (integers >= 0), got "
                                  f"{str(value)[:60]}")
            return tuple(value)

        try:
            return cls(format=obj["format"], digits=ids("digits"), newline=ids("newline")[0], bos=ids("bos"),
                       input=ids("input"), output=ids("output"), end=ids("end"), pad=ids("pad")[0],
                       rows=obj.get("rows", "terminated"))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, FormatError):
                raise
            raise FormatError(f"token map is missing or has a bad field: {e}") from None


def compact_token_map() -> TokenMap:
    """The compact format's map for its own 16-token vocabulary (ids = positions in COMPACT_TOKENS)."""
    i = {t: n for n, t in enumerate(COMPACT_TOKENS)}
    return TokenMap("compact", tuple(range(10)), i["\n"], (i["<s>"],), (i["<I>"],), (i["<O>"],),
                    (i["<E>"],), i["<pad>"])


# --- a token format's ids in a tokenizer -----------------------------------------------------------

def _marker_text(fmt: FormatSpec, text: str, tok: TextTokenizer, what: str) -> str:
    for role in ("bos", "eos", "pad"):
        key = "{" + role + "}"
        if key in text:
            value = getattr(tok, role) or (tok.eos if role == "pad" else None)
            if value is None:
                raise FormatError(f"tokenizer {tok.name}: has no {role} token, which the {fmt.name} format's "
                                  f"{what} marker needs")
            text = text.replace(key, value)
    return text


def _derive(fmt: FormatSpec, tok: TextTokenizer) -> TokenMap:
    """A format's ids in a tokenizer: digits and newline single tokens, markers that round-trip."""

    def single(text: str, why: str) -> int:
        try:
            ids = tok.encode(text)
        except FormatError as e:
            ids, got = None, f"cannot encode it: {e}"
        else:
            got = f"encodes to {ids}"
        if ids is not None and len(ids) == 1 and tok.decode(ids) == text:
            return ids[0]
        if fmt.whole_markers and tok.token_to_id(text) is not None:
            return tok.token_to_id(text)  # markers are never typed as text: a vocabulary entry is enough
        raise FormatError(f"tokenizer {tok.name}: {text!r} is not a single known token ({got}); "
                          f"the {fmt.name} format needs {why}")

    def piece(what: str) -> tuple[int, ...]:
        text = _marker_text(fmt, getattr(fmt, what), tok, what)
        if not text:
            return ()
        if fmt.whole_markers:
            return (single(text, f"its {what} marker {text!r} as one token "
                                 f"(build_tokenizer('{fmt.name}') makes them)"),)
        ids = tok.encode(text)
        back = tok.decode(ids)
        if back != text:
            raise FormatError(f"tokenizer {tok.name}: the {fmt.name} format's {what} marker {text!r} encodes to "
                              f"{ids}, which decodes to {back!r}")
        return tuple(ids)

    digits = tuple(single(str(d), "every digit as one token") for d in range(10))
    newline = single("\n", "the newline as one token")
    markers = {what: piece(what) for what in ("input", "output", "end", "bos")}
    pad_text = _marker_text(fmt, fmt.pad, tok, "pad")
    pad = tok.token_to_id(pad_text)
    if pad is None:
        raise FormatError(f"tokenizer {tok.name}: the pad token {pad_text!r} is not in its vocabulary")
    return TokenMap(fmt.name, digits, newline, pad=int(pad), rows=fmt.rows, **markers)


def derive_token_map(format_name: str, tokenizer: Any) -> TokenMap:
    """The ids of every piece of the token format ``format_name`` in a tokenizer (a
    :class:`TextTokenizer`, a ``tokenizers.Tokenizer`` or a transformers fast tokenizer).

    Every digit and the newline must be one token; every marker must round-trip (its ids decode
    to its text); a format with fixed ids (``nvarc``) must get exactly its own ids. Raises
    :class:`FormatError` naming the piece and the ids. (Any format by name, template formats too:
    ``modeldir.token_map_from_tokenizer``.)
    """
    fmt = spec(format_name)
    tm = _derive(fmt, as_text_tokenizer(tokenizer))
    if fmt.fixed_ids:
        check_token_map(tm, own_token_map(fmt.name), got_from="this tokenizer",
                        expected_from=f"the {fmt.name} format's own vocabulary")
    return tm


@functools.lru_cache(maxsize=None)
def own_token_map(format_name: str) -> TokenMap:
    """A format's token map over its own vocabulary (:attr:`FormatSpec.vocabulary`)."""
    fmt = spec(format_name)
    if fmt.vocabulary is None:
        raise FormatError(f"the {fmt.name} format has no vocabulary of its own: it uses the model's")
    return _derive(fmt, as_text_tokenizer(fixture_tokenizer(fmt.name)))


def _piece_text(format_name: str, name: str) -> str:
    """A token format's text of a piece, to name it in an error ("" for a template format's)."""
    if format_name not in SPECS:
        return ""
    if name == "digits":
        return "0-9"
    if name == "newline":
        return repr("\n")
    if name in ("bos", "input", "output", "end", "pad"):
        return repr(getattr(SPECS[format_name], name))
    return ""


def check_token_map(got: FormatMap, expected: FormatMap, *, got_from: str, expected_from: str) -> None:
    """Raise :class:`FormatError` on the first piece whose ids differ (of either kind of map, by
    their ``to_json``), naming the piece, a token format's text of it and both id sequences."""
    def show(v):
        return list(v) if isinstance(v, tuple) else v

    a, b = got.to_json(), expected.to_json()
    for name in ("format", "rows", *b):
        if a.get(name) != b.get(name):
            label = " ".join(filter(None, (name, _piece_text(expected.format, name))))
            raise FormatError(f"{label} is {show(a.get(name))} in {got_from} but {show(b.get(name))} "
                              f"in {expected_from}")


def detect_format(tokenizer: Any) -> str | None:
    """The format a tokenizer's vocabulary pins down, if any: one with fixed ids whose vocabulary
    is exactly this one (NVARC's 16 tokens), else None."""
    vocab = as_text_tokenizer(tokenizer).vocab()
    for fmt in SPECS.values():
        if fmt.fixed_ids and fmt.vocabulary and vocab == {t: i for i, t in enumerate(fmt.vocabulary)}:
            return fmt.name
    return None


# --- encoding and parsing, as functions of the map ------------------------------------------------

def grid_ids(grid: np.ndarray, tm: TokenMap) -> np.ndarray:
    """A grid's tokens in a token format: each row's digits, with the newline token after every row
    (terminated) or between rows (separated)."""
    g = np.asarray(grid)
    rows = np.empty((g.shape[0], g.shape[1] + 1), dtype=np.int64)
    rows[:, :-1] = np.asarray(tm.digits, dtype=np.int64)[g]
    rows[:, -1] = tm.newline
    flat = rows.reshape(-1)
    return flat[:-1] if tm.separated else flat


def grid_len(shape: tuple[int, int], tm: FormatMap) -> int:
    """:meth:`TokenMap.grid_len`: tokens of a grid of ``shape`` (a template format: an upper bound)."""
    return tm.grid_len(shape)


def answer_ids(grid: np.ndarray, tm: FormatMap) -> np.ndarray:
    """:meth:`TokenMap.answer_ids`: what the model should generate after a prompt."""
    return tm.answer_ids(grid)


def encode(demos: Sequence[Pair], query: np.ndarray, tm: FormatMap, answer: np.ndarray | None = None,
           *, loss_on_demo_outputs: bool = False, loss_on_first_output: bool = False) -> Encoded:
    """:meth:`TokenMap.encode`: demonstrations, a query input and optionally its answer, in ``tm``'s format."""
    return tm.encode(demos, query, answer, loss_on_demo_outputs=loss_on_demo_outputs,
                     loss_on_first_output=loss_on_first_output)


def parse_answer(ids: Sequence[int], tm: FormatMap, *, require_end: bool = False) -> np.ndarray | ParseFailure:
    """:meth:`TokenMap.parse_answer`: generated ids (after the prompt) back to a grid, or a :class:`ParseFailure`."""
    return tm.parse_answer(ids, require_end=require_end)
