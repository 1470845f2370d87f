"""Run configuration: presets, overrides, config files, round trip through JSON."""

import json

import pytest

from arcttt.config import (PRESETS, ConfigError, RunConfig, apply_overrides, config_from_json, load_config,
                           save_config)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_round_trip(name, tmp_path):
    cfg = load_config(name)
    assert cfg.preset == name
    assert config_from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    save_config(cfg, tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


def test_overrides_are_typed():
    cfg = load_config("cpu-smoke", ["ttt.lr=5e-5", "ttt.steps=3", "budget.order=given",
                                     "model.lora.rank=4", "workers=2"])
    assert cfg.ttt.lr == 5e-5 and cfg.ttt.steps == 3 and cfg.budget.order == "given"
    assert cfg.model.lora.rank == 4 and cfg.workers == 2
    assert isinstance(load_config("cpu-smoke", ["ttt.lr=1"]).ttt.lr, float)


def test_every_bad_override_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        load_config("cpu-smoke", ["ttt.nope=1", "ttt.steps=many", "budget.order=random", "select=3"])
    msg = str(e.value)
    for part in ("ttt.nope", "ttt.steps", "budget.order", "select is a group"):
        assert part in msg


def test_post_init_checks_apply_to_overrides():
    with pytest.raises(ConfigError, match="ttt_frac"):
        load_config("cpu-smoke", ["budget.ttt_frac=0.9", "budget.search_frac=0.5"])


def test_config_file_starts_from_its_preset(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("preset: kaggle-t4x2\nttt:\n  steps: 7\n")
    cfg = load_config(path, ["search.threshold=0.2"])
    assert cfg.preset == "kaggle-t4x2" and cfg.ttt.steps == 7 and cfg.search.threshold == 0.2
    assert cfg.model.dtype == "fp16"  # T4 has no bf16


@pytest.mark.parametrize("config", ["no-such-preset", "missing.json"])
def test_unknown_preset_or_file(config):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(config)


def test_build_config_is_shared_by_run_and_finetune(tmp_path):
    """One loader for both config families: a file starts from its preset (or the given default),
    overrides apply after it, faults name the family and the file."""
    from arcttt.finetune import PRESETS as FT_PRESETS, load_finetune_config

    path = tmp_path / "ft.json"
    path.write_text(json.dumps({"preset": "gpu-full", "steps": 9}))
    cfg = load_finetune_config(path, ["lr=0.5", "lora.rank=3"])
    assert (cfg.preset, cfg.mode, cfg.steps, cfg.lr, cfg.lora.rank) == ("gpu-full", "full", 9, 0.5, 3)
    path.write_text(json.dumps({"steps": 9}))
    assert load_finetune_config(path).preset == "cpu-tiny"  # the finetune family's file default
    path.write_text(json.dumps({"preset": "kaggle-l4x4"}))
    with pytest.raises(ConfigError, match="ft.json: unknown finetune preset 'kaggle-l4x4'; choose one of cpu-tiny"):
        load_finetune_config(path)
    with pytest.raises(ConfigError, match=f"neither a finetune preset \\({', '.join(FT_PRESETS)}\\) nor a file"):
        load_finetune_config("cpu-smoke")
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="ft.json: not a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown field ttt.nope"):
        apply_overrides(load_config("cpu-smoke"), ["ttt.nope=1"])
    assert apply_overrides(load_config("cpu-smoke"), ["ttt.steps=2"]) == load_config("cpu-smoke", ["ttt.steps=2"])


def test_not_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("cpu-smoke", ["ttt.lr"])


def test_default_is_a_run_config():
    assert isinstance(RunConfig(), RunConfig)


@pytest.mark.parametrize("bad", ["workers=0", "workers=-1"])
def test_bad_workers(bad):
    with pytest.raises(ConfigError, match="workers"):
        load_config("cpu-smoke", [bad])


def test_the_config_carries_no_test_hook():
    """Fault injection is the tests' hook (faults.py, through the environment), not a setting."""
    assert "inject_faults" not in RunConfig().to_json()
    with pytest.raises(ConfigError, match="unknown field inject_faults"):
        load_config("cpu-smoke", ["inject_faults={'a': 'crash'}"])


def test_auto_is_this_machines_preset():
    from arcttt.kaggle import choose_preset

    assert load_config("auto").preset == choose_preset()


def test_published_recipes_are_the_facts():
    """The presets of the published checkpoints, value by value from their teams' code
    (shared/FIELD-NOTES.md), written here by hand."""
    nv = load_config("nvarc-l4x4")
    assert (nv.model.format, nv.model.dtype, nv.model.load_in_4bit, nv.model.gradient_checkpointing,
            nv.model.max_seq_len) == ("nvarc", "bf16", False, False, 8192)
    lora = nv.model.lora
    assert (lora.rank, lora.alpha, lora.use_rslora, lora.lora_embeddings) == (256, 32, True, True)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (nv.ttt.lr, nv.ttt.warmup_frac, nv.ttt.max_batch_size, nv.ttt.steps, nv.data.n_sequences) == \
        (5e-5, 0.1, 1, 128, 128)
    assert (nv.data.keep_background, nv.data.loss_on_demo_outputs, nv.data.loss_on_first_output) == (False, True, True)
    assert (nv.search.n_augmentations, nv.search.threshold, nv.select.n_views, nv.select.method) == \
        (16, 0.2, 8, "nvarc")
    for name, dtype in (("architects-t4x2", "fp16"), ("architects-l4x4", "bf16")):
        ar = load_config(name)
        assert (ar.model.format, ar.model.load_in_4bit, ar.model.dtype) == ("architects", True, dtype)
        assert (ar.model.lora.rank, ar.model.lora.alpha, ar.ttt.max_batch_size, ar.data.n_sequences) == (32, 16, 1, 64)
        assert (ar.data.loss_on_demo_outputs, ar.data.loss_on_first_output) == (True, False)  # first output masked
        assert (ar.select.method, ar.select.hits_weight, ar.search.n_augmentations) == ("poe", 0.0, 16)
        assert 0.09 <= ar.search.threshold <= 0.17
