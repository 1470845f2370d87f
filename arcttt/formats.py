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
- ``chat``: the markers are a chat-template model's own special tokens (see ``CHAT_PIECES``): each
  demonstration is a user turn (the input grid) and an assistant turn (the output grid), ChatML
  style as in Qwen. The marker texts are fixed here rather than read from the model's
  ``chat_template``, because a Jinja template cannot be turned back into marker pieces reliably;
  :func:`token_map_from_tokenizer` checks that the model has the ChatML special tokens instead.

:func:`token_map_from_tokenizer` finds a format's ids in any Hugging Face tokenizer;
:func:`build_tokenizer` builds a small local tokenizer for a format (tiny test models, shrunk
vocabularies), with no download.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from arcttt.data import MAX_SIDE, Pair

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

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
# The compact vocabulary's bos/eos/pad tokens (eos is the end marker: generation stops there).
COMPACT_SPECIAL = {"bos": "<s>", "eos": "<E>", "pad": "<pad>"}
# The chat format's ChatML special tokens and the plain words its markers use; bos/eos/pad as in
# Qwen2.5's configs (bos_token_id = pad = <|endoftext|>, eos = <|im_end|>).
CHAT_SPECIAL = {"bos": "<|endoftext|>", "eos": "<|im_end|>", "pad": "<|endoftext|>"}
CHAT_MARKERS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_WORDS = ("user", "assistant", "system")


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


def _try_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int] | str:
    """The ids of ``text``, or why the tokenizer cannot encode it (a word-level vocabulary without
    an unknown token raises a bare ``Exception`` from the ``tokenizers`` library)."""
    try:
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
        return f"cannot encode it ({e})"


def _single_id(tokenizer: PreTrainedTokenizerBase, text: str, by_string: bool = False) -> int | None:
    """The id of ``text`` if the tokenizer encodes it as exactly one known token, else None; with
    ``by_string`` also a vocabulary entry spelled ``text`` that encoding would split."""
    ids = _try_encode(tokenizer, text)
    if isinstance(ids, list) and len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return ids[0]
    return tokenizer.get_vocab().get(text) if by_string else None


def _piece_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[int, ...]:
    ids = _try_encode(tokenizer, text) if text else []
    if isinstance(ids, str) or tokenizer.unk_token_id in ids:
        raise FormatError(f"tokenizer {tokenizer.name_or_path or type(tokenizer).__name__}: "
                          f"marker {text!r} {ids if isinstance(ids, str) else 'has unknown tokens'}")
    return tuple(ids)


