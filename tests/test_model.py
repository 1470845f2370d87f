"""Model loading (hf backend, fp32 and bitsandbytes 4-bit on CPU), the LoRA snapshot/reset, and
make_tiny_model, on the tiny random Llama."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from arcttt import formats, modeldir
from arcttt.model import LoraConfig, ModelConfig, ModelLoadError, load_model, make_tiny_model
from arcttt.ttt import TTTConfig, mean_loss, train_task
from arcttt.ttt_data import DataConfig, training_sequences

IDS = torch.tensor([[14, 11, 1, 2, 10, 3, 4, 10, 12, 5, 6, 10, 7, 8, 10, 13, 11, 0, 9, 10, 12]])


def task_sequences(arc1_train, tm, task_id="0d3d703e", n=8):
    task = next(t for t in arc1_train if t.id == task_id)
    return training_sequences(task, tm, DataConfig(n_sequences=n, colours=False)).sequences


def logits(session, ids=IDS):
    with torch.inference_mode():
        return session.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.clone()


def adapter_state(session):
    return {n: p.detach().clone() for n, p in session.trainable_parameters().items()}


def test_configs_reject_bad_values():
    with pytest.raises(ValueError, match="rank must be >= 1.*dropout"):
        LoraConfig(rank=0, dropout=1.5)
    with pytest.raises(ValueError, match="train_embeddings"):
        LoraConfig(target_modules=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="backend.*dtype"):
        ModelConfig(backend="vllm", dtype="int8")
    assert ModelConfig(lora={"rank": 4}).lora == LoraConfig(rank=4)


def test_load_errors_name_the_path_and_the_fault(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=f"{tmp_path / 'nope'} does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="empty is not a model directory: no config.json"):
        load_model(tmp_path / "empty")

    bin_only = tmp_path / "bin_only"
    shutil.copytree(tiny_model_dir, bin_only)
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights \\(found: pytorch_model.bin\\); only "
                                             "safetensors are loaded: convert .bin weights with `arcttt convert-weights"):
        load_model(bin_only)

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="corrupt: cannot load the model with backend hf: SafetensorError"):
        load_model(corrupt, ModelConfig(backend="hf"))

    odd = tmp_path / "odd_format"
    shutil.copytree(tiny_model_dir, odd)
    meta = json.loads((odd / modeldir.META_FILE).read_text())
    (odd / modeldir.META_FILE).write_text(json.dumps({**meta, "format": "morse"}))
    with pytest.raises(ModelLoadError, match="odd_format.*unknown format 'morse'"):
        load_model(odd)
    (odd / modeldir.META_FILE).unlink()
    with pytest.raises(ModelLoadError, match=f"no {modeldir.META_FILE}, and its tokenizer does not pin down a format: "
                                             "give --format"):
        load_model(odd)
    assert load_model(odd, ModelConfig(backend="hf", format="compact")).token_map == formats.compact_token_map()
    with pytest.raises(ModelLoadError, match="odd_format: tokenizer .*cannot encode '<\\|im_start\\|>user"):
        load_model(odd, ModelConfig(backend="hf", format="nvarc"))


def test_make_tiny_model_writes_a_portable_directory(tmp_path):
    from transformers import AutoTokenizer

    out = make_tiny_model(tmp_path / "chat", "chat", hidden=32, layers=1, heads=2, intermediate=48,
                          extra_tokens=5, seed=3)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            modeldir.META_FILE} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and config["rope_theta"] == 10000.0  # 4.4x spellings too
    tm, meta = modeldir.read_model_meta(out)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert modeldir.token_map_from_tokenizer("chat", tok) == tm and meta["seed"] == 3
    assert config["vocab_size"] == len(tok) and config["hidden_size"] == 32 and config["num_key_value_heads"] == 1
    with pytest.raises(ValueError, match="even head size"):
        make_tiny_model(tmp_path / "bad", hidden=20, heads=4)


def test_describe_model_dir_says_what_the_model_is(tmp_path):
    from arcttt.modeldir import describe_model_dir

    out = make_tiny_model(tmp_path / "m", hidden=32, layers=1, heads=2, intermediate=48)
    # by hand: per layer q 32x32 + k, v 32x16 (one kv head of 16) + o 32x32 + MLP 3 x 32x48 + 2 norms
    # of 32 = 7,744; final norm 32, embeddings and lm_head 16 x 32 each: 8,800
    assert describe_model_dir(out) == (f"{out}: LlamaForCausalLM, 1 layers x 32, 8,800 weights, float32, format "
                                       "compact, random weights from make_tiny_model (solves nothing: checks the "
                                       "mechanics)")
    (out / modeldir.META_FILE).unlink()
    assert describe_model_dir(out, "compact").endswith(
        "float32, format compact, no arcttt.json (a published checkpoint, run in its given or detected format)")
    (out / modeldir.META_FILE).write_text(json.dumps({"format": "compact", "source": "arcttt finetune",
                                                     "base_source": "make_tiny_model", "steps": 7,
                                                     "data": ["synthetic:9", "arc-agi-1-train"],
                                                     "excluded": ["arc-agi-1-eval"]}))
    assert describe_model_dir(out).endswith("format compact, trained by arcttt finetune from random init, 7 steps "
                                            "on synthetic:9 + arc-agi-1-train; excluded: arc-agi-1-eval")
    assert describe_model_dir(tmp_path / "nowhere") == f"{tmp_path / 'nowhere'}: not found"
    for garbage in (b"garbage", b"\xff" * 8 + b"{}", (2).to_bytes(8, "little") + b"[]"):  # never raises
        (out / "model.safetensors").write_bytes(garbage)
        assert describe_model_dir(out) == (f"{out}: LlamaForCausalLM, 1 layers x 32, float32, format compact, "
                                           "trained by arcttt finetune from random init, 7 steps on synthetic:9 + "
                                           "arc-agi-1-train; excluded: arc-agi-1-eval")


def test_cli_make_tiny_model(tmp_path, capsys):
    from arcttt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["make-tiny-model", str(tmp_path / "m"), "--hidden", "32", "--layers", "1"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "m")
    session = load_model(tmp_path / "m")  # backend auto: hf without a CUDA GPU, unsloth installed or not
    assert (session.backend, session.n_layers, session.hidden_size) == ("hf", 1, 32)


def test_imports_are_lazy_and_loading_is_offline(tiny_model_dir):
    """``import arcttt.model/ttt`` pulls in none of transformers, peft, unsloth, bitsandbytes; load_model
    sets the offline switches before transformers is first imported, and never imports unsloth for hf."""
    import os
    import subprocess
    import sys

    code = f"""
