"""The peak-memory estimate: every part checked against figures computed by hand for a small shape,
the shape's parameter count against a real model, and the plan's report (``profile --plan``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from arcttt.config import load_config
from arcttt.kvcache import rows_within
from arcttt.memory import GIB, NF4_BYTES, OVERHEAD_BYTES, QWEN3_4B, ModelShape, estimate, memory_report

# layers 2, hidden 8, 2 heads x 4 (attn 8), 1 kv head (kv 4), MLP 16, vocabulary 10, untied head
SHAPE = ModelShape(layers=2, hidden=8, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10, tied=False)
# linear weights per block: q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate 8x16 + up 8x16 + down 16x8 = 576
# other: embeddings 80 + head 80 + norms (2 x 2 + 1) x 8 = 200
# LoRA r=2 on all 7, per block: 2 x (16 + 12 + 12 + 16 + 24 + 24 + 24) = 256
# kept per token and block: 4x8 + 2x8 + 2x4 + 4x16 + 2x7 = 134 values


def small_cfg(*overrides):
    base = ["model.dtype=bf16", "model.load_in_4bit=False", "model.gradient_checkpointing=False",
            "model.max_seq_len=32", "model.lora.rank=2", "data.max_len=32", "ttt.batch_tokens=64",
            "ttt.optimizer=adamw8bit", "ttt.grad_checkpointing=False", "search.n_augmentations=4",
            "search.max_batch_tokens=64", "search.batch_views=True", "select.n_views=2", "select.batch_size=3"]
    return load_config("kaggle-l4x4", [*base, *overrides])


def test_shape_counts():
    assert SHAPE.linear_params == 2 * 576 and SHAPE.other_params == 200 and SHAPE.n_params == 1352
    assert SHAPE.kv_bytes_per_token(2) == 2 * 2 * 4 * 2
    # Qwen3-4B: 147,456 bytes of bf16 cache a token; with its full 151,936-token vocabulary 4.02 B
    # parameters (the q/k norms, 9,216 values, are not counted)
    assert QWEN3_4B.kv_bytes_per_token() == 147_456
    full = ModelShape(**{**QWEN3_4B.__dict__, "vocab": 151_936})
    assert abs(full.n_params - 4_022_468_096) == 9_216


def test_every_part_by_hand():
    e = estimate(small_cfg("model.lora.train_embeddings=True"), SHAPE)
    assert e.weights == 1352 * 2
    assert e.adapter == 512 * 4 + 80 * 2                  # fp32 LoRA, a bf16 copy of the embeddings
    assert e.train_state == 512 * (4 + 2) + 80 * (2 + 2)   # fp32 grads, 8-bit moments
    tokens = 64                                            # max(batch_tokens 64, longest 32)
    per_layer = 134 * tokens * 2
    logits = tokens * 10 * (2 + 4 + 4)
    assert e.train_activations == 3 * per_layer + logits   # 2 blocks + 1 in flight
    # search: 2 views a batch (64 // 32), each 32 prompt + 931 answer tokens of cache; the prefill's
    # working memory over 64 tokens (2x8 + 8 + 2x4 + 3x16 = 80 values a token); last logits fp32;
    # the identity view's prompt cache, kept for the scoring
    assert e.search == 2 * (32 + 931) * 32 + 64 * 80 * 2 + 2 * 10 * 4 + 32 * 32
    # select: the prompt's cache, its expansion across the batch of 3 with room for the answers,
    # prefill of one prompt, 3 answers' bf16 logits, one fp32 row
    assert e.select == 32 * 32 + 3 * (32 + 931) * 32 + 32 * 80 * 2 + 3 * 931 * 10 * 2 + 931 * 10 * 4
    assert e.overhead == OVERHEAD_BYTES
    assert e.peak == e.weights + e.adapter + OVERHEAD_BYTES + e.select and e.peak_phase == "select"


def test_options_change_the_parts_they_should():
    base = estimate(small_cfg(), SHAPE)
    q = estimate(small_cfg("model.load_in_4bit=True"), SHAPE)
    assert q.weights == pytest.approx(1152 * NF4_BYTES + 200 * 2) and q.train == base.train
    ckpt = estimate(small_cfg("model.gradient_checkpointing=True"), SHAPE)
    assert ckpt.train_activations == 2 * 8 * 64 * 2 + 2 * 134 * 64 * 2 + 64 * 10 * 10
    assert estimate(small_cfg("ttt.grad_checkpointing=True"), SHAPE).train_activations == ckpt.train_activations
    assert estimate(small_cfg("ttt.optimizer=adamw"), SHAPE).train_state == 512 * (4 + 8)
    assert estimate(small_cfg("model.dtype=fp32"), SHAPE).weights == 1352 * 4
    one = estimate(small_cfg("search.batch_views=False"), SHAPE)
    assert one.search == (32 + 931) * 32 + 32 * 80 * 2 + 10 * 4 + 32 * 32
    # a scoring budget of two rows: the batch of 3 becomes 2, and the kept prompt cache (1,024
    # bytes) no longer fits it
    two = estimate(small_cfg(f"select.max_cache_bytes={2 * ((32 + 931) * 32 + 931 * 10 * 4)}"), SHAPE)
    assert two.select == base.select - (32 + 931) * 32 - 931 * 10 * 2 and two.search == base.search
    tight = estimate(small_cfg("select.max_cache_bytes=1000"), SHAPE)
    assert tight.search == base.search - 32 * 32
    assert estimate(small_cfg("select.n_views=0"), SHAPE).select == 0
    with pytest.raises(ValueError, match="no shape known.*wq"):
        estimate(small_cfg("model.lora.target_modules=wq"), SHAPE)


def test_a_saved_adapter_is_estimated_at_its_own_rank(tmp_path):
    # model.adapter: the adapter's own r and targets win at load time, so the estimate uses them
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}))
    e = estimate(small_cfg(f"model.adapter={tmp_path}"), SHAPE)
    assert e.adapter == 2 * 4 * ((8 + 8) + (8 + 4)) * 4    # 2 blocks x r 4 x (q 8+8, v 8+4), fp32
    assert e.train_state == 224 * (4 + 2)
    assert estimate(small_cfg(f"model.adapter={tmp_path / 'missing'}"), SHAPE).adapter == 512 * 4  # model.lora's


def test_template_formats_are_estimated_at_their_longest_answer():
    from arcttt.memory import answer_tokens

    # MIT's numpy print of 30 x 30: 30 rows of 62 characters ("[[" or " [", 30 digits and 29 spaces,
    # "]"), one more "]", 29 newlines, "#": 1,891 characters, at most a token each, then the end
    assert answer_tokens("mit") == 1892 and answer_tokens("compact") == answer_tokens(None) == 931
    base, mit = estimate(small_cfg(), SHAPE), estimate(small_cfg("model.format=mit"), SHAPE)
    assert mit.search - base.search == 2 * (1892 - 931) * 32   # 2 views' caches, 32 bytes a token


def test_shape_from_a_model_dir_matches_the_model(tiny_session):
    shape = ModelShape.from_model_dir(tiny_session.path)
    assert shape.n_params == tiny_session.n_params
    assert (shape.layers, shape.hidden) == (tiny_session.n_layers, tiny_session.hidden_size)
    assert shape.attn == tiny_session.attn_dim


def test_kaggle_presets_on_qwen3_4b():
    """Where the presets stand on the model they are planned for (a change that moves a preset
    across a card's line shows here)."""
    l4 = estimate(load_config("kaggle-l4x4"))
    t4 = estimate(load_config("kaggle-t4x2"))
    assert l4.fits(22 * GIB) and t4.fits(14.5 * GIB)
    # the biggest phase of both is the search: 8 views of 8k (6k) tokens in lock-step; scoring
    # expands an 8k prompt's cache to 3 candidates at a time (its 4 GiB budget), not 8
    assert l4.peak_phase == t4.peak_phase == "search"
    assert rows_within(147_456, 8192, 931, 16, 8, 4 * GIB) == 3
    assert l4.select > 4 * 8192 * 147_456


def test_report_and_profile_plan(tmp_path):
    cfgs = {"kaggle-l4x4": load_config("kaggle-l4x4"),
            "big": load_config("kaggle-l4x4", ["select.batch_size=32", "select.max_cache_bytes=None"])}
    text = memory_report(cfgs)
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:4]}
    assert rows["kaggle-l4x4"][-2:] == ["fits", "fits"]
    assert rows["big"][-2:] == ["NO", "NO"]
    assert float(rows["kaggle-l4x4"][6]) == pytest.approx(estimate(cfgs["kaggle-l4x4"]).peak / GIB, abs=0.006)

    from arcttt.data import export_split

    challenges, _ = export_split("arc-agi-1-eval", tmp_path, limit=2)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "intermediate_size": 16, "vocab_size": 10}))
    out = subprocess.run([sys.executable, "-m", "arcttt", "profile", "--plan", "--challenges", str(challenges),
                          "--config", "kaggle-t4x2", "--model", str(model)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "peak GPU memory per worker (estimated; model model, 0.00 B parameters)" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("kaggle-")]
    assert [line.split()[0] for line in lines] == ["kaggle-t4x2", "kaggle-l4x4"]


def test_profile_plan_with_a_model_that_has_no_shape(tmp_path):
    from arcttt.data import export_split

    challenges, _ = export_split("arc-agi-1-eval", tmp_path, limit=1)
    (tmp_path / "model").mkdir()
    out = subprocess.run([sys.executable, "-m", "arcttt", "profile", "--plan", "--challenges", str(challenges),
                          "--model", str(tmp_path / "model")], capture_output=True, text=True)
    assert out.returncode == 2 and "cannot read its shape: FileNotFoundError" in out.stderr, out.stderr
