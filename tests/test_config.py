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


def _hand_written_presets() -> dict:
    """Every preset's values, written out here by hand (the presets build them as variants of a base)."""
    from arcttt.budget import BudgetConfig
    from arcttt.model import LoraConfig, ModelConfig
    from arcttt.search import SearchConfig
    from arcttt.select import SelectConfig
    from arcttt.ttt import TTTConfig
    from arcttt.ttt_data import DataConfig

    day = dict(time_budget_s=43200.0, safety_margin_s=600.0, max_task_s=3600.0)
    cpu = dict(time_budget_s=300.0, safety_margin_s=15.0, min_task_s=1.0, max_task_s=120.0, hang_grace_s=30.0)
    return {
        "kaggle-l4x4": RunConfig(
            preset="kaggle-l4x4", data=DataConfig(n_sequences=96, max_len=8192),
            model=ModelConfig(backend="auto", load_in_4bit=True, dtype="auto", max_seq_len=8192,
                              gradient_checkpointing=True, lora=LoraConfig(rank=64, alpha=32)),
            ttt=TTTConfig(steps=96, lr=1e-4, batch_tokens=8192), search=SearchConfig(n_augmentations=8, threshold=0.1),
            select=SelectConfig(n_views=8), budget=BudgetConfig(**day)),
        "kaggle-t4x2": RunConfig(
            preset="kaggle-t4x2", data=DataConfig(n_sequences=64, max_len=6144),
            model=ModelConfig(backend="auto", load_in_4bit=True, dtype="fp16", max_seq_len=6144,
                              gradient_checkpointing=True, lora=LoraConfig(rank=32, alpha=32)),
            ttt=TTTConfig(steps=48, lr=1e-4, batch_tokens=6144), search=SearchConfig(n_augmentations=4, threshold=0.1),
            select=SelectConfig(n_views=4), budget=BudgetConfig(**day)),
        "cpu-smoke": RunConfig(
            preset="cpu-smoke", data=DataConfig(n_sequences=8, max_len=4096, answer_room="largest"),
            model=ModelConfig(backend="hf", load_in_4bit=False, dtype="fp32", max_seq_len=4096,
                              lora=LoraConfig(rank=8, alpha=16)),
            ttt=TTTConfig(steps=8, lr=1e-3, batch_tokens=4096), search=SearchConfig(n_augmentations=2, greedy=True),
            select=SelectConfig(n_views=2), budget=BudgetConfig(**cpu), workers=1),
        "cpu-tiny": RunConfig(
            preset="cpu-tiny", data=DataConfig(n_sequences=32, max_len=1024, colours=False, input_frame=True),
            model=ModelConfig(backend="hf", load_in_4bit=False, dtype="fp32", max_seq_len=1024,
                              lora=LoraConfig(rank=16, alpha=16)),
            ttt=TTTConfig(steps=64, lr=1e-3, batch_tokens=2048, optimizer="adamw"),
            search=SearchConfig(n_augmentations=2, threshold=0.02), select=SelectConfig(n_views=2),
            budget=BudgetConfig(**cpu), workers=1),
        "nvarc-l4x4": RunConfig(
            preset="nvarc-l4x4",
            data=DataConfig(n_sequences=128, max_len=8192, keep_background=False, loss_on_demo_outputs=True,
                            loss_on_first_output=True),
            model=ModelConfig(backend="auto", load_in_4bit=False, dtype="bf16", max_seq_len=8192,
                              gradient_checkpointing=False, format="nvarc",
                              lora=LoraConfig(rank=256, alpha=32, use_rslora=True, lora_embeddings=True)),
            ttt=TTTConfig(steps=128, lr=5e-5, warmup_frac=0.1, batch_tokens=8192, max_batch_size=1),
            search=SearchConfig(n_augmentations=16, threshold=0.2, keep_background=False),
            select=SelectConfig(method="nvarc", n_views=8, hits_weight=1.0, keep_background=False),
            budget=BudgetConfig(**day), workers=None),
        **{name: RunConfig(
            preset=name,
            data=DataConfig(n_sequences=64, max_len=n, keep_background=False, loss_on_demo_outputs=True,
                            loss_on_first_output=False),
            model=ModelConfig(backend="auto", load_in_4bit=True, dtype=dtype, max_seq_len=n,
                              gradient_checkpointing=True, format="architects",
                              lora=LoraConfig(rank=32, alpha=16, use_rslora=False)),
            ttt=TTTConfig(steps=64, lr=1e-4, batch_tokens=n, max_batch_size=1),
            search=SearchConfig(n_augmentations=16, threshold=0.1, keep_background=False),
            select=SelectConfig(method="poe", n_views=views, hits_weight=0.0, keep_background=False),
            budget=BudgetConfig(**day))
           for name, n, dtype, views in (("architects-t4x2", 6144, "fp16", 8), ("architects-l4x4", 8192, "bf16", 16))},
        "mit": RunConfig(
            preset="mit",
            data=DataConfig(n_sequences=250, max_len=8192, keep_background=True, loss_on_demo_outputs=True,
                            loss_on_first_output=False),
            model=ModelConfig(backend="auto", load_in_4bit=False, dtype="bf16", max_seq_len=8192, format="mit",
                              lora=LoraConfig(rank=128, alpha=16, use_rslora=False,
                                              target_modules=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))),
            ttt=TTTConfig(steps=250, lr=1e-4, warmup_frac=0.1, weight_decay=0.01, batch_tokens=16384,
                          max_batch_size=2),
            search=SearchConfig(n_augmentations=10, greedy=True, keep_background=True),
            select=SelectConfig(method="vote", n_views=0, keep_background=True), budget=BudgetConfig(**day)),
        "omni-arc": RunConfig(
            preset="omni-arc", data=DataConfig(n_sequences=300, max_len=8192, loss_on_demo_outputs=False),
            model=ModelConfig(backend="auto", load_in_4bit=False, dtype="bf16", max_seq_len=8192, format="omni-arc",
                              lora=LoraConfig(rank=128, alpha=256, use_rslora=False)),
            ttt=TTTConfig(steps=300, lr=8e-5, batch_tokens=8192, max_batch_size=1),
            search=SearchConfig(n_augmentations=96, greedy=True), select=SelectConfig(method="vote", n_views=0),
            budget=BudgetConfig(**day)),
    }


