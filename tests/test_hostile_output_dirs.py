"""One rule for every command that writes a model folder (issue 19, item 3): finetune, shrink-vocab,
prepare-weights, adopt-model and convert-weights never write into their source, never replace a
folder arcttt did not write, replace one of arcttt's own only with --overwrite, and write through a
temporary sibling, so a failure leaves the destination as it was. Each refusal is one error line,
exit 2, and the destination (and the source) are left byte for byte as they were."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import assert_refused, run_cli

COMMANDS = ["finetune", "shrink-vocab", "prepare-weights", "adopt-model", "convert-weights"]


def tree(path):
    """Every file (and link) under ``path``, with its bytes (links: their target)."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink():
        return ("link", str(path.readlink()))
    return {str(p.relative_to(path)): (str(p.readlink()) if p.is_symlink() else p.read_bytes())
            for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """{command: its source folder}: the tiny model, and for convert-weights the same as a pickle."""
    from arcttt.model import make_tiny_model
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("sources")
    model = make_tiny_model(root / "model")
    binary = root / "bin-model"
    shutil.copytree(model, binary)
    torch.save(load_file(str(binary / "model.safetensors")), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    return {c: (binary if c == "convert-weights" else model) for c in COMMANDS}


def argv(command, src, dst, *extra):
    args = {"finetune": ["finetune", "--model", src, "--out", dst, "--data", "synthetic:4", "--config", "cpu-tiny",
                         "--set", "steps=1", "--set", "batch_rows=1", "--set", "seq_len=1024", "--quiet"],
            "shrink-vocab": ["shrink-vocab", src, dst, "--format", "compact"],
            "prepare-weights": ["prepare-weights", src, dst, "--format", "compact"],
            "adopt-model": ["adopt-model", src, dst, "--format", "compact", "--copy"],
            "convert-weights": ["convert-weights", src, dst]}[command]
    return [str(a) for a in [*args, *extra]]


def own_copy(sources, command, tmp_path):
    """A writable copy of the command's source (the cases below point DST into or at it)."""
    src = tmp_path / "src"
    shutil.copytree(sources[command], src, symlinks=True)
    return src


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["same", "inside", "link", "above"])
def test_the_source_is_never_the_destination(command, case, sources, tmp_path, capsys):
    src = own_copy(sources, command, tmp_path)
    if case == "same":
        dst = src
    elif case == "inside":
        dst = src / "out"
    elif case == "link":
        dst = tmp_path / "link"
        dst.symlink_to(src)
    else:
        dst = tmp_path
    before = tree(src)
    code, _, err = run_cli(argv(command, src, dst, "--overwrite"), capsys)
    assert_refused(code, err, "destination")
    assert tree(src) == before


def foreign_folder(tmp_path):
    dst = tmp_path / "someone"
    dst.mkdir()
    (dst / "config.json").write_text('{"mine": true}')
    (dst / "notes.txt").write_text("not a model of arcttt's")
    return dst


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_folder_arcttt_did_not_write_is_never_replaced(command, overwrite, sources, tmp_path, capsys):
    dst = foreign_folder(tmp_path)
    before = tree(dst)
    code, _, err = run_cli(argv(command, sources[command], dst, *(["--overwrite"] if overwrite else [])), capsys)
    assert_refused(code, err, "not written by arcttt" if overwrite else "not an empty folder")
    assert tree(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone"]  # no temporary sibling left


@pytest.mark.parametrize("command", COMMANDS)
def test_an_arcttt_model_is_replaced_only_with_overwrite(command, sources, tiny_model_dir, tmp_path, capsys):
    dst = tmp_path / "ours"
    shutil.copytree(tiny_model_dir, dst)
    (dst / "stale.txt").write_text("from the model that is replaced")
    before = tree(dst)
    code, _, err = run_cli(argv(command, sources[command], dst), capsys)
    assert_refused(code, err, "--overwrite")
    assert tree(dst) == before
    code, _, err = run_cli(argv(command, sources[command], dst, "--overwrite"), capsys)
    assert code == 0, err
    assert not (dst / "stale.txt").exists()  # replaced as a whole, not written over
    assert (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_failure_while_writing_leaves_the_destination_as_it_was(command, sources, tiny_model_dir, tmp_path,
                                                                   capsys, monkeypatch):
    import arcttt.weights as weights

    dst = tmp_path / "ours"
    shutil.copytree(tiny_model_dir, dst)
    before = tree(dst)

    def fail_after_writing(new, *args, **kwargs):  # everything written, then the disk fills up
        assert any(new.iterdir())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights, "replace_dir", fail_after_writing)
    code, _, err = run_cli(argv(command, sources[command], dst, "--overwrite"), capsys)
    assert code == 2 and "No space left on device" in err
    after = tree(dst)
    if command == "finetune":  # its log and checkpoint live in OUT while it trains (and --resume finds them)
        from arcttt.finetune import RUN_FILES

        after = {k: v for k, v in after.items() if k.split("/")[0] not in RUN_FILES}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours"]


def test_finetune_resumes_in_its_own_unfinished_out(sources, tmp_path, capsys):
    out = tmp_path / "out"
    code, out_text, err = run_cli(argv("finetune", sources["finetune"], out, "--set", "steps=2",
                                       "--set", "stop_at_step=1"), capsys)
    assert code == 0 and "continue with --resume" in out_text, err
    code, _, err = run_cli(argv("finetune", sources["finetune"], out, "--set", "steps=2"), capsys)
    assert_refused(code, err, "--resume")
    code, _, err = run_cli(argv("finetune", sources["finetune"], out, "--set", "steps=2", "--resume"), capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "finetune.log").is_file()
    assert json.loads((out / "finetune.json").read_text())["steps"] == 2
    assert not (out / "checkpoint").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
