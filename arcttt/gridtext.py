"""Grids as free text: the grid writers of the template formats (``templates.TemplateSpec``), each with
its strict parser and a character-level automaton over the *answer text* the model generates.

- ``numpy`` (MIT, ekinakyurek/marc): ``str(np.array(grid))`` of a 0-9 grid, e.g. ``[[8 6]\\n [6 4]]``;
  the answer is that text and ``#``.
- ``shape-rows`` (Omni-ARC, ironbar/arc24 ``GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))``):
  a fenced block with a shape header and numbered rows, e.g. ``\\`\\`\\`grid shape: 2x2\\n1 86\\n2 64\\n\\`\\`\\```;
  the prompt ends with ``\\`\\`\\`grid``, so the answer is the rest, `` shape: 2x2\\n1 86\\n2 64\\n\\`\\`\\```.

An automaton reads the answer one character at a time: ``step(state, char)`` gives the next state
or None (no well-formed answer starts so), ``accepting(state)``: the text so far is a whole answer.
States are small tuples (hashable: the search memoises what each state allows). The automata
accept exactly the answers of 1x1 to 30x30 grids, so whatever the search finishes parses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from arcttt.data import MAX_SIDE

State = tuple


@dataclass(frozen=True)
class GridWriter:
    """How one format writes a grid, and its answer text (the grid text between the prompt's end
    and the end token)."""

    name: str
    alphabet: str
    """Every character an answer text can hold."""

    def write(self, grid: np.ndarray) -> str:
        raise NotImplementedError

    def answer_text(self, grid: np.ndarray) -> str:
        raise NotImplementedError

    def max_answer_chars(self) -> int:
        """Characters of the longest answer text: a 30 x 30 grid (every cell one digit)."""
        return len(self.answer_text(np.zeros((MAX_SIDE, MAX_SIDE), np.uint8)))

    def _read(self, text: str) -> list[list[int]]:
        """The rows a grid's text holds; ValueError naming the fault."""
        raise NotImplementedError

    def parse(self, text: str) -> np.ndarray | str:
        """A grid's text back to the grid, or why it is not one (strict: only the writer's exact text)."""
        return _checked(text, self)

    def parse_answer(self, text: str) -> np.ndarray | str:
        raise NotImplementedError

    pattern: re.Pattern = re.compile("")
    """Finds every grid's text in a prompt."""

    start: State = ()

    def step(self, state: State, char: str) -> State | None:
        raise NotImplementedError

    def accepting(self, state: State) -> bool:
        raise NotImplementedError

    def run(self, state: State | None, text: str) -> State | None:
        """The state after ``text`` from ``state``, or None."""
        for ch in text:
            if state is None:
                return None
            state = self.step(state, ch)
        return state


def _rows(grid: np.ndarray) -> list[list[int]]:
    g = np.asarray(grid)
    if g.ndim != 2 or not (1 <= g.shape[0] <= MAX_SIDE and 1 <= g.shape[1] <= MAX_SIDE):
        raise ValueError(f"not a 1x1 to {MAX_SIDE}x{MAX_SIDE} grid: shape {g.shape}")
    return [[int(v) for v in row] for row in g]


def _checked(text: str, writer: GridWriter) -> np.ndarray | str:
    """Strictness: a text parses only if writing its grid gives the text back."""
    try:
        grid = writer._read(text)
    except ValueError as e:
        return str(e)
    if len(grid) > MAX_SIDE or any(len(r) != len(grid[0]) for r in grid) or not 1 <= len(grid[0]) <= MAX_SIDE:
        return "ragged rows" if any(len(r) != len(grid[0]) for r in grid) else f"not 1x1 to {MAX_SIDE}x{MAX_SIDE}"
    g = np.array(grid, dtype=np.uint8)
    return g if writer.write(g) == text else "not the writer's exact text"


# --- numpy print (MIT) ----------------------------------------------------------------------------

# phases of the numpy automaton
_OPEN, _ROW, _CELL, _AFTER_CELL, _AFTER_ROW, _INDENT, _INDENT_DONE, _CLOSED, _DONE = range(9)


