"""Task <-> tokens. One token per cell, a newline token between or after rows, markers around grids.

A sequence is laid out as::

    bos  (input grid output grid end)*  input query output  [answer end]

A format is a value, :class:`FormatSpec`: the text of each marker (``bos``, ``input``, ``output``,
``end``; nothing sits between pairs beyond them), whether a grid's rows are newline-*terminated*
(``12\\n34\\n``) or newline-*separated* (``12\\n34``), and, for formats whose vocabulary is fixed,
the token strings in id order. A :class:`TokenMap` is that format's pieces as ids of one
vocabulary; a model directory records it in ``arcttt.json`` (see :func:`write_model_meta`), so
encoding never calls a tokenizer and works alike before and after the vocabulary is cut.
:func:`encode`, :func:`parse_answer`, the search grammar (:meth:`TokenMap.grammar`), the TTT loss masks and
answer scoring all follow the token map's ``rows``.

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

Template formats (:data:`TEMPLATES`, :class:`TemplateMap`; the end of this module), over the
model's own full vocabulary, grids written as free text by a grid writer (``gridtext.py``):
- ``mit``: MIT's Llama-3 chat (ekinakyurek/marc): a system turn with their instruction and every
  demonstration as ``{numpy print} -> {numpy print}#``, a user turn ``{query} ->``, the answer
  ``{numpy print}#<|eot_id|>``; each message's content stripped and encoded on its own.
- ``omni-arc``: Omni-ARC's Qwen chat (ironbar/arc24, output-from-examples-v1): system ``You are a
  helpful assistant.``, a markdown user turn, grids as fenced ``grid shape: HxW`` blocks with
  numbered rows; the prompt ends with the answer turn's ``### Output\n\n```grid``.
:func:`encode`, :func:`answer_ids`, :func:`parse_answer` and :func:`grid_len` take either map.

Tokenizers are read with the ``tokenizers`` library itself (:func:`load_tokenizer`), never through
``AutoTokenizer``: transformers 5.17 rebuilds NVARC's WordLevel ``tokenizer.json`` as BPE and
silently drops ``user``/``assistant``. :func:`token_map_from_tokenizer` derives a format's ids and
checks that every digit and marker round-trips (encodes to ids that decode to the same text);
:func:`check_token_map` compares a recorded map with the tokenizer's, naming the marker and both id
sequences on a mismatch. :func:`build_tokenizer` builds a small local tokenizer for a format (tiny
test models, cut vocabularies), with no download.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from arcttt.data import MAX_SIDE, Pair
from arcttt.gridtext import WRITERS, GridWriter
from arcttt.tree import DigitGrammar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

META_FILE = "arcttt.json"
ROWS = ("terminated", "separated")

# The compact vocabulary: token strings in id order.
COMPACT_TOKENS: tuple[str, ...] = (*"0123456789", "\n", "<I>", "<O>", "<E>", "<s>", "<pad>")
# NVARC's vocabulary, token strings in id order (byte-level spelling: "Ċ" is the newline).
NVARC_TOKENS: tuple[str, ...] = (*"0123456789", "Ċ", "user", "assistant", "<|endoftext|>", "<|im_start|>",
                                 "<|im_end|>")
ARCHITECTS_PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
# The single characters an ARChitects model keeps (besides its special tokens).
ARCHITECTS_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!?.:,;*+/-=\n"
# Qwen2/Qwen3's pre-tokenizer split (their tokenizer.json); NVARC kept it with its 16 words.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_MARKERS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class FormatError(ValueError):
    """A model directory or tokenizer that does not speak a known arcttt format."""


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
    """The format's own vocabulary (token strings in id order), for :func:`build_tokenizer` and
    :func:`detect_format`; None: the model's own vocabulary."""
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
"""The formats defined by a template over the model's own vocabulary (:class:`TemplateSpec`)."""
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
    def answer_ids(self) -> list[int]:
        """Ids valid while generating an answer: digits, newline and the first end token."""
        return [*self.digits, self.newline, self.end[0]]

    def grammar(self) -> DigitGrammar:
        """The answer search's grammar over :attr:`answer_ids` (``tree.DigitGrammar``)."""
        return DigitGrammar(tuple(self.answer_ids), self.separated)

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