def test_every_preset_is_its_hand_written_values():
    expected = _hand_written_presets()
    assert set(expected) == set(PRESETS)  # a new preset gets its values written here too
    for name, cfg in expected.items():
        assert load_config(name) == cfg, name


def test_every_finetune_preset_is_its_hand_written_values():
    from arcttt.finetune import PRESETS as FT_PRESETS, FinetuneConfig, load_finetune_config
    from arcttt.model import LoraConfig

    expected = {
        "cpu-tiny": FinetuneConfig(preset="cpu-tiny", mode="full", lora=LoraConfig(rank=64, alpha=32), steps=1000,
                                   lr=2e-3, warmup_frac=0.02, min_lr_frac=0.1, optimizer="adamw", batch_rows=4,
                                   seq_len=2048, save_every=100),
        "gpu-lora": FinetuneConfig(preset="gpu-lora", mode="lora", lora=LoraConfig(rank=128, alpha=32), steps=2000,
                                   lr=1e-4, warmup_frac=0.05, min_lr_frac=0.1, optimizer="adamw", batch_rows=16,
                                   seq_len=8192, grad_checkpointing=True),
        "gpu-full": FinetuneConfig(preset="gpu-full", mode="full", lora=LoraConfig(rank=64, alpha=32), steps=2000,
                                   lr=2e-5, warmup_frac=0.05, min_lr_frac=0.1, optimizer="adamw", batch_rows=32,
                                   seq_len=8192, grad_checkpointing=True),
    }
    assert set(expected) == set(FT_PRESETS)
    for name, cfg in expected.items():
        assert load_finetune_config(name) == cfg, name
    # the shared optimiser and augmentation fields keep their flat keys and finetune's own defaults
    plain = FinetuneConfig()
    assert (plain.steps, plain.lr, plain.warmup_frac, plain.min_lr_frac, plain.weight_decay, plain.grad_clip,
            plain.optimizer) == (1000, 1e-4, 0.05, 0.1, 0.0, 1.0, "adamw")
    assert (plain.symmetries, plain.colours, plain.order, plain.keep_background) == (True, True, True, True)


def test_the_keys_users_type_today_still_set_the_shared_fields(tmp_path):
    """``--set ttt.lr=...``, ``--set lr=...`` (finetune), config files and saved configs keep their flat keys."""
    from arcttt.finetune import load_finetune_config

    cfg = load_config("cpu-smoke", ["ttt.lr=2e-3", "ttt.warmup_frac=0.2", "ttt.min_lr_frac=0.05",
                                     "ttt.weight_decay=0.1", "ttt.grad_clip=0.5", "ttt.optimizer=adamw",
                                     "data.symmetries=false", "data.colours=false", "data.order=false",
                                     "data.keep_background=false"])
    assert (cfg.ttt.lr, cfg.ttt.warmup_frac, cfg.ttt.min_lr_frac, cfg.ttt.weight_decay, cfg.ttt.grad_clip,
            cfg.ttt.optimizer) == (2e-3, 0.2, 0.05, 0.1, 0.5, "adamw")
    assert (cfg.data.symmetries, cfg.data.colours, cfg.data.order, cfg.data.keep_background) == (False,) * 4
    saved = {"preset": "cpu-smoke", "ttt": {"steps": 3, "lr": 0.002, "warmup_frac": 0.2, "optimizer": "adamw"},
             "data": {"n_sequences": 4, "colours": False, "keep_background": False}}
    old = config_from_json(saved)
    assert (old.ttt.steps, old.ttt.lr, old.ttt.warmup_frac, old.ttt.optimizer) == (3, 0.002, 0.2, "adamw")
    assert (old.data.n_sequences, old.data.colours, old.data.keep_background) == (4, False, False)
    path = tmp_path / "ft.yaml"
    path.write_text("preset: gpu-lora\nlr: 3.0e-4\nmin_lr_frac: 0.0\nsymmetries: false\n")
    ft = load_finetune_config(path, ["warmup_frac=0.1", "keep_background=false", "grad_clip=2"])
    assert (ft.lr, ft.min_lr_frac, ft.warmup_frac, ft.grad_clip, ft.symmetries, ft.keep_background) == \
        (3e-4, 0.0, 0.1, 2.0, False, False)
