"""shrink-vocab, prepare-weights and adopt-model on broken model folders (issue 19, items 6 and 7): a
corrupt tokenizer.json, config.json or safetensors file is one error line naming the folder, exit
2, and no destination (nor a temporary sibling of it) is left behind."""

from __future__ import annotations

import shutil

import pytest

from helpers import one_error, run_cli

FAULTS = {
    "tokenizer-garbage": ("tokenizer.json", b"\x00\xffnot json at all"),
    "tokenizer-truncated": ("tokenizer.json", None),
    "config-not-json": ("config.json", b'{"model_type": "llama",'),
    "config-deep": ("config.json", b"[" * 100_000 + b"]" * 100_000),
    "weights-garbage": ("model.safetensors", b"\xff" * 64),
    "weights-truncated": ("model.safetensors", None),
}
COMMANDS = {
    "shrink-vocab": lambda src, dst: ["shrink-vocab", src, dst, "--format", "compact"],
    "prepare-weights": lambda src, dst: ["prepare-weights", src, dst, "--format", "compact"],
    "adopt-model": lambda src, dst: ["adopt-model", src, dst, "--format", "compact", "--copy"],
}


def broken(tiny_model_dir, tmp_path, fault):
    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    name, content = FAULTS[fault]
    if content is None:  # cut in the middle, as an interrupted download leaves it
        content = (src / name).read_bytes()[: len((src / name).read_bytes()) // 2]
    (src / name).write_bytes(content)
    return src


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_source_is_one_line(command, fault, tiny_model_dir, tmp_path, capsys):
    src = broken(tiny_model_dir, tmp_path, fault)
    dst = tmp_path / "dst"
    code, _, err = run_cli(COMMANDS[command](src, dst), capsys)
    if command == "adopt-model" and fault.startswith("weights"):
        # adopt-model links or copies the weights as they are, without reading them: run finds the fault
        assert code == 0, err
        return
    assert code == 2, err
    assert str(src) in one_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
