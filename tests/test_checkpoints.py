"""Published checkpoints used as they are: an NVARC-shaped directory runs end to end without
arcttt.json; an ARChitects-shaped one saved in bnb 4-bit loads without being cut or quantized again;
`adopt-model` writes a ready directory and nothing into its source; the NVARC recipe's LoRA on the
embeddings trains at its own learning rate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from arcttt.cli import main
from arcttt.data import export_split, load_challenges
from arcttt.model import LoraConfig, ModelConfig, load_model
from arcttt.modeldir import META_FILE, read_model_meta
from arcttt.runner import run
from arcttt.submission import load_submission, validate_submission


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir()}


def test_cpu_smoke_run_on_an_nvarc_directory(nvarc_model_dir, tmp_path):
    """No arcttt.json, no --format: the format is read off NVARC's 16-token tokenizer; every good
    task ends `ok`, a malformed one keeps its defaults, the submission is valid, and nothing is
    written into the model directory (a Kaggle input is read-only)."""
    challenges, _ = export_split("arc-agi-2-eval", tmp_path / "data", limit=3)
    data = json.loads(challenges.read_text())
    data["bad-cell"] = {"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]]}]}
    challenges.write_text(json.dumps(data))
    before = _snapshot(nvarc_model_dir)
    out = tmp_path / "submission.json"
    summary = run(challenges, nvarc_model_dir, out, config="cpu-smoke", run_dir=tmp_path / "run", progress=False,
                  overrides=["ttt.steps=2", "data.n_sequences=2"])
    assert summary["answered"] == 3 and summary["rejected"] == 1 and summary["failed"] == 0
    records = [json.loads(p.read_text()) for p in (tmp_path / "run" / "tasks").glob("*.json")]
    assert sorted(r["status"] for r in records) == ["ok", "ok", "ok", "rejected"]
    assert all(r["ttt"]["steps"] == 2 for r in records if r["status"] == "ok")
    assert validate_submission(load_submission(out), load_challenges(challenges).test_counts()) == []
    assert _snapshot(nvarc_model_dir) == before and not (nvarc_model_dir / META_FILE).exists()


def test_a_wrong_format_stops_the_run_with_one_line_and_defaults(nvarc_model_dir, tmp_path, capsys):
    challenges, _ = export_split("arc-agi-2-eval", tmp_path / "data", limit=2)
    out = tmp_path / "submission.json"
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--challenges", str(challenges), "--model", str(nvarc_model_dir), "--out", str(out),
              "--config", "cpu-smoke", "--format", "architects", "--quiet"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1
    # one line naming the marker and the ids it became (the unknown token: 13, <|endoftext|>)
    assert "the architects format's input marker 'I' encodes to [13], which decodes to '<|endoftext|>'" in err
    assert len(err.strip().splitlines()) == 1 and "holds a valid submission" in err  # one line, and the defaults
    assert validate_submission(load_submission(out), load_challenges(challenges).test_counts()) == []


def test_prequantized_architects_directory_loads_as_it_is(architects_model_dir, tmp_path):
    """Saved in bnb 4-bit and without arcttt.json (as the ARChitects publish theirs): loaded with
    --format architects and the 4-bit preset setting, its weights stay the saved 4-bit ones."""
    from arcttt.weights import quantize_4bit

    staged = tmp_path / "staged"
    import shutil

    shutil.copytree(architects_model_dir, staged)
    from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer, write_model_meta

    write_model_meta(staged, token_map_from_tokenizer("architects", build_tokenizer("architects")))
    published = tmp_path / "Mistral-ARChitects-bnb-4bit"
    quantize_4bit(staged, published, "cpu", "fp32")
    (published / META_FILE).unlink()
    saved = {k: v for k, v in _read_safetensors(published).items() if k.endswith(".weight") and "proj" in k}
    before = _snapshot(published)
    session = load_model(published, ModelConfig(backend="hf", dtype="fp32", load_in_4bit=True, format="architects",
                                                lora=LoraConfig(rank=4, alpha=8)))
    layer = session.model.get_base_model().model.layers[0].self_attn.q_proj
    assert type(layer.base_layer).__name__ == "Linear4bit"
    packed = layer.base_layer.weight
    assert torch.equal(packed.data.view(torch.uint8).flatten().cpu(),
                       saved["model.layers.0.self_attn.q_proj.weight"].view(torch.uint8).flatten())
    assert session.token_map.format == "architects" and _snapshot(published) == before


def _read_safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in folder.glob("*.safetensors"):
        out.update(load_file(f))
    return out


def test_adopt_model_links_the_files_and_writes_only_arcttt_json(architects_model_dir, tmp_path, capsys):
    dst = tmp_path / "ready"
    before = _snapshot(architects_model_dir)
    with pytest.raises(SystemExit) as exit_:
        main(["adopt-model", str(architects_model_dir), str(dst), "--format", "architects"])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert _snapshot(architects_model_dir) == before
    tm, meta = read_model_meta(dst)
    assert tm.format == "architects" and meta["files"] == "linked" and meta["source"] == str(architects_model_dir)
    for p in architects_model_dir.iterdir():
        assert (dst / p.name).is_symlink() and os.readlink(dst / p.name) == str(p.resolve())
    assert load_model(dst, ModelConfig(backend="hf", lora=LoraConfig(rank=4, alpha=8))).token_map == tm
    # a wrong format is refused before anything is written
    with pytest.raises(SystemExit) as exit_:
        main(["adopt-model", str(architects_model_dir), str(tmp_path / "wrong"), "--format", "nvarc"])
    assert exit_.value.code == 2 and not (tmp_path / "wrong").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["adopt-model", str(architects_model_dir), str(dst), "--format", "architects"])
    assert exit_.value.code == 2 and "not an empty folder" in capsys.readouterr().err


def test_embedding_lora_trains_at_its_own_learning_rate(nvarc_model_dir, arc1_train):
    """The NVARC recipe: a LoRA on embed_tokens and lm_head besides the linear layers; with
    embedding_lr_scale the optimizer gives those adapters their own learning rate."""
    from arcttt.ttt import TTTConfig, param_groups, train_task
    from arcttt.ttt_data import DataConfig, training_sequences

    session = load_model(nvarc_model_dir, ModelConfig(backend="hf", dtype="fp32", lora=LoraConfig(
        rank=4, alpha=8, lora_embeddings=True)))
    named = session.trainable_parameters()
    emb = {n for n in named if ".embed_tokens." in n or ".lm_head." in n}
    assert any("embed_tokens.lora_embedding_A" in n for n in emb) and any("lm_head.lora_A" in n for n in emb)
    groups = param_groups(named, TTTConfig(embedding_lr_scale=0.1))
    assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
    assert {id(p) for p in groups[1]["params"]} == {id(named[n]) for n in emb}
    data = training_sequences(arc1_train[0], session.token_map, DataConfig(n_sequences=4, loss_on_demo_outputs=True,
                                                                           loss_on_first_output=True))
    start = {n: named[n].detach().clone() for n in emb}
    result = train_task(session, data.sequences, TTTConfig(steps=3, lr=1e-2, embedding_lr_scale=0.1))
    assert result.steps == 3
    assert any(not torch.equal(start[n], named[n].detach()) for n in emb)
    session.reset()
    assert all(torch.equal(start[n], named[n].detach()) for n in emb)
    assert np.isfinite(result.losses).all()
