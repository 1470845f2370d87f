"""The run's configuration: one typed dataclass per stage, composed into :class:`RunConfig`, with
presets as values (each a :func:`variant` of a base: only what differs, beside its source) and
overrides by dotted name (``ttt.lr=5e-5``).

Every stage module owns its config (``ttt_data.DataConfig``, ``model.ModelConfig``,
``ttt.TTTConfig``, ``search.SearchConfig``, ``select.SelectConfig``, ``budget.BudgetConfig``); this
module only composes them. The resolved config is saved as JSON in every run directory and can be
given back with ``--config FILE``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcttt.budget import BudgetConfig
from arcttt.model import ModelConfig
from arcttt.search import SearchConfig
from arcttt.select import SelectConfig
from arcttt.ttt import TTTConfig
from arcttt.ttt_data import DataConfig


class ConfigError(ValueError):
    """Bad preset name, config file or override; the message lists every fault."""


@dataclass
class RunConfig:
    """Everything a run needs besides its inputs."""

    preset: str = "custom"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    workers: int | None = None
    """Worker processes; None: one per visible GPU, one on CPU."""

    def __post_init__(self):
        errors = []
        if self.workers is not None and self.workers < 1:
            errors.append(f"workers must be >= 1 (or None: one per GPU), got {self.workers}")
        if errors:
            raise ValueError("; ".join(errors))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


T = typing.TypeVar("T")


def variant(base: T, **changes: Any) -> T:
    """A copy of dataclass ``base`` with ``changes`` (``dataclasses.replace``); a mapping given for a
    nested config changes only the fields it names (``model=dict(dtype="fp16")``)."""
    def changed(name: str, value: Any) -> Any:
        current = getattr(base, name)
        return variant(current, **value) if isinstance(value, dict) and dataclasses.is_dataclass(current) else value

    return dataclasses.replace(base, **{name: changed(name, value) for name, value in changes.items()})


def _gpu_12h() -> RunConfig:
    # The base of the GPU presets: a 12-hour Kaggle run, 10 minutes kept back at the end, at most an
    # hour on one task; each stage otherwise at its defaults (backend and dtype auto, no 4-bit).
    return RunConfig(budget=BudgetConfig(time_budget_s=12 * 3600.0, safety_margin_s=600.0, max_task_s=3600.0))


def _cpu() -> RunConfig:
    # The base of the CPU presets: transformers + peft in fp32 (no 4-bit), one worker, 5 minutes.
    return RunConfig(
        model=ModelConfig(backend="hf", load_in_4bit=False, dtype="fp32"),
        budget=BudgetConfig(time_budget_s=300.0, safety_margin_s=15.0, min_task_s=1.0, max_task_s=120.0,
                            hang_grace_s=30.0),
        workers=1,
    )


def _kaggle_l4x4() -> RunConfig:
    # 4 x L4 (24 GB, bf16), 12 h, ~240 hidden tasks: ~12 GPU-minutes a task on average.
    return variant(
        _gpu_12h(), preset="kaggle-l4x4",
        data=dict(n_sequences=96, max_len=8192),
        model=dict(load_in_4bit=True, max_seq_len=8192, gradient_checkpointing=True, lora=dict(rank=64, alpha=32)),
        ttt=dict(steps=96, lr=1e-4, batch_tokens=8192),
        search=dict(n_augmentations=8, threshold=0.1),
        select=dict(n_views=8),
    )


def _kaggle_t4x2() -> RunConfig:
    # 2 x T4 (16 GB, no bf16 -> fp16), 12 h: half the GPUs, each slower: less TTT, fewer views.
    return variant(
        _kaggle_l4x4(), preset="kaggle-t4x2",
        data=dict(n_sequences=64, max_len=6144),
        model=dict(dtype="fp16", max_seq_len=6144, lora=dict(rank=32)),
        ttt=dict(steps=48, batch_tokens=6144),
        search=dict(n_augmentations=4),
        select=dict(n_views=4),
    )


def _cpu_smoke() -> RunConfig:
    # The tiny random model on a CPU: checks the mechanics end to end in a few minutes. Such a model
    # puts no answer above any useful search threshold, so it decodes greedily: that still takes
    # every candidate through parsing, the inverse augmentation, scoring and selection. Its answers
    # get room for a 30 x 30 grid: a random model ends no shorter one, and would leave nothing to score.
    return variant(
        _cpu(), preset="cpu-smoke",
        data=dict(n_sequences=8, max_len=4096, answer_room="largest"),
        model=dict(max_seq_len=4096, lora=dict(rank=8, alpha=16)),
        ttt=dict(steps=8, lr=1e-3, batch_tokens=4096),
        search=dict(n_augmentations=2, greedy=True),
        select=dict(n_views=2),
    )


def _cpu_tiny() -> RunConfig:
    # Our own small trained model (weights/arcttt-tiny-syn) on a CPU: real TTT, search and scoring.
    return variant(
        _cpu(), preset="cpu-tiny",
        # Measured on 8 held-out colour-map tasks (weights/README.md): 64 TTT steps solve 6/8, none
        # without TTT; with colour permutations in the TTT data, 1/8 (the model learns the task's own
        # colour map into its adapter; permuted, the map changes from sequence to sequence)
        # input_frame: the model has not learnt flips or rotations, but it copies; the symmetry of
        # the inputs under which it finds the demonstrations likeliest turns a flip into a copy
        # (12 held-out flips, rotations and colour maps, 64 TTT steps: 11/12 solved in their chosen
        # frame, 3/12 as they are; bench/RESULTS.md)
        data=dict(n_sequences=32, max_len=1024, colours=False, input_frame=True),
        model=dict(max_seq_len=1024, lora=dict(rank=16, alpha=16)),
        ttt=dict(steps=64, lr=1e-3, batch_tokens=2048, optimizer="adamw"),
        # at a search threshold of 0.1 it keeps no answer (a 1 M-weight model spreads its probability)
        search=dict(n_augmentations=2, threshold=0.02),
        select=dict(n_views=2),
    )


def _nvarc_l4x4() -> RunConfig:
    # NVARC's recipe for their Qwen3-4B checkpoint (1ytic/NVARC; shared/FIELD-NOTES.md), on 4 x L4.
    return variant(
        _gpu_12h(), preset="nvarc-l4x4",
        # 128 samples: 8 symmetries x 16 permutations of all 10 colours; loss on every output
        data=dict(n_sequences=128, max_len=8192, keep_background=False, loss_on_demo_outputs=True,
                  loss_on_first_output=True),
        # bf16, no 4-bit, no gradient checkpointing, max length 8192; the checkpoint's own format
        model=dict(load_in_4bit=False, dtype="bf16", max_seq_len=8192, gradient_checkpointing=False, format="nvarc",
                   # r=256, alpha 32, rsLoRA, all 7 linear layers plus embed_tokens and lm_head
                   lora=dict(rank=256, alpha=32, use_rslora=True, lora_embeddings=True)),
        # lr 5e-5, cosine, warmup 0.1, batch 1, one epoch over the 128 samples
        ttt=dict(steps=128, lr=5e-5, warmup_frac=0.1, batch_tokens=8192, max_batch_size=1),
        # 16 views (8 symmetries x 2 colourings of all 10 colours), DFS at min probability 0.2
        search=dict(n_augmentations=16, threshold=0.2, keep_background=False),
        # every candidate rescored under 8 augmentations; choice = hits minus mean NLL over the views
        select=dict(method="nvarc", n_views=8, hits_weight=1.0, keep_background=False),
        workers=None,  # one per GPU: 4 on 4 x L4
    )


def _architects_l4x4() -> RunConfig:
    # The ARChitects' per-task recipe for their pre-cut, pre-quantized checkpoints (da-fr/arc-prize-2024,
    # da-fr/Product-of-Experts-ARC-Paper; shared/FIELD-NOTES.md).
    return variant(
        _gpu_12h(), preset="architects-l4x4",
        # 64 samples; all 10 colours permuted; the first output masked from the loss
        data=dict(n_sequences=64, max_len=8192, keep_background=False, loss_on_demo_outputs=True,
                  loss_on_first_output=False),
        # saved in bnb 4-bit: loaded as they are (no second quantization)
        model=dict(load_in_4bit=True, dtype="bf16", max_seq_len=8192, gradient_checkpointing=True, format="architects",
                   # 2025 per-task: r=32, alpha 16 (no rsLoRA scaling stated: plain alpha/r)
                   lora=dict(rank=32, alpha=16, use_rslora=False)),
        # batch 1, one pass over the 64 samples; lr is not in the facts: our default 1e-4
        ttt=dict(steps=64, lr=1e-4, batch_tokens=8192, max_batch_size=1),
        # DFS at a min probability of 0.09-0.17 under 16 views: 0.1
        search=dict(n_augmentations=16, threshold=0.1, keep_background=False),
        # product of experts: the sum of NLL over the views, no hits bonus
        select=dict(method="poe", n_views=16, hits_weight=0.0, keep_background=False),
    )


def _architects_t4x2() -> RunConfig:
    # The ARChitects' recipe on 2 x T4 (16 GB each): fp16 (no bf16), shorter sequences, 8 scoring views.
    return variant(
        _architects_l4x4(), preset="architects-t4x2",
        data=dict(max_len=6144),
        model=dict(dtype="fp16", max_seq_len=6144),
        ttt=dict(batch_tokens=6144),
        select=dict(n_views=8),
    )


def _mit() -> RunConfig:
    # MIT's test-time training (ekinakyurek/marc; issue #12, shared/FIELD-NOTES.md) for their
    # marc-8B-finetuned-llama3 checkpoint in its own format (a Llama-3 chat, numpy-printed grids).
    return variant(
        _gpu_12h(), preset="mit",
        # at most 250 leave-one-out tasks under augmentations; loss on the outputs after the first;
        # colour permutations keep 0 (MIT keeps the background). Their leave-two-out tasks are not made.
        data=dict(n_sequences=250, max_len=8192, keep_background=True, loss_on_demo_outputs=True,
                  loss_on_first_output=False),
        # bf16 LoRA on Llama 3 8B; r=128, alpha 16, on q/v projections and the MLP (not the output
        # projection), plain alpha/r scaling
        model=dict(load_in_4bit=False, dtype="bf16", max_seq_len=8192, format="mit",
                   lora=dict(rank=128, alpha=16, use_rslora=False,
                             target_modules=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))),
        # batch 2, 2 epochs over the 250 tasks = 250 steps; lr 1e-4 (their script's default), cosine with
        # 10 % warmup, weight decay 0.01
        ttt=dict(steps=250, lr=1e-4, warmup_frac=0.1, weight_decay=0.01, batch_tokens=16384, max_batch_size=2),
        # greedy decoding under 2 permutations x 5 geometric views = 10 views (their views also drop
        # demonstrations, leave-one-out; ours show them all)
        search=dict(n_augmentations=10, greedy=True, keep_background=True),
        # hierarchical voting over the views' answers; no likelihood rescoring (n_views=0: ties broken
        # by the search's own logprob)
        select=dict(method="vote", n_views=0, keep_background=True),
    )


def _omni_arc() -> RunConfig:
    # Omni-ARC (ironbar/arc24; issue #12, shared/FIELD-NOTES.md): Qwen2.5-0.5B-Instruct + their LoRA
    # r=128, in its own format (Qwen chat, markdown prompt, ```grid shape: HxW blocks). Their TTT
    # continues the published adapter: give it as --set model.adapter=DIR (its own rank, alpha and
    # targets then win over the LoRA below, and every task's reset restores it); without it a fresh LoRA.
    return variant(
        _gpu_12h(), preset="omni-arc",
        # n-1 leave-one-out tasks under augmentations, loss on the answer turn only (the completion
        # only collator); colour handling is not in the facts: our default (0 kept)
        data=dict(n_sequences=300, max_len=8192, loss_on_demo_outputs=False),
        # LoRA r=128 as published; alpha is not in the facts: 2 x r
        model=dict(load_in_4bit=False, dtype="bf16", max_seq_len=8192, format="omni-arc",
                   lora=dict(rank=128, alpha=256, use_rslora=False)),
        # batch 1, about 300 steps, lr 8e-5
        ttt=dict(steps=300, lr=8e-5, batch_tokens=8192, max_batch_size=1),
        # 96 augmented greedy predictions
        search=dict(n_augmentations=96, greedy=True),
        # voting over the predictions, no likelihood rescoring
        select=dict(method="vote", n_views=0),
    )


PRESETS = {"kaggle-l4x4": _kaggle_l4x4, "kaggle-t4x2": _kaggle_t4x2, "cpu-smoke": _cpu_smoke, "cpu-tiny": _cpu_tiny,
           "nvarc-l4x4": _nvarc_l4x4, "architects-t4x2": _architects_t4x2, "architects-l4x4": _architects_l4x4,
           "mit": _mit, "omni-arc": _omni_arc}
"""Each a function returning a fresh RunConfig: a variant of a base (``_gpu_12h``, ``_cpu``) or of
another preset (the T4 ones of their L4 ones)."""


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or give a config file")
    return PRESETS[name]()


def load_config(config: str | Path = "auto", overrides: typing.Iterable[str] = ()) -> RunConfig:
    """A preset by name (``auto``: the one for this machine's GPUs, see ``hardware.choose_preset``), or
    a JSON/YAML file (optionally naming a ``preset`` to start from), then ``key=value`` overrides
    with dotted keys (``ttt.lr=5e-5``, ``budget.order=given``)."""
    if str(config) == "auto":
        from arcttt.hardware import choose_preset

        config = choose_preset()
    return build_config(config, PRESETS, overrides, file_preset="cpu-smoke", also=("auto",))


def build_config(config: str | Path, presets: typing.Mapping[str, typing.Callable[[], T]],
                 overrides: typing.Iterable[str] = (), *, file_preset: str, kind: str = "preset",
                 also: tuple[str, ...] = ()) -> T:
    """A config dataclass from a preset or a file, then overrides; every fault a :class:`ConfigError`.

    ``config`` is a name in ``presets`` (a function returning a fresh dataclass) or a JSON/YAML
    file: a mapping whose ``preset`` names the preset to start from (default ``file_preset``) and
    whose other keys set fields (nested mappings for nested dataclasses). Then each ``key=value``
    of ``overrides`` (dotted keys, values read as Python literals, else as a string) is applied.
    ``kind`` and ``also`` (names the caller takes besides ``presets``) only word the errors.
    """
    name = str(config)
    if name in presets:
        cfg = presets[name]()
    else:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config {name!r} is neither a {kind} ({', '.join([*presets, *also])}) nor a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path}: cannot read ({getattr(e, 'strerror', None) or 'not UTF-8 text'})") from None
        try:
            obj = json.loads(text) if path.suffix == ".json" else _yaml(text)
        except ValueError as e:
            raise ConfigError(f"config file {path}: cannot parse ({e})") from None
        if not isinstance(obj, dict):
            raise ConfigError(f"config file {path}: not a mapping")
        start = obj.pop("preset", file_preset)
        if start not in presets:
            raise ConfigError(f"config file {path}: unknown {kind} {start!r}; choose one of {', '.join(presets)}")
        cfg = _merge(presets[start](), obj, "")
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: T, overrides: typing.Iterable[str]) -> T:
    """A copy of dataclass ``cfg`` with ``key=value`` overrides (dotted keys) applied."""
    return _merge(cfg, _nest([_split_override(o) for o in overrides]), "")


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


def _split_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare word is a string
    return key.strip(), value


def _nest(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is set both as a value and as a group")
        node[leaf] = value
    return out


def _merge(obj: Any, updates: dict, prefix: str) -> Any:
    """A copy of dataclass ``obj`` with ``updates`` applied; every bad key or value in one error."""
    errors: list[str] = []
    result = _merge_into(obj, updates, prefix, errors)
    if errors:
        raise ConfigError("bad configuration: " + "; ".join(errors))
    return result


def _merge_into(obj: Any, updates: dict, prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        where = f"{prefix}{key}"
        if key not in names:
            errors.append(f"unknown field {where} (known: {', '.join(sorted(names))})")
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                errors.append(f"{where} is a group; set its fields, e.g. {where}.<field>=...")
                continue
            changes[key] = _merge_into(current, value, where + ".", errors)
            continue
        try:
            changes[key] = _coerce(value, hints[key], where)
        except ConfigError as e:
            errors.append(str(e))
    try:
        return dataclasses.replace(obj, **changes)  # re-runs __post_init__ checks
    except (ValueError, TypeError) as e:
        errors.append(f"{prefix or 'config'}: {e}")
        return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {value!r} is not a list")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where) for v in value] if inner is not Any else list(value)
        return origin(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {value!r} is not a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: {value!r} is not true/false")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: {value!r} is not a {getattr(tp, '__name__', tp)}")


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_json(), indent=2, sort_keys=True))


def config_from_json(obj: dict) -> RunConfig:
    """Rebuild a RunConfig from ``RunConfig.to_json()`` (as the worker processes receive it)."""
    obj = dict(obj)
    name = obj.get("preset", "custom")
    base = preset(name) if name in PRESETS else RunConfig()
    return _merge(base, obj, "")
