"""convert-weights under a hostile shard index (issue 19, items 2 and 7): a shard name must be a plain
file name inside SRC, so an index cannot make it read a file elsewhere or write one outside DST
(the case found: `convert-weights dl/marc models/marc-new` with the entry "../marc/model.bin"
replaced the sibling model's model.safetensors); a weight_map that is not an object of names, or an
index naming a file that is not torch weights, is one error line, exit 2, with nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import assert_refused, run_cli


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def models(tmp_path):
    """models/marc (a converted model, the victim), dl/marc (a download with a shard index)."""
    victim = tmp_path / "models" / "marc"
    victim.mkdir(parents=True)
    (victim / "model.safetensors").write_bytes(b"the sibling model's weights")
    torch.save({"w": torch.ones(3)}, victim / "model.bin")  # a file the index may point at
    src = tmp_path / "dl" / "marc"
    src.mkdir(parents=True)
    (src / "config.json").write_text('{"model_type": "llama"}')
    torch.save({"a": torch.zeros(2)}, src / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(2)}, src / "pytorch_model-00002-of-00002.bin")
    return tmp_path, src, victim


def write_index(src, weight_map):
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def convert(src, dst, capsys):
    return run_cli(["convert-weights", src, dst], capsys)


@pytest.mark.parametrize("name", ["../../models/marc/model.bin", "ABS", "sub/pytorch_model.bin", "..", ".",
                                  "a\\b.bin", "", "pytorch_model-00001-of-00002.safetensors"])
def test_a_shard_name_must_be_a_plain_file_name_in_src(name, models, capsys):
    root, src, victim = models
    if name == "ABS":
        name = str(victim / "model.bin")
    if name.startswith("sub/"):
        (src / "sub").mkdir()
        torch.save({"c": torch.zeros(2)}, src / name)
    write_index(src, {"a": "pytorch_model-00001-of-00002.bin", "b": name})
    before = tree(root)
    code, _, err = convert(src, root / "models" / "marc-new", capsys)
    assert_refused(code, err, "not a plain .bin file name")
    assert tree(root) == before and not (root / "models" / "marc-new").exists()


def test_a_shard_linked_out_of_src_is_refused(models, capsys):
    root, src, victim = models
    (src / "pytorch_model-00002-of-00002.bin").unlink()
    (src / "pytorch_model-00002-of-00002.bin").symlink_to(victim / "model.bin")
    write_index(src, {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"})
    code, _, err = convert(src, root / "out", capsys)
    assert_refused(code, err, "a link out of")
    assert not (root / "out").exists()
    (src / "pytorch_model.bin.index.json").unlink()  # found by name, not by the index: the same rule
    code, _, err = convert(src, root / "out", capsys)
    assert_refused(code, err, "a link out of")


@pytest.mark.parametrize("weight_map", [["pytorch_model-00001-of-00002.bin"], 7, {"a": 3}, {"a": None}, "x.bin"])
def test_a_weight_map_that_is_not_names_is_one_line(weight_map, models, capsys):
    root, src, _ = models
    write_index(src, weight_map)
    code, _, err = convert(src, root / "out", capsys)
    assert_refused(code, err, "weight_map")
    assert not (root / "out").exists()


@pytest.mark.parametrize("content", [b"hello, these are notes\n", b"", b"PK\x03\x04 truncated zip"])
def test_an_index_naming_a_file_that_is_not_torch_weights_is_one_line(content, models, capsys):
    root, src, _ = models
    (src / "notes.bin").write_bytes(content)
    write_index(src, {"a": "pytorch_model-00001-of-00002.bin", "b": "notes.bin"})
    code, _, err = convert(src, root / "out", capsys)
    assert_refused(code, err, "notes.bin: cannot read as torch weights")
    assert not (root / "out").exists() and sorted(p.name for p in root.iterdir()) == ["dl", "models"]


def test_a_deeply_nested_index_is_one_line(models, capsys):
    root, src, _ = models
    (src / "pytorch_model.bin.index.json").write_text('{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}")
    code, _, err = convert(src, root / "out", capsys)
    assert_refused(code, err, "weight_map")