import os, sys
import arcttt, arcttt.model, arcttt.ttt
heavy = [m for m in ("transformers", "peft", "unsloth", "bitsandbytes") if m in sys.modules]
assert not heavy, heavy
import builtins
seen = {{}}
real_import = builtins.__import__
def spy(name, *args, **kwargs):
    if name.startswith("transformers") and "env" not in seen:
        seen["env"] = [os.environ.get(k)
                       for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS")]
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
arcttt.model.load_model({str(tiny_model_dir)!r}, arcttt.model.ModelConfig(backend="hf"))
assert seen["env"] == ["1", "1", "1"], seen
assert "unsloth" not in sys.modules
print("ok")
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "UNSLOTH_DISABLE_STATISTICS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_hf_fp32_session(tiny_session, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    s = tiny_session
    assert (s.backend, s.dtype, s.device.type, s.n_layers, s.hidden_size) == ("hf", torch.float32, "cpu", 2, 64)
    assert s.token_map == formats.compact_token_map()
    assert s.n_params == params_in_file(tiny_model_dir)
    names = list(s.trainable_parameters())
    assert names and all("lora_" in n for n in names) and s.n_trainable == sum(v.numel() for v in s.snapshot.values())
    assert not s.model.training
    # a fresh adapter (B = 0) leaves the base model's logits unchanged
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()
    with torch.inference_mode():
        expected = base(input_ids=IDS).logits
    torch.testing.assert_close(logits(s), expected)


def test_kv_cache_interface(tiny_session):
    """What search relies on: a prefix's cache, then the rest, gives the logits of one full pass."""
    s = tiny_session
    full = logits(s)
    with torch.inference_mode():
        first = s.model(input_ids=IDS[:, :9], attention_mask=torch.ones_like(IDS[:, :9]), use_cache=True)
        rest = s.model(input_ids=IDS[:, 9:], attention_mask=torch.ones_like(IDS), use_cache=True,
                       past_key_values=first.past_key_values)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], dim=1), full)


def test_reset_restores_adapter_and_logits_exactly(tiny_model_dir, arc1_train):
    """Train on task A, reset: the adapter equals the snapshot bit for bit and the logits equal the
    untrained ones; the adapter's fully trained embeddings/head are restored too."""
    s = load_model(tiny_model_dir, ModelConfig(backend="hf", lora=LoraConfig(rank=8, alpha=16, train_embeddings=True,
                                                                              train_lm_head=True)))
    assert any("embed_tokens" in n for n in s.snapshot) and any("lm_head" in n for n in s.snapshot)
    before, initial = logits(s), adapter_state(s)
    train_task(s, task_sequences(arc1_train, s.token_map), TTTConfig(steps=3, lr=1e-2))
    changed = adapter_state(s)
    assert any(not torch.equal(changed[n], initial[n]) for n in initial)
    assert not torch.equal(logits(s), before)
    s.reset()
    after = adapter_state(s)
    assert all(torch.equal(after[n], s.snapshot[n]) and torch.equal(after[n], initial[n]) for n in initial)
    assert all(p.grad is None for p in s.trainable_parameters().values())
    assert torch.equal(logits(s), before) and not s.model.training