# --- tokenizers, read with the `tokenizers` library itself ----------------------------------------

@dataclass
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` and the spelling of its bos/eos/pad tokens: all arcttt needs of a
    tokenizer. Encoding never adds special tokens; decoding spells them out."""

    backend: Any = field(repr=False)
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    name: str = "tokenizer"

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; :class:`FormatError` when the vocabulary cannot hold it."""
        try:
            return [int(i) for i in self.backend.encode(text, add_special_tokens=False).ids]
        except Exception as e:  # noqa: BLE001 - a word-level vocabulary without an unknown token raises Exception
            raise FormatError(f"tokenizer {self.name}: cannot encode {text!r} ({e})") from None

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)


def as_text_tokenizer(tokenizer: Any) -> TextTokenizer:
    """A :class:`TextTokenizer` from itself, a ``tokenizers.Tokenizer`` or a transformers fast
    tokenizer (its ``backend_tokenizer`` and role tokens)."""
    if isinstance(tokenizer, TextTokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return TextTokenizer(backend, tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token,
                             getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "token_to_id"):
        return TextTokenizer(tokenizer)
    raise FormatError(f"{type(tokenizer).__name__} is not a fast (tokenizers-backed) tokenizer")


def _role_token(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:120]})") from None
    return obj if isinstance(obj, dict) else {}


def load_tokenizer(model_dir: str | Path) -> TextTokenizer:
    """The tokenizer of a model directory, from its ``tokenizer.json`` with the ``tokenizers``
    library (the vocabulary exactly as saved); bos/eos/pad from ``tokenizer_config.json``, else
    ``special_tokens_map.json``, else the ids in ``config.json``."""
    from tokenizers import Tokenizer

    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise FormatError(f"{model_dir} has no tokenizer.json (arcttt reads tokenizers with the `tokenizers` "
                          "library only, so that a vocabulary is used exactly as it was saved)")
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception on a bad file
        raise FormatError(f"{path}: not a tokenizers file ({str(e)[:120]})") from None
    roles: dict[str, str | None] = {"bos": None, "eos": None, "pad": None}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            obj = _read_json(model_dir / name)
            for role in roles:
                roles[role] = roles[role] or _role_token(obj.get(f"{role}_token"))
    if (model_dir / "config.json").is_file():
        config = _read_json(model_dir / "config.json")
        for role in roles:
            token_id = config.get(f"{role}_token_id")
            if isinstance(token_id, list):
                token_id = token_id[0] if token_id else None
            if roles[role] is None and isinstance(token_id, int):
                roles[role] = backend.id_to_token(token_id)
    return TextTokenizer(backend, roles["bos"], roles["eos"], roles["pad"], str(model_dir))


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


def token_map_from_tokenizer(format_name: str, tokenizer: Any) -> TokenMap | TemplateMap:
    """The ids of every piece of ``format_name`` in a tokenizer (a :class:`TextTokenizer`, a
    ``tokenizers.Tokenizer`` or a transformers fast tokenizer).

    Every digit and the newline must be one token; every marker must round-trip (its ids decode
    to its text); a format with fixed ids (``nvarc``) must get exactly its own ids. Raises
    :class:`FormatError` naming the piece and the ids. A template format gives a
    :class:`TemplateMap` (:func:`template_map`).
    """
    if format_name in TEMPLATES:
        return template_map(format_name, tokenizer)
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
    return _derive(fmt, as_text_tokenizer(build_tokenizer(fmt.name)))


def _piece_text(tm: TokenMap, name: str) -> str:
    if name == "digits":
        return "0-9"
    if name == "newline":
        return repr("\n")
    if name in ("bos", "input", "output", "end", "pad"):
        return repr(getattr(spec(tm.format), name))
    return ""


def check_token_map(got: TokenMap, expected: TokenMap, *, got_from: str, expected_from: str) -> None:
    """Raise :class:`FormatError` on the first piece whose ids differ, naming the piece, its text
    and both id sequences."""
    if isinstance(got, TemplateMap) or isinstance(expected, TemplateMap):
        a, b = got.to_json(), expected.to_json()
        for name in ("format", *b):
            if a.get(name) != b.get(name):
                raise FormatError(f"{name} is {a.get(name)} in {got_from} but {b.get(name)} in {expected_from}")
        return
    for name in ("format", "rows", "digits", "newline", "bos", "input", "output", "end", "pad"):
        a, b = getattr(got, name), getattr(expected, name)
        if a != b:
            show = (lambda v: list(v) if isinstance(v, tuple) else v)
            label = " ".join(filter(None, (name, _piece_text(expected, name))))
            raise FormatError(f"{label} is {show(a)} in {got_from} but {show(b)} in {expected_from}")


def detect_format(tokenizer: Any) -> str | None:
    """The format a tokenizer's vocabulary pins down, if any: one with fixed ids whose vocabulary
    is exactly this one (NVARC's 16 tokens), else None."""
    vocab = as_text_tokenizer(tokenizer).vocab()
    for fmt in SPECS.values():
        if fmt.fixed_ids and fmt.vocabulary and vocab == {t: i for i, t in enumerate(fmt.vocabulary)}:
            return fmt.name
    return None


# --- small local tokenizers (tests, tiny models, cut vocabularies) ---------------------------------

# The chat fixture's plain words (besides digits, newline and ChatML special tokens).
CHAT_WORDS = ("user", "assistant", "system")
# bos/eos/pad of each format's own tokenizer (as in Qwen2.5's and NVARC's configs; Mistral's names
# for the ARChitects' character vocabulary).
ROLE_TOKENS = {
    "compact": {"bos": "<s>", "eos": "<E>", "pad": "<pad>"},
    "chat": {"bos": "<|endoftext|>", "eos": "<|im_end|>", "pad": "<|endoftext|>"},
    "nvarc": {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
    "architects": {"bos": "<s>", "eos": "</s>", "pad": "<pad>"},
}
ARCHITECTS_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")


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


def _nvarc_backend(fillers: list[str]):
    """NVARC's tokenizer: a WordLevel model over its 16 tokens with Qwen's split and byte-level
    pre-tokenizer and decoder, its three ChatML tokens added as special."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate([*NVARC_TOKENS, *fillers])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CHATML_MARKERS])
    return tok


def _architects_backend(fillers: list[str]):
    """A character vocabulary like the ARChitects' cut models: Mistral-style special tokens first,
    then one byte-level token per kept character (newline spelled "Ċ"), no merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    byte_spelling = {c: _byte_level(c) for c in ARCHITECTS_CHARS}
    tokens = [*ARCHITECTS_SPECIAL, *byte_spelling.values(), *fillers]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ARCHITECTS_SPECIAL])
    return tok


def _byte_level(char: str) -> str:
    """GPT-2's byte-level spelling of a one-byte character (printable ASCII is itself)."""
    b = ord(char)
    if 33 <= b <= 126:
        return char
    shifted = [x for x in range(256) if not (33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255)]
    return chr(256 + shifted.index(b))


def build_tokenizer(format_name: str, extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A small local tokenizer for ``format_name`` (no download), for tiny test models.

    compact: :data:`COMPACT_TOKENS` at ids 0-15 (bos ``<s>``, eos ``<E>``, pad ``<pad>``).
    chat: digits, newline, ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` (special) and the
    words ``user``/``assistant``/``system``, so ``"<|im_start|>user\\n"`` is 3 tokens (bos = pad =
    ``<|endoftext|>``, eos ``<|im_end|>``).
    nvarc: NVARC's 16-token WordLevel tokenizer, ids as they trained (see the module docstring).
    architects: ``<unk> <s> </s> <pad>`` then the single characters an ARChitects model keeps.
    ``extra_tokens`` unused filler tokens ``<extra_i>`` give ``shrink-vocab`` something to cut
    (spread between the chat tokens, appended after the others). It saves with ``save_pretrained``
    and loads back with ``AutoTokenizer`` in transformers 4.4x and 5.x (nvarc: see
    :func:`load_tokenizer` for why arcttt itself reads ``tokenizer.json`` directly).
    """
    if extra_tokens < 0:
        raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
    if format_name in TEMPLATES:
        return template_tokenizer(format_name, extra_tokens)
    fmt = spec(format_name)
    roles = ROLE_TOKENS[fmt.name]
    fillers = [f"<extra_{i}>" for i in range(extra_tokens)]
    if fmt.name == "compact":
        # the format's tokens first, so that ids are positions in COMPACT_TOKENS (compact_token_map)
        return wordlevel_tokenizer([*COMPACT_TOKENS, *fillers], {*COMPACT_TOKENS[11:], *fillers}, **roles)
    if fmt.name == "chat":
        real = [*"0123456789", "\n", *CHATML_MARKERS, *CHAT_WORDS]
        # fillers spread between the real tokens, as the used ids of a real model are scattered
        # (so that cutting the vocabulary must re-index, not just truncate)
        tokens: list[str] = []
        per_gap, rest = divmod(len(fillers), len(real))
        it = iter(fillers)
        for k, t in enumerate(real):
            tokens.append(t)
            tokens.extend(next(it) for _ in range(per_gap + (k < rest)))
        return wordlevel_tokenizer(tokens, {*CHATML_MARKERS, *fillers}, **roles)
    backend = _nvarc_backend(fillers) if fmt.name == "nvarc" else _architects_backend(fillers)
    return _portable_tokenizer_class()(tokenizer_object=backend, bos_token=roles["bos"], eos_token=roles["eos"],
                                       pad_token=roles["pad"])


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


# --- encoding -------------------------------------------------------------------------------------

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


def grid_len(shape: tuple[int, int], tm: TokenMap) -> int:
    """Tokens of a grid of ``shape``: its cells and its newlines (a template format: an upper bound)."""
    if isinstance(tm, TemplateMap):
        return tm.grid_len(shape)
    h, w = shape
    return h * (w + 1) - (1 if tm.separated else 0)


def grid_ids(grid: np.ndarray, tm: TokenMap) -> np.ndarray:
    """A grid's tokens: each row's digits, with the newline token after every row (terminated) or
    between rows (separated)."""
    g = np.asarray(grid)
    rows = np.empty((g.shape[0], g.shape[1] + 1), dtype=np.int64)
    rows[:, :-1] = np.asarray(tm.digits, dtype=np.int64)[g]
    rows[:, -1] = tm.newline
    flat = rows.reshape(-1)
    return flat[:-1] if tm.separated else flat


def answer_ids(grid: np.ndarray, tm: TokenMap) -> np.ndarray:
    """What the model should generate after a prompt: the grid then the end marker (a template
    format: the canonical tokenization of the answer text, then the end token)."""
    if isinstance(tm, TemplateMap):
        return tm.answer_ids(grid)
    return np.concatenate([grid_ids(grid, tm), np.asarray(tm.end, dtype=np.int64)])


def encode(demos: Sequence[Pair], query: np.ndarray, tm: TokenMap, answer: np.ndarray | None = None,
           *, loss_on_demo_outputs: bool = False, loss_on_first_output: bool = False) -> Encoded:
    """Encode demonstrations, a query input and optionally its answer.

    Loss falls on the answer and its end marker; with ``loss_on_demo_outputs`` also on every
    demonstration output (and end marker) after the first, and with ``loss_on_first_output`` too
    on the first (NVARC trains on every output).
    """
    if isinstance(tm, TemplateMap):
        return tm.encode(demos, query, answer, loss_on_demo_outputs=loss_on_demo_outputs,
                         loss_on_first_output=loss_on_first_output)
    pieces: list = []
    losses: list[bool] = []  # one per piece; the mask is expanded once at the end (TTT data is hot)

    def add(ids, loss: bool = False):
        pieces.append(ids)
        losses.append(loss)

    add(tm.bos)
    for k, pair in enumerate(demos):
        demo_loss = loss_on_demo_outputs and (k > 0 or loss_on_first_output)
        add(tm.input)
        add(grid_ids(pair.input, tm))
        add(tm.output)
        add(grid_ids(pair.output, tm), loss=demo_loss)
        add(tm.end, loss=demo_loss)
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

    Reads up to the first token of the end marker. Terminated rows: every row ends with a newline.
    Separated rows: newlines only between rows (the last row ends at the end marker). All rows
    have the same width, 1-30 cells, at most 30 rows. A template format: the ids' text up to the end
    token, parsed strictly by its grid writer.
    """
    if isinstance(tm, TemplateMap):
        return tm.parse_answer(ids, require_end=require_end)
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
    if tm.separated:
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


