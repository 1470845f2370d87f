"""The published checkpoints' formats, token for token. Every golden text and id below is written
by hand from the facts in the peers' own code (shared/FIELD-NOTES.md, issue #11), never produced by
arcttt: NVARC (1ytic/NVARC) and the ARChitects (da-fr/arc-prize-2024)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from arcttt.cli import main
from arcttt.data import Pair, load_split
from arcttt.formats import detect_format, encode, parse_answer
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.tokenizer import FormatError, as_text_tokenizer, load_tokenizer

PREPROMPT = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjklmnpqrstuvwxyz"
G = lambda rows: np.array(rows, dtype=np.uint8)  # noqa: E731

# one small task, written out by hand in both formats
DEMOS = [Pair(G([[1, 2], [3, 4]]), G([[5]]))]
QUERY, ANSWER = G([[0, 9]]), G([[7], [8]])


def test_nvarc_ids_by_hand():
    tm = token_map_from_tokenizer("nvarc", build_tokenizer("nvarc"))
    enc = encode(DEMOS, QUERY, tm, ANSWER)
    # <|im_start|>=14 user=11 \n=10 ... <|im_end|>=15 assistant=12; no newline after a grid's last
    # row, none after <|im_end|>, no bos, no system turn
    prompt = [14, 11, 10, 1, 2, 10, 3, 4, 15, 14, 12, 10, 5, 15,
              14, 11, 10, 0, 9, 15, 14, 12, 10]
    assert enc.ids[:enc.prompt_len].tolist() == prompt
    assert enc.ids[enc.prompt_len:].tolist() == [7, 10, 8, 15]
    assert (tm.pad, tm.rows) == (13, "separated")
    # the answer that model produces (last digit, then <|im_end|>) parses; a trailing newline does not
    assert np.array_equal(parse_answer([7, 10, 8, 15], tm, require_end=True), ANSWER)
    assert not parse_answer([7, 10, 8, 10, 15], tm, require_end=True)


def test_architects_text_by_hand():
    tok = build_tokenizer("architects")
    tm = token_map_from_tokenizer("architects", tok)
    text = as_text_tokenizer(tok)
    enc = encode(DEMOS, QUERY, tm, ANSWER)
    assert text.decode(enc.ids[:enc.prompt_len]) == f"<s>{PREPROMPT}I12\n34\n+/-=O5\n</s>I09\n+/-=O"
    assert text.decode(enc.ids[enc.prompt_len:]) == "7\n8\n</s>"
    # one token per character
    assert len(enc.ids) == len(f"_{PREPROMPT}I12\n34\n+/-=O5\n_I09\n+/-=O7\n8\n_")


def _rows(grid) -> str:
    return "\n".join("".join(str(int(v)) for v in row) for row in grid)


def nvarc_reference(task, k: int) -> tuple[str, str]:
    """NVARC's text of test input ``k`` with every demonstration (their layout, from the facts)."""
    text = "".join(f"<|im_start|>user\n{_rows(p.input)}<|im_end|><|im_start|>assistant\n{_rows(p.output)}<|im_end|>"
                   for p in task.train)
    return (text + f"<|im_start|>user\n{_rows(task.test_inputs[k])}<|im_end|><|im_start|>assistant\n",
            f"{_rows(task.test_outputs[k])}<|im_end|>")


def architects_reference(task, k: int) -> tuple[str, str]:
    """The ARChitects' text (bos + preprompt, then per pair I{in}\\n+/-=O{out}\\n + eos)."""
    text = "<s>" + PREPROMPT + "".join(f"I{_rows(p.input)}\n+/-=O{_rows(p.output)}\n</s>" for p in task.train)
    return text + f"I{_rows(task.test_inputs[k])}\n+/-=O", f"{_rows(task.test_outputs[k])}\n</s>"


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
    from arcttt.data import export_split

    return export_split("arc-agi-2-eval", tmp_path_factory.mktemp("data"), limit=30)


def _show(capsys, *args) -> dict:
    with pytest.raises(SystemExit) as exit_:
        main(["show-prompt", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("fmt, reference", [("nvarc", nvarc_reference), ("architects", architects_reference)])
def test_show_prompt_matches_the_peers_rendering(fmt, reference, eval_files, nvarc_model_dir, architects_model_dir,
                                                 capsys):
    """Single- and multi-test tasks: show-prompt's ids are the raw tokenizer's ids of the peers' text."""
    from tokenizers import Tokenizer

    model = nvarc_model_dir if fmt == "nvarc" else architects_model_dir
    raw = Tokenizer.from_file(str(model / "tokenizer.json"))
    challenges, solutions = eval_files
    tasks = {t.id: t for t in load_split("arc-agi-2-eval")}
    chosen = json.loads(challenges.read_text())
    single = next(i for i in chosen if len(chosen[i]["test"]) == 1)
    multi = next(i for i in chosen if len(chosen[i]["test"]) > 1)
    for task_id, k in ((single, 0), (multi, 0), (multi, 1)):
        args = [task_id, "--challenges", challenges, "--model", model, "--solutions", solutions, "--test", k,
                "--max-len", 100_000]
        got = _show(capsys, *args, "--format", fmt)
        text, answer = reference(tasks[task_id], k)
        assert got["prompt_ids"] == raw.encode(text, add_special_tokens=False).ids
        assert got["answer_ids"] == raw.encode(answer, add_special_tokens=False).ids
        assert (got["prompt_text"], got["answer_text"]) == (text, answer)
        assert (got["task_id"], got["test"], got["augmentation"], got["format"]) == (task_id, k, "id", fmt)


def test_autotokenizer_would_have_lied_and_arcttt_does_not(nvarc_model_dir):
    """The pitfall itself: transformers' AutoTokenizer rebuilds NVARC's WordLevel file as BPE and
    drops `user`; arcttt reads tokenizer.json with the tokenizers library and refuses a tokenizer
    that does not round-trip, naming the marker and the ids."""
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(nvarc_model_dir, local_files_only=True)
    if auto.encode("<|im_start|>user\n", add_special_tokens=False) == [14, 11, 10]:
        pytest.skip("this transformers version reads NVARC's tokenizer correctly")
    with pytest.raises(FormatError, match=r"input marker '<\|im_start\|>user\\n' encodes to \[14, 10\]"):
        token_map_from_tokenizer("nvarc", auto)
    tok = load_tokenizer(nvarc_model_dir)
    assert tok.encode("<|im_start|>user\n") == [14, 11, 10]
    assert detect_format(tok) == "nvarc" and (tok.eos, tok.pad) == ("<|im_end|>", "<|endoftext|>")


def test_a_tokenizer_with_other_ids_is_refused_for_nvarc():
    """NVARC's ids are part of its format: the same words at other ids are refused, naming both."""
    from tokenizers import Tokenizer

    tok = as_text_tokenizer(build_tokenizer("nvarc"))
    vocab = tok.vocab()
    swapped = json.loads(tok.backend.to_str())
    swapped["model"]["vocab"] = {**vocab, "user": 12, "assistant": 11}
    other = Tokenizer.from_str(json.dumps(swapped))
    with pytest.raises(FormatError, match=r"input '<\|im_start\|>user\\n' is \[14, 12, 10\] in this tokenizer but "
                                          r"\[14, 11, 10\] in the nvarc format's own vocabulary"):
        token_map_from_tokenizer("nvarc", other)
    assert detect_format(other) is None
