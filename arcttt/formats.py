"""Task <-> tokens. One token per cell, a newline token after every row, markers around grids.

A sequence is laid out as::

    bos  (input grid output grid end)*  input query output  [answer end]

where ``input``/``output``/``end`` are marker token sequences of the format and a grid is its rows
of digit tokens, each row followed by the newline token. Token ids come from a :class:`TokenMap`,
which a model directory records in ``arcttt.json`` (see :func:`write_model_meta`), so that encoding
never calls a tokenizer and works alike before and after the vocabulary is shrunk.

Formats, by name:
- ``compact``: 16 tokens of its own (digits, newline, I/O/end markers, bos, pad), for models whose
  vocabulary is cut to exactly these (the 2025 winner's style).
- ``chat``: the markers are a chat-template model's own special tokens (see ``CHAT_PIECES``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from arcttt.data import MAX_SIDE, Pair

META_FILE = "arcttt.json"

# The compact vocabulary: token strings in id order.
COMPACT_TOKENS: tuple[str, ...] = (*"0123456789", "\n", "<I>", "<O>", "<E>", "<s>", "<pad>")

# Text of each marker piece in the chat format (Qwen/ChatML-style special tokens).
CHAT_PIECES = {
    "bos": "",
    "input": "<|im_start|>user\n",
    "output": "<|im_end|>\n<|im_start|>assistant\n",
    "end": "<|im_end|>\n",
}
FORMATS = ("compact", "chat")


class FormatError(ValueError):
    """A model directory or tokenizer that does not speak a known arcttt format."""


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

    def __post_init__(self):
        if self.format not in FORMATS:
            raise FormatError(f"unknown format {self.format!r}; known: {', '.join(FORMATS)}")
        if len(self.digits) != 10 or len(set(self.digits)) != 10:
            raise FormatError("a token map needs 10 distinct digit ids")
        if not self.end or not self.output:
            raise FormatError("a token map needs non-empty output and end markers")

    @property
    def used_ids(self) -> list[int]:
        """Every id the format can emit, sorted (what a shrunk vocabulary keeps)."""
        ids = {*self.digits, self.newline, *self.bos, *self.input, *self.output, *self.end, self.pad}
        return sorted(ids)

    @property
    def answer_ids(self) -> list[int]:
        """Ids valid while generating an answer: digits, newline and the first end token."""
        return [*self.digits, self.newline, self.end[0]]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> TokenMap:
        try:
            return cls(format=obj["format"], digits=tuple(obj["digits"]), newline=int(obj["newline"]),
                       bos=tuple(obj["bos"]), input=tuple(obj["input"]), output=tuple(obj["output"]),
                       end=tuple(obj["end"]), pad=int(obj["pad"]))
        except (KeyError, TypeError) as e:
            raise FormatError(f"token map is missing or has a bad field: {e}") from None


def compact_token_map() -> TokenMap:
    """The compact format's map for its own 16-token vocabulary (ids = positions in COMPACT_TOKENS)."""
    i = {t: n for n, t in enumerate(COMPACT_TOKENS)}
    return TokenMap("compact", tuple(range(10)), i["\n"], (i["<s>"],), (i["<I>"],), (i["<O>"],),
                    (i["<E>"],), i["<pad>"])


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


def grid_ids(grid: np.ndarray, tm: TokenMap) -> np.ndarray:
    """A grid's tokens: each row's digits followed by the newline token."""
    g = np.asarray(grid)
    lut = np.asarray(tm.digits, dtype=np.int64)
    rows = np.concatenate([lut[g], np.full((g.shape[0], 1), tm.newline, dtype=np.int64)], axis=1)
    return rows.reshape(-1)


def answer_ids(grid: np.ndarray, tm: TokenMap) -> np.ndarray:
    """What the model should generate after a prompt: the grid then the end marker."""
    return np.concatenate([grid_ids(grid, tm), np.asarray(tm.end, dtype=np.int64)])


def encode(demos: Sequence[Pair], query: np.ndarray, tm: TokenMap, answer: np.ndarray | None = None,
           *, loss_on_demo_outputs: bool = False) -> Encoded:
    """Encode demonstrations, a query input and optionally its answer.

    Loss falls on the answer and its end marker; with ``loss_on_demo_outputs`` also on every
    demonstration output (and end marker) after the first.
    """
    pieces: list[np.ndarray] = []
    masks: list[np.ndarray] = []

    def add(ids, loss: bool = False):
        ids = np.asarray(ids, dtype=np.int64)
        pieces.append(ids)
        masks.append(np.full(len(ids), loss, dtype=bool))

    add(tm.bos)
    for k, pair in enumerate(demos):
        add(tm.input)
        add(grid_ids(pair.input, tm))
        add(tm.output)
        add(answer_ids(pair.output, tm), loss=loss_on_demo_outputs and k > 0)
    add(tm.input)
    add(grid_ids(query, tm))
    add(tm.output)
    prompt_len = sum(len(p) for p in pieces)
    if answer is not None:
        add(answer_ids(answer, tm), loss=True)
    return Encoded(np.concatenate(pieces), np.concatenate(masks), prompt_len)


@dataclass(frozen=True)
class ParseFailure:
    """Why generated tokens are not a grid: empty, ragged, stray token, too large, no end."""

    reason: str

    def __bool__(self) -> bool:  # a failure is falsy, so `if grid := ...` style checks read well
        return False


def parse_answer(ids: Sequence[int], tm: TokenMap, *, require_end: bool = False) -> np.ndarray | ParseFailure:
    """Generated ids (after the prompt) back to a grid, or a typed :class:`ParseFailure`.

    Reads up to the first token of the end marker; every row must end with a newline and all rows
    must have the same width, 1-30 cells, at most 30 rows.
    """
    ids = [int(i) for i in ids]
    end_at = ids.index(tm.end[0]) if tm.end[0] in ids else None
    if end_at is None and require_end:
        return ParseFailure("no end marker")
    body = ids[:end_at] if end_at is not None else ids
    digit = {d: v for v, d in enumerate(tm.digits)}
    rows: list[list[int]] = []
    row: list[int] = []
    for t in body:
        if t == tm.newline:
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
    if row:
        return ParseFailure("last row not closed by a newline")
    if not rows:
        return ParseFailure("empty")
    if any(len(r) != len(rows[0]) for r in rows):
        return ParseFailure("ragged rows")
    return np.array(rows, dtype=np.uint8)


def write_model_meta(model_dir: str | Path, tm: TokenMap, **extra) -> Path:
    """Record in ``model_dir/arcttt.json`` which format the model speaks and its token ids."""
    path = Path(model_dir) / META_FILE
    path.write_text(json.dumps({"format": tm.format, "token_map": tm.to_json(), **extra}, indent=2))
    return path


def read_model_meta(model_dir: str | Path) -> tuple[TokenMap, dict]:
    """The token map recorded in a model directory, and the whole metadata object."""
    path = Path(model_dir) / META_FILE
    if not Path(model_dir).is_dir():
        raise FormatError(f"model directory {model_dir} does not exist")
    if not path.is_file():
        raise FormatError(f"{model_dir} has no {META_FILE}: prepare it with `arcttt prepare-weights`, "
                          "`arcttt shrink-vocab` or `arcttt make-tiny-model`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise FormatError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
                          f"known: {', '.join(FORMATS)}")
    return TokenMap.from_json(meta.get("token_map", {})), meta