# --- model metadata -------------------------------------------------------------------------------

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
        raise FormatError(f"{model_dir} has no {META_FILE}: give its format (--format, one of {', '.join(FORMATS)}), "
                          "or prepare it with `arcttt adopt-model`, `arcttt prepare-weights`, `arcttt shrink-vocab` "
                          "or `arcttt make-tiny-model`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not JSON ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise FormatError(f"{path}: not usable JSON (nested too deeply)") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise FormatError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
                          f"known: {', '.join(FORMATS)}")
    recorded = meta.get("token_map", {})
    if not isinstance(recorded, dict):
        raise FormatError(f"{path}: token_map is not an object (got {type(recorded).__name__})")
    if meta["format"] in TEMPLATES:  # a template format's ids come from the directory's own tokenizer
        tm = template_map(meta["format"], load_tokenizer(model_dir))
        for name, value in tm.to_json().items():
            if recorded.get(name, value) != value:
                raise FormatError(f"{name} is {recorded.get(name)} in {META_FILE} but {value} in tokenizer.json")
        return tm, meta
    try:
        return TokenMap.from_json(recorded), meta
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None


# --- template formats: text grids in the model's own chat template ---------------------------------
#
# A template format writes a task as text (a grid writer of arcttt.gridtext, the layout of the
# demonstrations and the query, the model's chat template) and tokenizes it with the model's own
# tokenizer, in chunks: each chunk (a chat message's content, or the fixed text around it) is
# encoded on its own and the ids concatenated, as the peers' code does. The prompt ends with the
# answer's cue chunk (TemplateMap.output); the answer is the writer's answer text encoded on its
# own, then the end token. Loss falls on the tokens whose text overlaps a loss span (the answer, and
# with loss_on_demo_outputs the demonstration outputs after the first), found by the tokenizer's
# character offsets, so a token that straddles a span's edge carries loss.
#
# Several tokenizations of one answer text: the search grammar (TemplateGrammar) allows every token
# whose whole text the writer's automaton accepts, so an answer may be generated in more than one
# tokenization (e.g. "]]#" or "]" "]#"). Each is a completion of its own with its own probability;
# search.search_test_input merges a view's completions by grid (summing their probabilities), and
# scoring (select.py) re-encodes every candidate in the canonical tokenization (answer_ids).

