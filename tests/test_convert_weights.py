"""convert-weights: pickled .bin weights (single, sharded with an index, tied, a PEFT adapter) become
safetensors that load and give the original's logits; a .bin that needs code to unpickle is
refused; nothing is written into the source; the run itself stays safetensors-only."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from arcttt.model import ModelConfig, ModelLoadError, load_model, make_tiny_model  # noqa: E402
from arcttt.weights import WeightsError, convert_weights  # noqa: E402

IDS = torch.tensor([[14, 11, 1, 2, 10, 3, 4, 10, 12, 5, 6, 10, 13, 11, 0, 9, 10, 12]])


class Payload:
    """Stands for whatever a hostile pickle would build; weights_only must refuse to construct it."""


def tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def bin_model_dir(tmp_path, name, *, tie=False, shards=1):
    """A tiny model directory saved as pickles (torch.save of its state dict), with its config,
    tokenizer and arcttt.json; returns (directory, the model)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    ref = make_tiny_model(tmp_path / f"{name}_ref", seed=5)
    model = AutoModelForCausalLM.from_pretrained(ref, local_files_only=True).eval()
    if tie:
        model.config.tie_word_embeddings = True
        model = LlamaForCausalLM(model.config).eval()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    src = tmp_path / name
    shutil.copytree(ref, src)
    (src / "model.safetensors").unlink()
    if tie:
        model.config.to_json_file(src / "config.json")
    state = model.state_dict()
    (src / "training_args.bin").write_bytes(b"not even read")
    if shards == 1:
        torch.save(state, src / "pytorch_model.bin")
        return src, model
    keys = list(state)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: state[k] for k in part}, src / shard)
        weight_map.update({k: shard for k in part})
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {"total_size": 0},
                                                                  "weight_map": weight_map}))
    return src, model


@pytest.mark.parametrize("tie", [False, True])
def test_a_bin_model_converts_and_loads_with_the_same_logits(tmp_path, tie):
    from transformers import AutoModelForCausalLM

    src, model = bin_model_dir(tmp_path, "src", tie=tie)
    before = tree(src)
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights.*`arcttt convert-weights SRC DST`"):
        load_model(src, ModelConfig(backend="hf"))
    done = convert_weights(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert done["converted"] == {"pytorch_model.bin": "model.safetensors"} and done["left_out"] == ["training_args.bin"]
    assert sorted(p.name for p in dst.iterdir()) == ["arcttt.json", "config.json", "generation_config.json",
                                                    "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert tree(src) == before  # nothing written into the source
    want = logits(model)
    got = logits(AutoModelForCausalLM.from_pretrained(dst, local_files_only=True, use_safetensors=True).eval())
    assert torch.equal(got, want)
    torch.testing.assert_close(logits(load_model(dst, ModelConfig(backend="hf")).model), want)


def test_sharded_bins_keep_their_split(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    src, model = bin_model_dir(tmp_path, "src", shards=2)
    done = convert_weights(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    assert done["converted"] == {"pytorch_model-00001-of-00002.bin": "model-00001-of-00002.safetensors",
                                 "pytorch_model-00002-of-00002.bin": "model-00002-of-00002.safetensors"}
    old = json.loads((src / "pytorch_model.bin.index.json").read_text())["weight_map"]
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
                                   for k, v in old.items()}
    state = model.state_dict()
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in state.values())
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        with safe_open(dst / shard, "pt") as f:
            assert sorted(f.keys()) == sorted(k for k, v in index["weight_map"].items() if v == shard)
            assert all(torch.equal(f.get_tensor(k), state[k]) for k in f.keys())
    assert not list(dst.glob("*.bin")) and not (dst / "pytorch_model.bin.index.json").exists()
    got = logits(AutoModelForCausalLM.from_pretrained(dst, local_files_only=True, use_safetensors=True).eval())
    assert torch.equal(got, logits(model))


def test_a_bin_that_needs_code_is_refused(tmp_path):
    src, _ = bin_model_dir(tmp_path, "src")
    torch.save({"model.embed_tokens.weight": torch.zeros(2), "extra": Payload()}, src / "pytorch_model.bin")
    with pytest.raises(WeightsError, match=f"{src / 'pytorch_model.bin'}: needs more than tensors to unpickle"):
        convert_weights(src, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.*"))  # nothing half-written
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(WeightsError, match="exists and is not an empty folder"):
        convert_weights(src, tmp_path / "full")
    with pytest.raises(WeightsError, match="inside it"):
        convert_weights(src, src / "out")
    with pytest.raises(WeightsError, match="no pytorch_model\\*.bin or adapter_model.bin"):
        convert_weights(tmp_path / "full", tmp_path / "dst")


def test_an_adapter_bin_converts_and_loads(tmp_path, capsys):
    """A PEFT adapter saved as adapter_model.bin: refused as model.adapter, converted by the CLI, then
    the converted adapter gives the logits of the one that was saved."""
    from arcttt.cli import main
    from test_model import logits as session_logits, save_adapter

    model_dir = make_tiny_model(tmp_path / "model")
    saved = save_adapter(model_dir, tmp_path / "st")
    src = tmp_path / "bin"
    src.mkdir()
    shutil.copy2(tmp_path / "st" / "adapter_config.json", src)
    from safetensors.torch import load_file

    torch.save(load_file(tmp_path / "st" / "adapter_model.safetensors"), src / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="convert-weights"):
        load_model(model_dir, ModelConfig(backend="hf", adapter=str(src)))
    with pytest.raises(SystemExit) as exit_:
        main(["convert-weights", str(src), str(tmp_path / "converted")])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.splitlines() == ["adapter_model.bin -> adapter_model.safetensors",
                                                    str(tmp_path / "converted")]
    assert sorted(p.name for p in (tmp_path / "converted").iterdir()) == ["adapter_config.json",
                                                                        "adapter_model.safetensors"]
    s = load_model(model_dir, ModelConfig(backend="hf", adapter=str(tmp_path / "converted")))
    assert torch.equal(session_logits(s), saved)
