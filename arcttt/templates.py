"""Template formats: a task as text in the model's own chat template, over its full vocabulary.

Formats, by name (:data:`TEMPLATES`), grids written as free text by a grid writer (``gridtext.py``):
- ``mit``: MIT's Llama-3 chat (ekinakyurek/marc): a system turn with their instruction and every
  demonstration as ``{numpy print} -> {numpy print}#``, a user turn ``{query} ->``, the answer
  ``{numpy print}#<|eot_id|>``; each message's content stripped and encoded on its own.
- ``omni-arc``: Omni-ARC's Qwen chat (ironbar/arc24, output-from-examples-v1): system ``You are a
  helpful assistant.``, a markdown user turn, grids as fenced ``grid shape: HxW`` blocks with
  numbered rows; the prompt ends with the answer turn's ``### Output\n\n```grid``.

:class:`TemplateMap` is to these formats what ``formats.TokenMap`` is to the token formats, with
the same methods (``encode``, ``answer_ids``, ``parse_answer``, ``grid_len``, ``overheads``,
``max_answer_len``, ``answer_room``), so a caller never asks which kind of map it holds;
:class:`TemplateGrammar` is its search grammar (tokens made of the writer's alphabet, checked by its
automaton); :func:`template_map` finds a format's ids in a tokenizer and
:func:`template_tokenizer` builds a small local one (no download).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from arcttt.data import Pair
from arcttt.formats import Encoded, ParseFailure
from arcttt.gridtext import WRITERS, GridWriter
from arcttt.tokenizer import (CHATML_MARKERS, QWEN_SPLIT, FormatError, TextTokenizer, as_text_tokenizer,
                              portable_tokenizer_class)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


# --- how a template format encodes -------------------------------------------------------------
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
ANSWER_ROOM_MARGIN = 8
"""Tokens an answer may take beyond the answer of zeros of its shape: other digits may merge
differently with their neighbours (:meth:`TemplateMap.answer_room`)."""


@dataclass(eq=False)
class TemplateMap:
    """A template format over one tokenizer: what ``formats.TokenMap`` is to the token formats, with
    the same methods. Its ``output`` is the ids of the cue (what every prompt ends with), ``end`` the
    end token's."""

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
        """Encode demonstrations, a query input and optionally its answer, chunk by chunk (see the
        comment above :data:`MIT_INSTRUCTION`); loss as in ``formats.TokenMap.encode``, by character
        offsets."""
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
        """Generated ids (after the prompt) back to a grid: their text up to the end token, parsed
        strictly by the format's grid writer; else a :class:`ParseFailure`."""
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
        """Tokens of the largest possible answer: at most one a character of the writer's 30x30
        text, and the end token."""
        return self.writer.max_answer_chars() + len(self.end)

    def answer_room(self, shape: tuple[int, int]) -> int:
        """Tokens to leave for an answer of ``shape``, end token included: the text's own tokens
        (measured on a grid of zeros; :meth:`grid_len` counts characters) plus a margin."""
        return len(self.answer_ids(np.zeros(shape, dtype=np.uint8))) + ANSWER_ROOM_MARGIN

    def grammar(self) -> TemplateGrammar:
        if self._grammar is None:
            self._grammar = TemplateGrammar.build(self)
        return self._grammar


@dataclass(eq=False)
class TemplateGrammar:
    """The search grammar of a template format: the writer's character automaton mapped to the
    tokenizer's tokens. ``symbols``: the ids of every token whose text is made only of the writer's
    alphabet, then the end token; at a state, a token is allowed when the automaton accepts its
    whole text from there, the end only in an accepting state."""

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

    if extra_tokens < 0:
        raise ValueError(f"extra_tokens must be >= 0, got {extra_tokens}")
    fmt = template_spec(format_name)
    tok = Tokenizer.from_str(_trained_template_tokenizer(fmt.name, extra_tokens))
    return portable_tokenizer_class()(tokenizer_object=tok, bos_token=fmt.bos or None, eos_token=fmt.end,
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