MIT_INSTRUCTION = ("Figure out the underlying transformation in the following examples and apply it to the test "
                   "case. Here are some examples from this transformation, your answer must follow the format.\n"
                   "The input-output grids are provided as python arrays:\n")
OMNI_SYSTEM = "You are a helpful assistant."
# arc24's prompt version output-from-examples-v1 (scripts/arc24/prompting.py, prompt_template_v1),
# a Jinja template rendered without trim_blocks and without keeping the trailing newline
OMNI_INTRO = ("Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.\n"
              "Below there are some input-output grid examples that define the task.\n"
              "Your job is to understand the transformation between the input and the output and apply it to "
              "the test input grid.\n"
              "The transformations are always based on the following priors: objectness, goal-directed, numbers & "
              "counting, and basic geometry & topology.\n")
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
# Llama 3's pre-tokenizer split (tiktoken's cl100k-style pattern): digits grouped up to 3 a token
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


@dataclass(frozen=True)
class Chunk:
    """Text encoded on its own, and the character spans in it that carry loss."""

    text: str
    loss: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class TemplateSpec:
    """A template format: its grid writer (``gridtext.WRITERS``), its special tokens and the layout
    (:func:`template_chunks`)."""

    name: str
    writer: str
    bos: str
    end: str
    pad: str
    cue: str
    """The text the prompt ends with, after which the answer text follows."""
    special: tuple[str, ...]
    """The chat template's special tokens (a fixture tokenizer adds them)."""


