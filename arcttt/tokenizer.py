"""Tokenizers as arcttt reads them: with the ``tokenizers`` library itself, never through
``AutoTokenizer`` (transformers 5.17 rebuilds NVARC's WordLevel ``tokenizer.json`` as BPE and
silently drops ``user``/``assistant``; see README "Published checkpoints").

:func:`load_tokenizer` reads a model directory's ``tokenizer.json`` and the spelling of its
bos/eos/pad tokens into a :class:`TextTokenizer`; :func:`as_text_tokenizer` wraps a
``tokenizers.Tokenizer`` or a transformers fast tokenizer the same way.

Small local tokenizers, with no download (tiny test models, cut vocabularies): :func:`fixture_tokenizer`
builds the vocabulary of each token format (compact's and NVARC's own, a chat and an ARChitects-like
one) from :func:`wordlevel_tokenizer` and the ``tokenizers`` library; ``weights.kept_tokenizer``
builds a cut vocabulary from :func:`wordlevel_tokenizer` too, and ``templates.template_tokenizer``
trains a byte-level BPE. They are tokenizers, not formats: a format (``formats.py``) only names the
vocabulary it was made for. transformers is imported only inside the builders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# The compact vocabulary: token strings in id order.
COMPACT_TOKENS: tuple[str, ...] = (*"0123456789", "\n", "<I>", "<O>", "<E>", "<s>", "<pad>")
# NVARC's vocabulary, token strings in id order (byte-level spelling: "Ċ" is the newline).
NVARC_TOKENS: tuple[str, ...] = (*"0123456789", "Ċ", "user", "assistant", "<|endoftext|>", "<|im_start|>",
                                 "<|im_end|>")
# The single characters an ARChitects model keeps (besides its special tokens).
ARCHITECTS_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!?.:,;*+/-=\n"
# Qwen2/Qwen3's pre-tokenizer split (their tokenizer.json); NVARC kept it with its 16 words.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML_MARKERS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


class FormatError(ValueError):
    """A model directory or tokenizer that does not speak a known arcttt format."""


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


# --- small local tokenizers from a given vocabulary (fixtures, cut vocabularies) ----------------------

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
    return portable_tokenizer_class()(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)


def byte_level(char: str) -> str:
    """GPT-2's byte-level spelling of a one-byte character (printable ASCII is itself)."""
    b = ord(char)
    if 33 <= b <= 126:
        return char
    shifted = [x for x in range(256) if not (33 <= x <= 126 or 161 <= x <= 172 or 174 <= x <= 255)]
    return chr(256 + shifted.index(b))


def portable_tokenizer_class():
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


# --- the token formats' fixture tokenizers -------------------------------------------------------

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
FIXTURES = tuple(ROLE_TOKENS)
"""The fixture tokenizers :func:`fixture_tokenizer` builds, named after the token format each is for."""
ARCHITECTS_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>")


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

    byte_spelling = {c: byte_level(c) for c in ARCHITECTS_CHARS}
    tokens = [*ARCHITECTS_SPECIAL, *byte_spelling.values(), *fillers]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, [], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ARCHITECTS_SPECIAL])
    return tok


def fixture_tokenizer(name: str, extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A small local tokenizer for the token format ``name`` (no download), for tiny test models
    (:data:`FIXTURES`; any format by name, template formats too: ``modeldir.build_tokenizer``).

    compact: :data:`COMPACT_TOKENS` at ids 0-15 (bos ``<s>``, eos ``<E>``, pad ``<pad>``).
    chat: digits, newline, ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` (special) and the
    words ``user``/``assistant``/``system``, so ``"<|im_start|>user\\n"`` is 3 tokens (bos = pad =
    ``<|endoftext|>``, eos ``<|im_end|>``).
    nvarc: NVARC's 16-token WordLevel tokenizer, ids as they trained (see ``formats``' docstring).
    architects: ``<unk> <s> </s> <pad>`` then the single characters an ARChitects model keeps.
    ``extra_tokens`` unused filler tokens ``<extra_i>`` give ``shrink-vocab`` something to cut
    (spread between the chat tokens, appended after the others). It saves with ``save_pretrained``
    and loads back with ``AutoTokenizer`` in transformers 4.4x and 5.x (nvarc: see
    :func:`load_tokenizer` for why arcttt itself reads ``tokenizer.json`` directly).
    """
    if extra_tokens < 0:
        raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
    if name not in FIXTURES:
        raise FormatError(f"no fixture tokenizer {name!r}; known: {', '.join(FIXTURES)}")
    roles = ROLE_TOKENS[name]
    fillers = [f"<extra_{i}>" for i in range(extra_tokens)]
    if name == "compact":
        # the format's tokens first, so that ids are positions in COMPACT_TOKENS (compact_token_map)
        return wordlevel_tokenizer([*COMPACT_TOKENS, *fillers], {*COMPACT_TOKENS[11:], *fillers}, **roles)
    if name == "chat":
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
    backend = _nvarc_backend(fillers) if name == "nvarc" else _architects_backend(fillers)
    return portable_tokenizer_class()(tokenizer_object=backend, bos_token=roles["bos"], eos_token=roles["eos"],
                                      pad_token=roles["pad"])