def test_hf_4bit_on_cpu_trains_and_resets(tiny_model_dir, arc1_train):
    """bitsandbytes nf4 on CPU: the base layers are 4-bit, the parameter count is the unquantized one,
    and training after an inference pass gives the same losses as before it (bitsandbytes would
    otherwise repack the 4-bit weights for inference and break backward)."""
    s = load_model(tiny_model_dir, ModelConfig(backend="hf", load_in_4bit=True, lora=LoraConfig(rank=8, alpha=16)))
    layer = s.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    assert s.n_params == params_in_file(tiny_model_dir)
    seqs = task_sequences(arc1_train, s.token_map)
    cfg = TTTConfig(steps=4, lr=1e-2, batch_tokens=2048)
    before = logits(s)
    first = train_task(s, seqs, cfg)
    s.reset()
    assert torch.equal(logits(s), before)
    mean_loss(s, seqs)  # an inference pass between tasks, as search does
    second = train_task(s, seqs, cfg)
    assert first.steps == second.steps == 4 and first.losses == second.losses


def save_adapter(model_dir, out, seed=1):
    """An adapter saved by peft (r=4, alpha 8, q/v only) whose weights are all non-zero."""
    s = load_model(model_dir, ModelConfig(backend="hf", lora=LoraConfig(rank=4, alpha=8, use_rslora=False,
                                                                         target_modules=("q_proj", "v_proj"))))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in s.trainable_parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    s.model.save_pretrained(out)
    return logits(s)


def test_adapter_is_each_tasks_starting_point(tiny_model_dir, arc1_train, tmp_path, caplog):
    """model.adapter: the saved LoRA is loaded (its rank, not model.lora's), changes the logits, and
    reset after TTT restores it bit for bit, not a fresh LoRA."""
    saved_logits = save_adapter(tiny_model_dir, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    cfg = ModelConfig(backend="hf", adapter=str(tmp_path / "adapter"), lora=LoraConfig(rank=8, alpha=16))
    with caplog.at_level("INFO", logger="arcttt.model"):
        s = load_model(tiny_model_dir, cfg)
    assert "its own r=4, alpha=8" in caplog.text and "are not" in caplog.text
    names = list(s.snapshot)
    assert len(names) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    assert all("q_proj" in n or "v_proj" in n for n in names)
    assert {tuple(v.shape) for n, v in s.snapshot.items() if "lora_A" in n} == {(4, 64)}
    loaded = logits(s)
    torch.testing.assert_close(loaded, saved_logits)
    fresh = load_model(tiny_model_dir, ModelConfig(backend="hf", lora=LoraConfig(rank=4, alpha=8)))
    assert (loaded - logits(fresh)).abs().max() > 1e-2  # not the base model's
    train_task(s, task_sequences(arc1_train, s.token_map), TTTConfig(steps=3, lr=1e-2))
    assert not torch.equal(logits(s), loaded)
    s.reset()
    assert torch.equal(logits(s), loaded)


def test_adapter_errors(tiny_model_dir, tmp_path):
    from arcttt.config import load_config

    assert load_config("cpu-smoke", [f"model.adapter={tmp_path / 'a'}"]).model.adapter == str(tmp_path / "a")
    assert load_config("cpu-smoke").model.adapter is None
    with pytest.raises(ModelLoadError, match="adapter directory .*nope does not exist"):
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(tmp_path / "nope")))
    save_adapter(tiny_model_dir, tmp_path / "bin")
    (tmp_path / "bin" / "adapter_model.safetensors").rename(tmp_path / "bin" / "adapter_model.bin")
    with pytest.raises(ModelLoadError, match="adapter_model.bin \\(a pickle\\).*`arcttt convert-weights SRC DST`"):
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(tmp_path / "bin")))
    (tmp_path / "bin" / "adapter_config.json").unlink()
    with pytest.raises(ModelLoadError, match="not a PEFT adapter directory: no adapter_config.json"):
        load_model(tiny_model_dir, ModelConfig(backend="hf", adapter=str(tmp_path / "bin")))


def params_in_file(model_dir) -> int:
    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", "pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())