TEMPLATES: dict[str, TemplateSpec] = {t.name: t for t in (
    TemplateSpec("mit", writer="numpy", bos="<|begin_of_text|>", end="<|eot_id|>", pad="<|end_of_text|>",
                 cue="<|start_header_id|>assistant<|end_header_id|>\n\n", special=LLAMA3_SPECIAL),
    TemplateSpec("omni-arc", writer="shape-rows", bos="", end="<|im_end|>", pad="<|endoftext|>",
                 cue="<|im_end|>\n<|im_start|>assistant\n### Output\n\n```grid", special=CHATML_MARKERS),
)}


def template_spec(name: str) -> TemplateSpec:
    if name not in TEMPLATES:
        raise FormatError(f"unknown template format {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_chunks(name: str, demos: Sequence[tuple[str, str]], query: str, *, demo_loss_from: int | None) -> list[Chunk]:
    """The prompt of a template format as chunks, from the grids' texts; the last chunk ends with the
    cue. ``demo_loss_from``: demonstration outputs from this index on carry loss (None: none)."""
    def loss(k: int, start: int, stop: int) -> tuple[tuple[int, int], ...]:
        return ((start, stop),) if demo_loss_from is not None and k >= demo_loss_from else ()

    if name == "mit":
        # MIT (ekinakyurek/marc arclib/messagers.py, representers.py; torchtune's Llama-3 tokenizer): a
        # system turn with the instruction and every demonstration "{in} -> {out}#\n", a user turn
        # "{query} -> "; torchtune strips each message's content and encodes it on its own
        content, spans = MIT_INSTRUCTION, []
        for k, (i, o) in enumerate(demos):
            content += f"{i} -> "
            spans += loss(k, len(content), len(content) + len(o) + 1)
            content += f"{o}#\n"
        return [Chunk("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"),
                Chunk(content.strip(), tuple(spans)),
                Chunk("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"),
                Chunk(f"{query} -> ".strip()),
                Chunk("<|eot_id|>" + TEMPLATES["mit"].cue)]
    if name == "omni-arc":
        # Omni-ARC (ironbar/arc24 prompting.py, output-from-examples-v1): Qwen's chat template with its
        # system turn; the user turn is markdown; the answer turn "### Output\n\n" + the grid block.
        # arc24 tokenizes the whole prompt text at once: one chunk.
        text = f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>\n<|im_start|>user\n{OMNI_INTRO}"
        spans = []
        for k, (i, o) in enumerate(demos):
            text += f"\n## Example {k + 1}\n\n### Input\n\n{i}\n\n### Output\n\n"
            spans += loss(k, len(text), len(text) + len(o))
            text += f"{o}\n"
        text += f"\n## Test case\n\n### Input\n\n{query}" + TEMPLATES["omni-arc"].cue
        return [Chunk(text, tuple(spans))]
    raise FormatError(f"unknown template format {name!r}; known: {', '.join(TEMPLATES)}")


GRID_LEN_MARGIN = 4
"""Tokens a template format's grid may take beyond a grid of zeros of its shape (digits that merge)."""


@dataclass(eq=False)
class TemplateMap:
    """A template format over one tokenizer: what :class:`TokenMap` is to the token formats. Its
    ``output`` is the ids of the cue (what every prompt ends with), ``end`` the end token's."""

    format: str
    tokenizer: TextTokenizer = field(repr=False)
    bos: tuple[int, ...]
    output: tuple[int, ...]
    end: tuple[int, ...]
    pad: int
    _grammar: Any = field(default=None, repr=False)
    _overheads: tuple[int, int] | None = field(default=None, repr=False)
    _grid_lens: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def spec(self) -> TemplateSpec:
        return TEMPLATES[self.format]

    @property
    def writer(self) -> GridWriter:
        return WRITERS[self.spec.writer]

    @property
    def used_ids(self) -> list[int]:
        return sorted({*self.bos, *self.output, *self.end, self.pad})

    def to_json(self) -> dict:
        return {"format": self.format, "bos": list(self.bos), "output": list(self.output), "end": list(self.end),
                "pad": self.pad}

    def _encode_chunk(self, chunk: Chunk) -> tuple[list[int], list[bool]]:
        enc = self.tokenizer.backend.encode(chunk.text, add_special_tokens=False)
        ids = [int(i) for i in enc.ids]
        mask = [any(s < b and a < e for a, b in chunk.loss) for s, e in enc.offsets]
        return ids, mask

    def answer_ids(self, grid: np.ndarray) -> np.ndarray:
        """The canonical tokenization of the answer text, then the end token."""
        return np.asarray([*self.tokenizer.encode(self.writer.answer_text(grid)), *self.end], dtype=np.int64)

    def encode(self, demos: Sequence[Pair], query: np.ndarray, answer: np.ndarray | None = None, *,
               loss_on_demo_outputs: bool = False, loss_on_first_output: bool = False) -> Encoded:
        w = self.writer
        chunks = template_chunks(self.format, [(w.write(p.input), w.write(p.output)) for p in demos], w.write(query),
                                 demo_loss_from=(0 if loss_on_first_output else 1) if loss_on_demo_outputs else None)
        ids: list[int] = []
        mask: list[bool] = []
        for chunk in chunks:
            i, m = self._encode_chunk(chunk)
            ids += i
            mask += m
        prompt_len = len(ids)
        if answer is not None:
            a = self.answer_ids(answer)
            ids += a.tolist()
            mask += [True] * len(a)
        return Encoded(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool), prompt_len)

    def parse_answer(self, ids: Sequence[int], *, require_end: bool = False) -> np.ndarray | ParseFailure:
        ids = [int(i) for i in ids]
        end_at = ids.index(self.end[0]) if self.end[0] in ids else None
        if end_at is None and require_end:
            return ParseFailure("no end marker")
        text = self.tokenizer.decode(ids[:end_at])
        got = self.writer.parse_answer(text)
        return got if isinstance(got, np.ndarray) else ParseFailure(got)

    # Lengths for fitting demonstrations into max_len, without encoding every candidate layout: a
    # grid's text in characters (a byte-level token holds at least one character of this ASCII
    # text), the fixed text around the grids in its own tokens, plus a margin for the tokens that
    # merge across a grid's edge. Upper bounds in practice, exact neither way.
    def grid_len(self, shape: tuple[int, int]) -> int:
        # the tokens of a grid of zeros of this shape, plus a margin for other digits' merges; measured
        # once a shape (counting one token a character instead overstates a numpy print about twice,
        # and a prompt then drops demonstrations that would fit)
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._grid_lens:
            text = self.writer.write(np.zeros(shape, dtype=np.uint8))
            self._grid_lens[shape] = min(len(text), len(self.tokenizer.encode(text)) + GRID_LEN_MARGIN)
        return self._grid_lens[shape]

    def overheads(self) -> tuple[int, int]:
        """Tokens a demonstration adds beside its two grids, and the rest of a sequence beside its
        query and answer grids (see above)."""
        if self._overheads is None:
            def tokens(chunks: list[Chunk]) -> int:
                return sum(len(self.tokenizer.encode(c.text)) for c in chunks)

            none = tokens(template_chunks(self.format, [], "", demo_loss_from=None))
            one = tokens(template_chunks(self.format, [("", "")], "", demo_loss_from=None))
            self._overheads = (one - none + 8, none + len(self.end) + 16)
        return self._overheads

    def max_answer_len(self) -> int:
        return self.writer.max_answer_chars() + len(self.end)

    def grammar(self) -> TemplateGrammar:
        """The answer search's grammar (built once)."""
        if self._grammar is None:
            self._grammar = TemplateGrammar.build(self)
        return self._grammar


