"""Task <-> tokens: the answer parser round-trips every grid and fails with a typed reason on bad
output, loss masks cover exactly the targets, token maps come from real tokenizers, and the local
tokenizers save and load back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.data import Pair
from arcttt.formats import (CHAT_PIECES, FORMATS, TOKEN_FORMATS, ParseFailure, TokenMap, answer_ids, compact_token_map,
                            encode, grid_ids, parse_answer)
from arcttt.modeldir import build_tokenizer, read_model_meta, token_map_from_tokenizer, write_model_meta
from arcttt.tokenizer import COMPACT_TOKENS, FormatError
from helpers import grids


@pytest.fixture(scope="module", params=TOKEN_FORMATS)
def tm(request):
    return token_map_from_tokenizer(request.param, build_tokenizer(request.param, extra_tokens=20))


# --- the parser ---------------------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(grids(), st.sampled_from(TOKEN_FORMATS), st.lists(st.integers(0, 60), max_size=5))
def test_parse_answer_round_trips(g, fmt, tail):
    tm = token_map_from_tokenizer(fmt, build_tokenizer(fmt, extra_tokens=40))
    ids = answer_ids(g, tm)
    newlines = g.shape[0] - (tm.rows == "separated")  # after every row, or only between rows
    assert len(ids) == g.size + newlines + len(tm.end)
    for require_end in (False, True):
        out = parse_answer(ids, tm, require_end=require_end)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and np.array_equal(out, g)
    # whatever follows the end marker is ignored; without the end the grid still parses unless required
    assert np.array_equal(parse_answer([*ids, *tail], tm), g)
    body = grid_ids(g, tm)
    assert np.array_equal(parse_answer(body, tm), g)
    assert parse_answer(body, tm, require_end=True) == ParseFailure("no end marker")


def _fail(ids, tm, **kw) -> str:
    out = parse_answer(ids, tm, **kw)
    assert isinstance(out, ParseFailure), out
    assert not out  # failures are falsy
    return out.reason


def test_parse_failures_are_typed(tm):
    d, nl, end = tm.digits, tm.newline, tm.end[0]
    assert _fail([], tm) == "empty"
    assert _fail([end], tm) == "empty"
    assert _fail([nl, end], tm) == "empty row"
    stray = next(i for i in range(100) if i not in tm.answer_symbols)
    if tm.rows == "terminated":
        assert _fail([d[1], d[2], nl, d[3], nl, end], tm) == "ragged rows"
        assert _fail([d[1], nl, d[3], d[4], nl, end], tm) == "ragged rows"
        assert _fail([d[1], d[2], end], tm) == "last row not closed by a newline"
        assert _fail([d[1], d[2]], tm) == "last row not closed by a newline"
        assert _fail([d[1], stray, nl, end], tm) == f"stray token {stray}"
        assert _fail([*([d[0]] * 31), nl, end], tm) == "larger than 30x30"
        assert _fail([d[0], nl] * 31 + [end], tm) == "larger than 30x30"
        assert _fail([d[1], nl], tm, require_end=True) == "no end marker"
        assert parse_answer([*([d[9]] * 30 + [nl]) * 30, end], tm).shape == (30, 30)
    else:  # separated: the end closes the last row; a newline before it opens an empty one
        assert _fail([d[1], d[2], nl, d[3], end], tm) == "ragged rows"
        assert _fail([d[1], nl, d[3], d[4], end], tm) == "ragged rows"
        assert _fail([d[1], d[2], nl, end], tm) == "empty row"
        assert _fail([d[1], nl, nl, d[2], end], tm) == "empty row"
        assert _fail([d[1], stray, end], tm) == f"stray token {stray}"
        assert _fail([*([d[0]] * 31), end], tm) == "larger than 30x30"
        assert _fail([d[0], nl] * 30 + [d[0], end], tm) == "larger than 30x30"
        assert _fail([d[1]], tm, require_end=True) == "no end marker"
        assert np.array_equal(parse_answer([d[1], d[2], nl, d[3], d[4], end], tm), [[1, 2], [3, 4]])
        assert parse_answer([*([d[9]] * 30 + [nl]) * 29, *[d[9]] * 30, end], tm).shape == (30, 30)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 70), max_size=80))
def test_parse_answer_never_raises(ids):
    tm = token_map_from_tokenizer("chat", build_tokenizer("chat", extra_tokens=50))
    out = parse_answer(ids, tm)
    if isinstance(out, np.ndarray):
        assert out.ndim == 2 and 1 <= min(out.shape) and max(out.shape) <= 30
        # a parsed grid is exactly what precedes the end (or everything)
        stop = ids.index(tm.end[0]) if tm.end[0] in ids else len(ids)
        assert list(grid_ids(out, tm)) == ids[:stop]
    else:
        assert isinstance(out.reason, str) and out.reason


# --- encoding -----------------------------------------------------------------------------------

def _layout(demos, query, tm, answer=None):
    """Expected (ids, demo-output spans, answer span), built piece by piece from the format."""
    ids: list[int] = [*tm.bos]
    spans = []
    for p in demos:
        ids += [*tm.input, *grid_ids(p.input, tm), *tm.output]
        start = len(ids)
        ids += [*grid_ids(p.output, tm), *tm.end]
        spans.append((start, len(ids)))
    ids += [*tm.input, *grid_ids(query, tm), *tm.output]
    prompt_len = len(ids)
    if answer is not None:
        ids += [*grid_ids(answer, tm), *tm.end]
    return ids, spans, (prompt_len, len(ids))


def test_encode_layout_and_loss_masks(tm, arc1_eval):
    for task in arc1_eval[:40]:
        demos, query, answer = task.train, task.test_inputs[0], task.test_outputs[0]
        want, spans, (a0, a1) = _layout(demos, query, tm, answer)
        enc = encode(demos, query, tm, answer)
        assert enc.ids.dtype == np.int64 and enc.loss_mask.dtype == bool
        assert enc.ids.tolist() == want and enc.prompt_len == a0 and len(enc) == a1
        assert np.flatnonzero(enc.loss_mask).tolist() == list(range(a0, a1))
        assert np.array_equal(parse_answer(enc.ids[enc.prompt_len:], tm, require_end=True), answer)

        enc = encode(demos, query, tm, answer, loss_on_demo_outputs=True)
        expected = [i for s, e in spans[1:] for i in range(s, e)] + list(range(a0, a1))
        assert np.flatnonzero(enc.loss_mask).tolist() == expected
        for s, e in spans:
            assert enc.ids[e - len(tm.end):e].tolist() == list(tm.end)

        prompt = encode(demos, query, tm)
        assert prompt.ids.tolist() == want[:a0] and prompt.prompt_len == a0 and not prompt.loss_mask.any()
        assert prompt.ids[-len(tm.output):].tolist() == list(tm.output)


def test_encode_with_no_demos(tm):
    g = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    enc = encode([], g, tm, g.T.copy())
    assert enc.ids.tolist() == [*tm.bos, *tm.input, *grid_ids(g, tm), *tm.output, *grid_ids(g.T, tm), *tm.end]
    assert np.flatnonzero(enc.loss_mask).tolist() == list(range(enc.prompt_len, len(enc)))


def test_chat_text_matches_the_tokenizer():
    """The ids encode() writes are what the tokenizer makes of the same text."""
    tok = build_tokenizer("chat", extra_tokens=10)
    tm = token_map_from_tokenizer("chat", tok)
    demos = [Pair(np.array([[1, 2]], np.uint8), np.array([[3], [4]], np.uint8))]
    query, answer = np.array([[0]], np.uint8), np.array([[9, 8]], np.uint8)
    text = (CHAT_PIECES["bos"] + CHAT_PIECES["input"] + "12\n" + CHAT_PIECES["output"] + "3\n4\n"
            + CHAT_PIECES["end"] + CHAT_PIECES["input"] + "0\n" + CHAT_PIECES["output"] + "98\n" + CHAT_PIECES["end"])
    assert encode(demos, query, tm, answer).ids.tolist() == tok.encode(text, add_special_tokens=False)
    assert tok.decode(encode(demos, query, tm, answer).ids) == text


# --- token maps and tokenizers --------------------------------------------------------------------

def test_compact_tokenizer_matches_compact_token_map():
    tok = build_tokenizer("compact", extra_tokens=50)
    assert len(tok) == len(COMPACT_TOKENS) + 50
    assert token_map_from_tokenizer("compact", tok) == compact_token_map()
    assert tok.convert_ids_to_tokens(list(range(16))) == list(COMPACT_TOKENS)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "<E>", "<pad>")
    assert tok.eos_token_id == compact_token_map().end[0]


def test_chat_tokenizer_markers():
    tok = build_tokenizer("chat", extra_tokens=50)
    tm = token_map_from_tokenizer("chat", tok)
    assert len(tok.encode("<|im_start|>user\n", add_special_tokens=False)) == 3
    assert tok.convert_ids_to_tokens(list(tm.input)) == ["<|im_start|>", "user", "\n"]
    assert tok.convert_ids_to_tokens(list(tm.output)) == ["<|im_end|>", "\n", "<|im_start|>", "assistant", "\n"]
    assert tok.convert_ids_to_tokens(list(tm.end)) == ["<|im_end|>", "\n"]
    assert tm.bos == () and tm.pad == tok.pad_token_id and tok.eos_token_id == tm.end[0]
    # fillers sit between the format's tokens, so a shrunk vocabulary must re-index
    assert tm.used_ids != list(range(len(tm.used_ids)))
    assert "system" in tok.get_vocab() and tok.get_vocab()["system"] not in tm.used_ids


def test_token_map_from_a_byte_level_bpe(bpe_chat_tokenizer):
    tok = bpe_chat_tokenizer
    tm = token_map_from_tokenizer("chat", tok)
    assert tok.convert_ids_to_tokens([tm.newline]) == ["Ċ"]  # byte-level spelling of "\n"
    assert [tok.decode([d]) for d in tm.digits] == list("0123456789")
    assert tok.decode(list(tm.output)) == CHAT_PIECES["output"]
    assert tm.pad == tok.pad_token_id


def test_token_map_errors(bpe_chat_tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(FormatError, match="<I>"):
        token_map_from_tokenizer("compact", build_tokenizer("chat"))
    with pytest.raises(FormatError, match="im_start"):
        token_map_from_tokenizer("chat", build_tokenizer("compact"))
    with pytest.raises(FormatError, match="unknown format"):
        token_map_from_tokenizer("llama", build_tokenizer("chat"))
    with pytest.raises(FormatError, match="<I>"):
        token_map_from_tokenizer("compact", bpe_chat_tokenizer)
    # digits grouped into one token
    vocab = {"<unk>": 0, "\n": 1, **{str(d): 2 + d for d in range(10)}, "12": 12}
    raw = Tokenizer(models.WordLevel({"<unk>": 0, "0123456789": 1, "\n": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.raises(FormatError, match="'0' is not a single known token"):
        token_map_from_tokenizer("chat", PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>"))
    # newline swallowed by the pre-tokenizer
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(FormatError, match="newline"):
        token_map_from_tokenizer("chat", PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_tokenizer_saves_and_loads_back(fmt, tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(fmt, extra_tokens=7)
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # a name transformers 4.4x knows too
    back = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(back) == len(tok)
    assert token_map_from_tokenizer(fmt, back).to_json() == token_map_from_tokenizer(fmt, tok).to_json()
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (tok.bos_token_id, tok.eos_token_id,
                                                                         tok.pad_token_id)
    assert back.decode(list(range(len(back)))) == tok.decode(list(range(len(tok))))


def test_build_tokenizer_rejects_bad_arguments():
    with pytest.raises(FormatError, match="unknown format"):
        build_tokenizer("bytes")
    with pytest.raises(ValueError, match="extra_tokens"):
        build_tokenizer("chat", extra_tokens=-1)


# --- model metadata -------------------------------------------------------------------------------

def test_model_meta_round_trip_and_errors(tm, tmp_path):
    write_model_meta(tmp_path, tm, source="tiny")
    back, meta = read_model_meta(tmp_path)
    assert back == tm and meta["source"] == "tiny" and meta["format"] == tm.format
    with pytest.raises(FormatError, match="does not exist"):
        read_model_meta(tmp_path / "missing")
    (tmp_path / "bare").mkdir()
    with pytest.raises(FormatError, match="no arcttt.json"):
        read_model_meta(tmp_path / "bare")
    (tmp_path / "arcttt.json").write_text("{")
    with pytest.raises(FormatError, match="not JSON"):
        read_model_meta(tmp_path)
    (tmp_path / "arcttt.json").write_text(json.dumps({"format": "bytes"}))
    with pytest.raises(FormatError, match="unknown format"):
        read_model_meta(tmp_path)
    (tmp_path / "arcttt.json").write_text(json.dumps({"format": "chat", "token_map": {"format": "chat"}}))
    with pytest.raises(FormatError, match="bad field"):
        read_model_meta(tmp_path)


def test_token_map_checks():
    with pytest.raises(FormatError, match="10 distinct digit"):
        TokenMap("compact", (0,) * 10, 10, (), (11,), (12,), (13,), 15)
    with pytest.raises(FormatError, match="non-empty output and end"):
        TokenMap("compact", tuple(range(10)), 10, (), (11,), (12,), (), 15)
    tm = compact_token_map()
    assert tm.used_ids == list(range(16))
    assert TokenMap.from_json(json.loads(json.dumps(tm.to_json()))) == tm
