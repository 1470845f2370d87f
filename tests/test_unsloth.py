"""The unsloth backend on the tiny model: load (16-bit and 4-bit), a few TTT steps, exact reset.

Without a GPU unsloth runs its CPU fallback (transformers + peft underneath, with its own loader,
LoRA setup and train/inference switches), which is what this covers here; on a GPU the same test
runs its CUDA path. Skipped only when unsloth is not installed (``bash scripts/setup.sh --dev
--unsloth`` installs it). The checks run in a child interpreter: importing unsloth patches
transformers, peft and trl process-wide, which must not leak into the other tests; and an
unsloth that is installed but fails to import fails this test instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.unsloth,
    pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is not installed"),
]


def child(model_dir: str) -> dict:
    """Runs in the child interpreter; returns what the test asserts on."""
    import unsloth  # noqa: F401  (first, as unsloth asks, before transformers)
    import torch

    from arcttt.data import load_split
    from arcttt.model import LoraConfig, ModelConfig, load_model
    from arcttt.ttt import TTTConfig, mean_loss, train_task
    from arcttt.ttt_data import DataConfig, training_sequences

    ids = torch.tensor([[14, 11, 1, 2, 10, 3, 4, 10, 12, 5, 6, 10, 13, 11, 0, 9, 10, 12]])

    def logits(s):
        with torch.inference_mode():
            return s.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.clone()

    task = next(t for t in load_split("arc-agi-1-train") if t.id == "0d3d703e")
    lora = LoraConfig(rank=8, alpha=16)
    hf = logits(load_model(model_dir, ModelConfig(backend="hf", lora=lora)))
    out = {}
    for bits in (16, 4):
        s = load_model(model_dir, ModelConfig(backend="unsloth", load_in_4bit=bits == 4, lora=lora))
        seqs = training_sequences(task, s.token_map, DataConfig(n_sequences=8, colours=False)).sequences
        before, loss0 = logits(s), mean_loss(s, seqs)
        with torch.inference_mode():
            first = s.model(input_ids=ids[:, :8], attention_mask=torch.ones_like(ids[:, :8]), use_cache=True)
            rest = s.model(input_ids=ids[:, 8:], attention_mask=torch.ones_like(ids), use_cache=True,
                           past_key_values=first.past_key_values)
        result = train_task(s, seqs, TTTConfig(steps=6, lr=1e-2, batch_tokens=2048))
        trained, loss1 = logits(s), mean_loss(s, seqs)
        s.reset()
        layer = s.model.get_base_model().model.layers[0].self_attn.q_proj
        out[bits] = {
            "backend": s.backend, "base_layer": type(layer.base_layer).__name__, "training": s.model.training,
            "hf_diff": float((before - hf).abs().max()),
            "cache_diff": float((torch.cat([first.logits, rest.logits], 1) - before).abs().max()),
            "steps": result.steps, "stopped": result.stopped, "loss0": loss0, "loss1": loss1,
            "trained_changed": not torch.equal(trained, before),
            "reset_exact": all(torch.equal(p, s.snapshot[n]) for n, p in s.trainable_parameters().items()),
            "logits_after_reset_equal": torch.equal(logits(s), before), "loss_after_reset": mean_loss(s, seqs),
        }
    return out


def in_child(cwd, function: str, *paths) -> dict:
    """``function(*paths)`` of this module, run in a fresh Python (unsloth patches transformers at
    import: it must not leak into the other tests); its JSON result."""
    env = {k: v for k, v in os.environ.items() if k != "UNSLOTH_COMPILE_LOCATION"} | {"OMP_NUM_THREADS": "1"}
    args = ", ".join(repr(str(p)) for p in paths)
    code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); from test_unsloth import "
            f"{function}; print('RESULT', json.dumps({function}({args})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[0].removeprefix("RESULT "))


def test_unsloth_load_train_reset(tiny_model_dir, tmp_path):
    results = in_child(tmp_path, "child", tiny_model_dir)
    for bits, r in results.items():
        assert r["backend"] == "unsloth" and not r["training"], (bits, r)
        assert r["base_layer"] == ("Linear4bit" if bits == "4" else "Linear"), (bits, r)
        if bits == "16":  # same weights as the hf backend, so the same logits
            assert r["hf_diff"] < 1e-5, r
        assert r["cache_diff"] < 1e-4, (bits, r)
        assert r["steps"] == 6 and r["stopped"] == "done" and r["trained_changed"], (bits, r)
        assert r["loss1"] < r["loss0"], (bits, r)
        assert r["reset_exact"] and r["logits_after_reset_equal"] and r["loss_after_reset"] == r["loss0"], (bits, r)
    # load_model points unsloth's kernel cache at the temp dir, not the (maybe read-only) working dir
    assert not (tmp_path / "unsloth_compiled_cache").exists()


def adapter_child(model_dir: str, adapter_dir: str) -> dict:
    """Runs in the child interpreter: a saved adapter under unsloth, against the hf backend."""
    import unsloth  # noqa: F401
    import torch

    from arcttt.data import load_split
    from arcttt.model import ModelConfig, load_model
    from arcttt.ttt import TTTConfig, train_task
    from arcttt.ttt_data import DataConfig, training_sequences

    ids = torch.tensor([[14, 11, 1, 2, 10, 3, 4, 10, 12, 5, 6, 10, 13, 11, 0, 9, 10, 12]])

    def logits(s):
        with torch.inference_mode():
            return s.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.clone()

    hf = logits(load_model(model_dir, ModelConfig(backend="hf", adapter=adapter_dir)))
    s = load_model(model_dir, ModelConfig(backend="unsloth", adapter=adapter_dir))
    before = logits(s)
    task = next(t for t in load_split("arc-agi-1-train") if t.id == "0d3d703e")
    seqs = training_sequences(task, s.token_map, DataConfig(n_sequences=8, colours=False)).sequences
    train_task(s, seqs, TTTConfig(steps=3, lr=1e-2, batch_tokens=2048))
    trained = logits(s)
    s.reset()
    return {"backend": s.backend, "hf_diff": float((before - hf).abs().max()),
            "ranks": sorted({int(v.shape[0]) for n, v in s.snapshot.items() if "lora_A" in n}),
            "trained_changed": not torch.equal(trained, before), "reset_equal": torch.equal(logits(s), before)}


def test_unsloth_starts_from_a_saved_adapter(tiny_model_dir, tmp_path):
    """model.adapter under unsloth: attached as unsloth's own loader attaches one (peft, then
    patch_peft_model); same logits as hf; reset restores it exactly."""
    from test_model import save_adapter

    save_adapter(tiny_model_dir, tmp_path / "adapter")
    r = in_child(tmp_path, "adapter_child", tiny_model_dir, tmp_path / "adapter")
    assert r["backend"] == "unsloth" and r["ranks"] == [4], r
    assert r["hf_diff"] < 1e-5 and r["trained_changed"] and r["reset_equal"], r