@dataclass(eq=False)
class TemplateGrammar:
    """The search grammar of a template format (the protocol of ``tree.py``'s grammars): the
    writer's character automaton mapped to the tokenizer's tokens. ``symbols``: the ids of every
    token whose text is made only of the writer's alphabet, then the end token; at a state, a token
    is allowed when the automaton accepts its whole text from there, the end only in an accepting
    state."""

    symbols: list[int]
    texts: list[str]
    writer: GridWriter
    start: tuple
    max_tokens: int
    _memo: dict = field(default_factory=dict, repr=False)
    _by_first: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, tm: TemplateMap) -> TemplateGrammar:
        tok, writer = tm.tokenizer, tm.writer
        special = {*tm.bos, *tm.end, tm.pad} | {i for t, i in tok.vocab().items() if t in tm.spec.special}
        alphabet = set(writer.alphabet)
        pairs = []
        for token, i in sorted(tok.vocab().items(), key=lambda kv: kv[1]):
            if i in special:
                continue
            text = tok.decode([i])
            if text and set(text) <= alphabet:
                pairs.append((i, text))
        if not pairs:
            raise FormatError(f"tokenizer {tok.name}: no token is made of the {writer.name} writer's characters")
        # one character a token at worst: the longest answer's characters bound its tokens
        return cls([i for i, _ in pairs] + [tm.end[0]], [t for _, t in pairs] + [""], writer, writer.start,
                   tm.max_answer_len())

    @property
    def end(self) -> int:
        return len(self.symbols) - 1

    def is_end(self, sym: int) -> bool:
        return sym == len(self.symbols) - 1

    def allowed(self, state) -> list[int]:
        got = self._memo.get(state)
        if got is None:
            if not self._by_first:  # symbols by their first character: most are ruled out by it
                for k, text in enumerate(self.texts[:-1]):
                    self._by_first.setdefault(text[0], []).append(k)
            got = []
            for ch, syms in self._by_first.items():
                after = self.writer.step(state, ch)
                if after is not None:
                    got += [k for k in syms if self.writer.run(after, self.texts[k][1:]) is not None]
            got.sort()
            if self.writer.accepting(state):
                got.append(self.end)
            self._memo[state] = got
        return got

    def advance(self, state, sym: int):
        return None if state is None else self.writer.run(state, self.texts[sym])


