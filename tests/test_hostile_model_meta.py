"""arcttt.json and tokenizers under hostile input (issue 19, items 6 and 8): a metadata file nested
100k deep, a token_map that is a list or a string, ids that are negative or not integers, and a
tokenizer whose pre-tokenizer panics are each one error line that names the file, with the
documented exit code (show-prompt 2, run 1); text echoed from arcttt.json (its source, on run's
`model:` line) reaches the console without control characters."""

from __future__ import annotations

import json
import shutil

import pytest

from arcttt import cli
from helpers import one_error, run_cli

BAD_META = {
    "deep": lambda m: "[" * 100_000 + "]" * 100_000,
    "token_map-list": lambda m: {**m, "token_map": [1, 2, 3]},
    "token_map-string": lambda m: {**m, "token_map": "0123456789"},
    "negative-ids": lambda m: {**m, "token_map": {**m["token_map"], "digits": [-1, *m["token_map"]["digits"][1:]]}},
    "string-ids": lambda m: {**m, "token_map": {**m["token_map"], "pad": "15"}},
    "bool-ids": lambda m: {**m, "token_map": {**m["token_map"], "newline": True}},
}


@pytest.fixture(scope="module")
def challenges(tmp_path_factory):
    from arcttt.data import export_split

    path, _ = export_split("arc-agi-1-eval", tmp_path_factory.mktemp("data"), limit=1)
    return path, next(iter(json.loads(path.read_text())))


def bad_model(tiny_model_dir, tmp_path, fault, drop_tokenizer=True):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    meta = BAD_META[fault](json.loads((model / "arcttt.json").read_text()))
    (model / "arcttt.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if drop_tokenizer:  # nothing else to check the ids against (a prepared model may ship without one)
        (model / "tokenizer.json").unlink()
    return model


@pytest.mark.parametrize("fault", BAD_META)
def test_show_prompt_names_arcttt_json(fault, tiny_model_dir, challenges, tmp_path, capsys):
    model = bad_model(tiny_model_dir, tmp_path, fault)
    path, task_id = challenges
    code, _, err = run_cli(["show-prompt", task_id, "--challenges", path, "--model", model], capsys)
    assert code == 2 and str(model / "arcttt.json") in one_error(err)


@pytest.mark.parametrize("fault", ["deep", "token_map-list", "negative-ids"])
def test_run_names_arcttt_json_and_exits_1(fault, tiny_model_dir, challenges, tmp_path, capsys):
    model = bad_model(tiny_model_dir, tmp_path, fault)
    path, _ = challenges
    code, _, err = run_cli(["run", "--challenges", path, "--model", model, "--out", tmp_path / "s.json",
                            "--run-dir", tmp_path / "run", "--time-budget", "60"], capsys)
    assert code == 1 and str(model / "arcttt.json") in one_error(err)
    assert (tmp_path / "s.json").is_file()  # the default answers, as for any model that cannot load


def test_a_template_format_s_token_map_that_is_a_list(mit_model_dir, challenges, tmp_path, capsys):
    model = tmp_path / "mit"
    shutil.copytree(mit_model_dir, model)
    (model / "arcttt.json").write_text(json.dumps({"format": "mit", "token_map": ["x"]}))
    path, task_id = challenges
    code, _, err = run_cli(["show-prompt", task_id, "--challenges", path, "--model", model], capsys)
    assert code == 2 and str(model / "arcttt.json") in one_error(err)


def test_a_panicking_pre_tokenizer_is_one_line(tiny_model_dir, challenges, monkeypatch, capsys):
    """A custom Split regex past Oniguruma's retry limit makes tokenizers raise a Rust
    PanicException, a BaseException that `except Exception` lets through: the command's edge
    turns it into one line. The real panic first, then the same exception out of a command."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("((a+)+)+c"), behavior="isolated")
    with pytest.raises(BaseException) as e:
        tok.encode("a" * 30000 + "!")
    panic = e.value
    assert type(panic).__name__ == "PanicException" and not isinstance(panic, Exception)

    import arcttt.modeldir

    def token_map(*args, **kwargs):
        raise panic

    monkeypatch.setattr(arcttt.modeldir, "model_token_map", token_map)
    path, task_id = challenges
    code, _, err = run_cli(["show-prompt", task_id, "--challenges", path, "--model", tiny_model_dir], capsys)
    assert code == 2 and "retry-limit-in-match" in one_error(err)


def test_run_s_model_line_strips_control_characters(tmp_path, capsys):
    summary = {"model": "m: \x1b[2J\x1b[31mred\x1b[0m\nsecond line\r\x07", "tasks": 0, "answered": 0, "failed": 0,
               "rejected": 0, "resumed": 0, "unstarted": 0, "seconds": 1.0, "margin_s": 5.0, "notes": [],
               "write_errors": []}
    assert cli._run_command(lambda: summary, None, tmp_path / "s.json") == 0
    out = capsys.readouterr().out
    model_line = next(line for line in out.splitlines() if line.startswith("model:"))
    assert model_line == "model: m: [2J [31mred [0m second line"
    assert not any(ord(c) < 32 for line in out.splitlines() for c in line)
