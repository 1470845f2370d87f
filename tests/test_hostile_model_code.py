"""No command ever runs a model folder's own Python (issue 19, item 1).

The folder is the tiny model with an ``auto_map`` in tokenizer_config.json and config.json that
points at its own ``evil.py``, which writes a marker file when imported. transformers, asked
without ``trust_remote_code=False``, offers on stdin to run that code and runs it on ``y``. Every
command that reads a model folder is run here with ``y`` on stdin and with stdin at its end: the
marker never appears, nothing asks, and the command ends with success or one ``error:`` line."""

from __future__ import annotations

import io
import json
import sys

import pytest

from helpers import error_lines, one_error, run_cli

EVIL_PY = """from pathlib import Path
Path({marker!r}).write_text("the model folder's code ran")
from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel
from transformers import PreTrainedTokenizerFast as EvilTokenizer
"""


@pytest.fixture(scope="module")
def evil_dir(tmp_path_factory):
    """(model folder, marker path, a challenges file of one task)."""
    from arcttt.data import export_split
    from arcttt.model import make_tiny_model

    root = tmp_path_factory.mktemp("evil")
    marker = root / "MARKER"
    path = make_tiny_model(root / "model", meta=False)
    tok = json.loads((path / "tokenizer_config.json").read_text())
    tok.update(tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["evil.EvilTokenizer", "evil.EvilTokenizer"]})
    (path / "tokenizer_config.json").write_text(json.dumps(tok))
    config = json.loads((path / "config.json").read_text())
    config.update(model_type="evilmodel", auto_map={"AutoConfig": "evil.EvilConfig",
                                                    "AutoModelForCausalLM": "evil.EvilModel"})
    (path / "config.json").write_text(json.dumps(config))
    (path / "evil.py").write_text(EVIL_PY.format(marker=str(marker)))
    challenges, _ = export_split("arc-agi-1-eval", root / "data", limit=1)
    task_id = next(iter(json.loads(challenges.read_text())))
    return path, marker, challenges, task_id


def _commands(model, out, challenges, task_id):
    return {
        "finetune": ["finetune", "--model", model, "--out", out, "--format", "compact", "--data", "synthetic:4",
                     "--config", "cpu-tiny", "--set", "steps=1", "--set", "batch_rows=1", "--set", "seq_len=1024",
                     "--quiet"],
        "shrink-vocab": ["shrink-vocab", model, out, "--format", "compact"],
        "prepare-weights": ["prepare-weights", model, out, "--format", "compact"],
        "adopt-model": ["adopt-model", model, out, "--format", "compact"],
        "show-prompt": ["show-prompt", task_id, "--challenges", challenges, "--model", model, "--format", "compact"],
        "run": ["run", "--challenges", challenges, "--model", model, "--format", "compact", "--out",
                f"{out}.json", "--run-dir", out, "--time-budget", "120", "--workers", "1"],
        "dry-run": ["dry-run", "--out", out, "--tasks", "1", "--model", model, "--format", "compact",
                    "--time-budget", "120", "--workers", "1"],
    }


@pytest.mark.parametrize("stdin", ["y\n" * 8, ""], ids=["stdin-y", "stdin-closed"])
@pytest.mark.parametrize("command", ["finetune", "shrink-vocab", "prepare-weights", "adopt-model", "show-prompt",
                                     "run", "dry-run"])
def test_a_model_folder_s_code_never_runs(command, stdin, evil_dir, tmp_path, monkeypatch, capsys):
    model, marker, challenges, task_id = evil_dir
    argv = [str(a) for a in _commands(model, tmp_path / "out", challenges, task_id)[command]]
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = run_cli(argv, capsys)
    assert not marker.exists(), f"{command} ran the model folder's code"
    assert "Do you wish to run the custom code" not in out + err
    assert "Traceback" not in err
    assert code in (0, 1, 2)
    if code:
        one_error(err)
    else:
        assert not error_lines(err)