def template_map(format_name: str, tokenizer: Any) -> TemplateMap:
    """A template format's ids in a tokenizer: its bos, end and pad must be single tokens and the cue
    must round-trip. Raises :class:`FormatError` naming the piece."""
    fmt = template_spec(format_name)
    tok = as_text_tokenizer(tokenizer)

    def single(text: str, what: str) -> tuple[int, ...]:
        if not text:
            return ()
        i = tok.token_to_id(text)
        if i is None:
            raise FormatError(f"tokenizer {tok.name}: has no {text!r} token, which the {fmt.name} format needs as "
                              f"its {what}")
        return (int(i),)

    cue = tok.encode(fmt.cue)
    if tok.decode(cue) != fmt.cue:
        raise FormatError(f"tokenizer {tok.name}: the {fmt.name} format's cue {fmt.cue!r} encodes to {cue}, which "
                          f"decodes to {tok.decode(cue)!r}")
    for what in ("0", "\n"):
        if tok.decode(tok.encode(what)) != what:
            raise FormatError(f"tokenizer {tok.name}: {what!r} does not round-trip")
    return TemplateMap(fmt.name, tok, single(fmt.bos, "bos"), tuple(cue), single(fmt.end, "end token"),
                       single(fmt.pad, "pad")[0])


def template_tokenizer(format_name: str, extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer like the model's own, trained here on a few lines of grid
    text with the chat template's special tokens (no download): mit, Llama 3's split (digits grouped
    up to 3 a token) and special tokens; omni-arc, Qwen's split (one digit a token) and ChatML's."""
    from tokenizers import Tokenizer

    fmt = template_spec(format_name)
    tok = Tokenizer.from_str(_trained_template_tokenizer(fmt.name, extra_tokens))
    return _portable_tokenizer_class()(tokenizer_object=tok, bos_token=fmt.bos or None, eos_token=fmt.end,
                                       pad_token=fmt.pad)


@functools.lru_cache(maxsize=None)
def _trained_template_tokenizer(format_name: str, extra_tokens: int) -> str:
    """The trained fixture tokenizer of :func:`template_tokenizer` as JSON (trained once a process)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    fmt = template_spec(format_name)
    tok = Tokenizer(models.BPE())
    split = LLAMA3_SPLIT if fmt.name == "mit" else QWEN_SPLIT
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    writer = WRITERS[fmt.writer]
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, size=(int(h), int(w))) for h, w in rng.integers(1, 12, size=(40, 2))]
    demos = [(writer.write(a), writer.write(b)) for a, b in zip(grids[::2], grids[1::2])]
    corpus = []
    for k in range(1, len(demos)):
        text = "".join(c.text for c in template_chunks(fmt.name, demos[:k], demos[k][0], demo_loss_from=None))
        corpus.append(text + writer.answer_text(grids[2 * k + 1]) + fmt.end)
    # numbers, so that Llama 3's split has its multi-digit tokens (its real vocabulary holds every
    # number up to 999 as one token; Qwen's split keeps digits apart whatever the merges)
    corpus.append(" ".join(str(n) for n in range(1000)))
    fillers = [f"<extra_{i}>" for i in range(extra_tokens)]
    trainer = trainers.BpeTrainer(vocab_size=1400, special_tokens=[*fmt.special, *fillers], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 3, trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*fmt.special, *fillers)])
    return tok.to_str()
