"""--set model.adapter=DIR under hostile or broken adapters (issue 19, item 4): an adapter loads only
when every tensor it holds lands on a LoRA weight of the model and every LoRA weight its config asks
for is there; otherwise one error naming the adapter's folder and the first extra or missing key
(peft alone only warned, and TTT started from a fresh LoRA). `run` exits 1 with that one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from arcttt.model import ModelConfig, ModelLoadError, load_model
from helpers import one_error, run_cli


@pytest.fixture(scope="module")
def saved_adapter(tiny_model_dir, tmp_path_factory):
    from test_model import save_adapter

    out = tmp_path_factory.mktemp("adapter") / "adapter"
    save_adapter(tiny_model_dir, out)
    return out


def variant(saved_adapter, tmp_path, change):
    out = tmp_path / "adapter"
    shutil.copytree(saved_adapter, out)
    weights = load_file(str(out / "adapter_model.safetensors"))
    weights = change(weights)
    if weights is not None:
        save_file(weights, str(out / "adapter_model.safetensors"))
    return out


CHANGES = {
    "renamed": lambda w: {k.replace("lora_A", "lora_Z"): v for k, v in w.items()},
    "half": lambda w: dict(list(sorted(w.items()))[: len(w) // 2]),
    "extra": lambda w: {**w, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight": torch.zeros(4, 64)},
    "empty": lambda w: {"unrelated": torch.zeros(1)},
}


@pytest.mark.parametrize("change", CHANGES)
def test_an_adapter_whose_keys_do_not_fit_is_refused(change, saved_adapter, tiny_model_dir, tmp_path):
    adapter = variant(saved_adapter, tmp_path, CHANGES[change])
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(adapter)))
    message = str(e.value)
    assert message.startswith(f"adapter {adapter}: its weights do not fit the model (")
    assert "\n" not in message
    assert ("is not a LoRA weight of the model" if change in ("renamed", "extra", "empty") else
            "is not in the adapter") in message


def test_a_config_whose_targets_differ_from_the_weights_is_refused(saved_adapter, tiny_model_dir, tmp_path):
    adapter = variant(saved_adapter, tmp_path, lambda w: None)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["k_proj", "v_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=f"adapter {adapter}: its weights do not fit .*q_proj"):
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(adapter)))


@pytest.mark.parametrize("content", [b"", b"\xff" * 64, b"{}"])
def test_an_unreadable_adapter_file_names_the_adapter_not_the_base(content, saved_adapter, tiny_model_dir, tmp_path):
    adapter = variant(saved_adapter, tmp_path, lambda w: None)
    (adapter / "adapter_model.safetensors").write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(adapter)))
    assert str(e.value).startswith(f"adapter {adapter}") or str(e.value).startswith(str(adapter))
    assert not str(e.value).startswith(str(tiny_model_dir))


def test_run_with_a_misfit_adapter_exits_1_with_one_line(saved_adapter, tiny_model_dir, tmp_path, capsys):
    from arcttt.data import export_split

    adapter = variant(saved_adapter, tmp_path, CHANGES["half"])
    challenges, _ = export_split("arc-agi-1-eval", tmp_path / "data", limit=1)
    code, _, err = run_cli(["run", "--challenges", challenges, "--model", tiny_model_dir, "--out",
                            tmp_path / "submission.json", "--run-dir", tmp_path / "run", "--time-budget", "120",
                            "--workers", "1", "--config", "cpu-smoke", "--set", f"model.adapter={adapter}"], capsys)
    assert code == 1, err
    assert f"adapter {adapter}: its weights do not fit the model" in one_error(err)


def test_a_whole_adapter_still_loads(saved_adapter, tiny_model_dir):
    s = load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(saved_adapter)))
    assert len(s.snapshot) == 8