def token_map_from_tokenizer(format_name: str, tokenizer: PreTrainedTokenizerBase) -> TokenMap:
    """The ids of every piece of ``format_name`` in a Hugging Face tokenizer.

    ``compact`` needs each of :data:`COMPACT_TOKENS` as one token (markers may be found by their
    token string alone).
    ``chat`` encodes each of :data:`CHAT_PIECES` (``add_special_tokens=False``) and needs the
    ChatML special tokens ``<|im_start|>``/``<|im_end|>``; its pad is the tokenizer's pad (else eos).
    Both need every digit and the newline to be single tokens. Raises :class:`FormatError`.
    """
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if format_name not in FORMATS:
        raise FormatError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")

    def single(text: str, why: str, by_string: bool = False) -> int:
        i = _single_id(tokenizer, text, by_string)
        if i is None:
            ids = _try_encode(tokenizer, text)
            got = ids if isinstance(ids, str) else f"encodes to {ids}"
            raise FormatError(f"tokenizer {name}: {text!r} is not a single known token ({got}); "
                              f"the {format_name} format needs {why}")
        return i

    digits = tuple(single(str(d), "every digit as one token") for d in range(10))
    newline = single("\n", "the newline as one token")
    if format_name == "compact":
        # markers are never typed as text, so a vocabulary entry of that spelling is enough
        ids = {t: single(t, "its 16 tokens (see COMPACT_TOKENS; build_tokenizer('compact') makes them)", True)
               for t in COMPACT_TOKENS[11:]}
        return TokenMap("compact", digits, newline, (ids["<s>"],), (ids["<I>"],), (ids["<O>"],),
                        (ids["<E>"],), ids["<pad>"])
    for marker in ("<|im_start|>", "<|im_end|>"):
        single(marker, "the ChatML special tokens <|im_start|> and <|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise FormatError(f"tokenizer {name}: has neither a pad nor an eos token; the chat format needs one to pad")
    return TokenMap("chat", digits, newline, *(_piece_ids(tokenizer, CHAT_PIECES[k])
                                                for k in ("bos", "input", "output", "end")), int(pad))


def _format_vocabulary(format_name: str, extra_tokens: int) -> tuple[list[str], set[str], dict[str, str]]:
    """Token strings in id order, the special ones among them, and the bos/eos/pad tokens."""
    fillers = [f"<extra_{i}>" for i in range(extra_tokens)]
    if format_name == "compact":
        # the format's tokens first, so that ids are positions in COMPACT_TOKENS (compact_token_map)
        return [*COMPACT_TOKENS, *fillers], {*COMPACT_TOKENS[11:], *fillers}, COMPACT_SPECIAL
    if format_name == "chat":
        real = [*"0123456789", "\n", *CHAT_MARKERS, *CHAT_WORDS]
        # fillers spread between the real tokens, as the used ids of a real model are scattered
        # (so that cutting the vocabulary must re-index, not just truncate)
        tokens: list[str] = []
        per_gap, rest = divmod(len(fillers), len(real))
        it = iter(fillers)
        for k, t in enumerate(real):
            tokens.append(t)
            tokens.extend(next(it) for _ in range(per_gap + (k < rest)))
        return tokens, {*CHAT_MARKERS, *fillers}, CHAT_SPECIAL
    raise FormatError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")


def wordlevel_tokenizer(tokens: Sequence[str], special: set[str], bos: str | None, eos: str | None,
                        pad: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``tokens`` (id = position): digits and newlines are split one
    per token, other runs of text are looked up whole, ``special`` tokens are matched anywhere.
    Text outside the vocabulary cannot be encoded (there is no unknown token): arcttt never
    tokenizes free text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if len(set(tokens)) != len(tokens):
        raise FormatError("a tokenizer vocabulary needs distinct token strings")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # decode concatenates (WordLevel would join with spaces)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens if t in special])
    return _portable_tokenizer_class()(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def build_tokenizer(format_name: str, extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A small local tokenizer for ``format_name`` (no download), for tiny test models.

    compact: :data:`COMPACT_TOKENS` at ids 0-15 (bos ``<s>``, eos ``<E>``, pad ``<pad>``).
    chat: digits, newline, ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` (special) and the
    words ``user``/``assistant``/``system``, so ``"<|im_start|>user\\n"`` is 3 tokens (bos = pad =
    ``<|endoftext|>``, eos ``<|im_end|>``). ``extra_tokens`` unused filler tokens ``<extra_i>`` give
    ``shrink-vocab`` something to cut. It saves with ``save_pretrained`` and loads back with
    ``AutoTokenizer`` in transformers 4.4x and 5.x.
    """
    if extra_tokens < 0:
        raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
    tokens, special, roles = _format_vocabulary(format_name, extra_tokens)
    return wordlevel_tokenizer(tokens, special, roles["bos"], roles["eos"], roles["pad"])


def _portable_tokenizer_class():
    """``PreTrainedTokenizerFast`` whose saved ``tokenizer_config.json`` names that class.

    transformers 5 writes its own class name there (``TokenizersBackend``), which 4.4x cannot
    load; ``PreTrainedTokenizerFast`` loads in both (5.x keeps it as an alias).
    """
    from transformers import PreTrainedTokenizerFast

    class PortableTokenizerFast(PreTrainedTokenizerFast):
        def save_pretrained(self, save_directory, *args, **kwargs):
            files = super().save_pretrained(save_directory, *args, **kwargs)
            path = Path(save_directory) / "tokenizer_config.json"
            if path.is_file():
                config = json.loads(path.read_text())
                config["tokenizer_class"] = "PreTrainedTokenizerFast"
                path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            return files

    return PortableTokenizerFast


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
    rows = np.empty((g.shape[0], g.shape[1] + 1), dtype=np.int64)
    rows[:, :-1] = np.asarray(tm.digits, dtype=np.int64)[g]
    rows[:, -1] = tm.newline
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
    pieces: list = []
    losses: list[bool] = []  # one per piece; the mask is expanded once at the end (TTT data is hot)

    def add(ids, loss: bool = False):
        pieces.append(ids)
        losses.append(loss)

    add(tm.bos)
    for k, pair in enumerate(demos):
        add(tm.input)
        add(grid_ids(pair.input, tm))
        add(tm.output)
        add(grid_ids(pair.output, tm), loss=loss_on_demo_outputs and k > 0)
        add(tm.end, loss=loss_on_demo_outputs and k > 0)
    add(tm.input)
    add(grid_ids(query, tm))
    add(tm.output)
    n_prompt = len(pieces)
    if answer is not None:
        add(grid_ids(answer, tm), loss=True)
        add(tm.end, loss=True)
    lengths = [len(p) for p in pieces]
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])
    return Encoded(ids, np.repeat(np.asarray(losses, dtype=bool), lengths), sum(lengths[:n_prompt]))


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