@dataclass(frozen=True)
class NumpyWriter(GridWriter):
    """``str(np.array(grid))`` of a 0-9 grid (numpy's default print options: a 30-wide row is 62
    characters, under the 75-character line width, and 900 cells are under the summary threshold,
    so no grid wraps or is summarised); MIT's answer ends with ``#``."""

    name: str = "numpy"
    alphabet: str = "0123456789[] \n#"
    pattern: re.Pattern = re.compile(r"\[\[[0-9 \[\]\n]*?\]\]")
    start: State = (_OPEN, 0, 0, 0)

    def write(self, grid: np.ndarray) -> str:
        return "[" + "\n ".join("[" + " ".join(str(v) for v in row) + "]" for row in _rows(grid)) + "]"

    def answer_text(self, grid: np.ndarray) -> str:
        return self.write(grid) + "#"

    def _read(self, text: str) -> list[list[int]]:
        if not (text.startswith("[[") and text.endswith("]]")):
            raise ValueError("not a numpy print (no [[ ... ]])")
        rows = text[1:-1].split("\n ")
        out = []
        for row in rows:
            if not (row.startswith("[") and row.endswith("]")) or not row[1:-1]:
                raise ValueError(f"bad row {row[:40]!r}")
            cells = row[1:-1].split(" ")
            if not all(len(c) == 1 and c.isdigit() and c.isascii() for c in cells):
                raise ValueError(f"bad cells in row {row[:40]!r}")
            out.append([int(c) for c in cells])
        return out

    def parse_answer(self, text: str) -> np.ndarray | str:
        if not text.endswith("#"):
            return "no # after the grid"
        return self.parse(text[:-1])

    def step(self, state: State, ch: str) -> State | None:
        phase, col, width, rows = state  # cells in the open row, first row's width (0: open), closed rows
        if phase == _OPEN:
            return (_ROW, 0, 0, 0) if ch == "[" else None
        if phase in (_ROW, _INDENT_DONE):
            return (_CELL, 0, width, rows) if ch == "[" else None
        if phase == _CELL:
            return (_AFTER_CELL, col + 1, width, rows) if ch.isdigit() and ch.isascii() else None
        if phase == _AFTER_CELL:
            if ch == " " and col < (width or MAX_SIDE):
                return _CELL, col, width, rows
            if ch == "]" and (width == 0 or col == width):
                return _AFTER_ROW, 0, width or col, rows + 1
            return None
        if phase == _AFTER_ROW:
            if ch == "\n" and rows < MAX_SIDE:
                return _INDENT, 0, width, rows
            return (_CLOSED, 0, width, rows) if ch == "]" else None
        if phase == _INDENT:
            return (_INDENT_DONE, 0, width, rows) if ch == " " else None
        if phase == _CLOSED:
            return (_DONE, 0, width, rows) if ch == "#" else None
        return None

    def accepting(self, state: State) -> bool:
        return state[0] == _DONE


# --- fenced block with a shape header and numbered rows (Omni-ARC) ---------------------------------

_HEAD = " shape: "
_FENCE = "```"
_H, _W, _PREFIX, _ROWNUM, _CELLS, _FENCE_P = range(6)


@dataclass(frozen=True)
class ShapeRowsWriter(GridWriter):
    """arc24's ``GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))``: three backticks,
    ``grid shape: HxW``, then each row as its 1-based number, a space and its digits, then the
    closing fence. The prompt ends with ``\\`\\`\\`grid``: the answer is the rest of the block."""

    name: str = "shape-rows"
    alphabet: str = "0123456789 shapex:\n`"
    pattern: re.Pattern = re.compile(r"```grid shape: [0-9]+x[0-9]+\n[0-9 \n]*?\n```")
    start: State = (_PREFIX, 0, 0, 0, 0)

    def write(self, grid: np.ndarray) -> str:
        rows = _rows(grid)
        body = "\n".join(f"{i + 1} " + "".join(str(v) for v in row) for i, row in enumerate(rows))
        return f"```grid shape: {len(rows)}x{len(rows[0])}\n{body}\n```"

    def answer_text(self, grid: np.ndarray) -> str:
        return self.write(grid)[len("```grid"):]

    def _read(self, text: str) -> list[list[int]]:
        m = re.fullmatch(r"```grid shape: ([0-9]+)x([0-9]+)\n(.*)\n```", text, flags=re.S)
        if not m:
            raise ValueError("not a ```grid shape: HxW block")
        h, w = int(m.group(1)), int(m.group(2))
        out = []
        for i, line in enumerate(m.group(3).split("\n")):
            num, _, cells = line.partition(" ")
            if num != str(i + 1) or not cells.isdigit() or not cells.isascii():
                raise ValueError(f"bad row {i + 1}: {line[:40]!r}")
            out.append([int(c) for c in cells])
        if len(out) != h or any(len(r) != w for r in out):
            raise ValueError(f"the rows do not make the {h}x{w} shape the header says")
        return out

    def parse_answer(self, text: str) -> np.ndarray | str:
        return self.parse("```grid" + text)

    def step(self, state: State, ch: str) -> State | None:
        phase, i, h, w, r = state
        digit = ch.isdigit() and ch.isascii()
        if phase == _PREFIX:
            if ch != _HEAD[i]:
                return None
            return (_H, 0, 0, 0, 0) if i + 1 == len(_HEAD) else (_PREFIX, i + 1, 0, 0, 0)
        if phase in (_H, _W):  # i: the number read so far (0: none yet; no leading zero)
            if digit and (i or ch != "0") and i * 10 + int(ch) <= MAX_SIDE:
                return phase, i * 10 + int(ch), h, w, r
            if phase == _H and ch == "x" and i:
                return _W, 0, i, 0, 0
            if phase == _W and ch == "\n" and i:
                return _ROWNUM, 0, h, i, 1
            return None
        if phase == _ROWNUM:  # i: characters of the row's number read
            num = str(r)
            if i < len(num):
                return (_ROWNUM, i + 1, h, w, r) if ch == num[i] else None
            return (_CELLS, 0, h, w, r) if ch == " " else None
        if phase == _CELLS:  # i: cells of row r read
            if digit and i < w:
                return _CELLS, i + 1, h, w, r
            if ch == "\n" and i == w:
                return (_ROWNUM, 0, h, w, r + 1) if r < h else (_FENCE_P, 0, h, w, r)
            return None
        if phase == _FENCE_P:
            return (_FENCE_P, i + 1, h, w, r) if ch == "`" and i < len(_FENCE) else None
        return None

    def accepting(self, state: State) -> bool:
        return state[0] == _FENCE_P and state[1] == len(_FENCE)


WRITERS: dict[str, GridWriter] = {w.name: w for w in (NumpyWriter(), ShapeRowsWriter())}
