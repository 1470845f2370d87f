"""The stage before test-time training: fine-tune a causal LM on many ARC tasks (``arcttt finetune``).

The recipe in three layers: :func:`finetune` (arguments, processes, data, exclusions) ->
:func:`fit` (the loop) -> :func:`train_step` (one optimizer step, on one screen), with small named
helpers beside them.

- Data (``finetune_data.py``, with the samples and the packing): bundled splits by name, Kaggle
  challenges files (their ``*_solutions.json`` neighbour is read when present), JSONL files of tasks, folders of one-task JSON files, and ``synthetic:N[:SEED]``
  (:mod:`arcttt.synthetic`). ``--exclude`` drops every task whose id, content (train pairs + test
  inputs, in any order, whatever the id) or any test-input grid appears in the excluded sources; the
  bundled evaluation splits are always excluded, so training on them cannot happen by accident.
- Samples, augmented on the fly: all pairs of a task (train pairs and test pairs whose output is
  known) under a random symmetry, colour permutation and order; the last pair is the query, the
  others demonstrations (dropped from the front to fit ``seq_len``). Loss on the answer and on every
  demonstration output after the first (``loss_on_demo_outputs``).
- Packing: samples are laid end to end in rows of at most ``seq_len`` tokens with position ids
  restarting at each sample; transformers (>= 4.54) then masks attention within each sample (no
  attention mask is passed), so a packed row computes what the samples would alone.
- The sample stream is a pure function of ``(seed, epoch, index)`` and the row stream of the
  cursor saved in each checkpoint, so a resumed run sees the same rows as an uninterrupted one.
- Processes: under ``torchrun`` every process builds the same global batch of ``batch_rows`` rows
  and trains on its share (``rows[rank::world]``) with DDP (or FSDP2 ``fully_shard``); the loss is
  normalised by the global number of target tokens, so N processes train as one process does.
- At the end ``--out`` is a ready model directory (LoRA merged, safetensors, tokenizer files copied,
  ``arcttt.json``) that ``arcttt run`` and ``dry-run --model`` take as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from arcttt import formats, modeldir
from arcttt.causal_lm import load_causal_lm, resolve_dtype
from arcttt.data import Pair, Task
from arcttt.errors import first_line
from arcttt.finetune_data import (Cursor, PackedBatch, collate_rows, exclude_tasks, fitted,
                                  load_tasks, next_rows)
from arcttt.formats import Encoded, TokenMap
from arcttt.model import LoraConfig, attach_lora
from arcttt.modeldir import model_token_map
from arcttt.ttt import OptimConfig, lr_at, make_optimizer
from arcttt.ttt_data import AugmentConfig

ALWAYS_EXCLUDED = ("arc-agi-1-eval", "arc-agi-2-eval")
CHECKPOINT = "checkpoint"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja", "tokenizer.model")


@dataclass
class FinetuneConfig(OptimConfig, AugmentConfig):
    """Hyperparameters of one fine-tuning run (``--config`` preset or file, then ``--set k=v``): the
    optimiser's (:class:`arcttt.ttt.OptimConfig`: ``lr``, ``warmup_frac``, ...) and the augmentations'
    (:class:`arcttt.ttt_data.AugmentConfig`: ``symmetries``, ``colours``, ...) as TTT has them, and its own."""

    # the optimiser's fields whose default differs here (what they mean: OptimConfig)
    steps: int = 1000
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    optimizer: Literal["adamw", "adamw8bit", "auto"] = "adamw"
    preset: str = "custom"
    mode: Literal["full", "lora"] = "full"
    """full: train every weight; lora: train an adapter (``lora``), merged into the weights at the end."""
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=64, alpha=32))
    batch_rows: int = 8
    """Packed rows per optimizer step over all processes (the global batch; a multiple of the processes)."""
    micro_rows: int = 1
    """Rows in one forward/backward of one process (the rest is gradient accumulation)."""
    seq_len: int = 8192
    """Tokens of a packed row; a sample longer than this drops demonstrations, or is skipped."""
    loss_on_demo_outputs: bool = True
    """Loss also on every demonstration output after the first, not only on the answer."""
    dtype: Literal["fp32", "bf16"] = "fp32"
    """Dtype of the trained weights (fp32 master weights are the safe choice)."""
    autocast: bool = True
    """On a GPU with bf16, compute forward/backward in bf16 autocast."""
    grad_checkpointing: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: DDP (a replica per process) or FSDP2 (weights, gradients and optimizer state sharded)."""
    seed: int = 0
    save_every: int = 200
    """Write a checkpoint every this many steps (and at the end of a run that stops early)."""
    stop_at_step: int | None = None
    """End this run after this step, leaving a checkpoint to ``--resume`` from (as a time limit would)."""
    keep_checkpoint: bool = False
    """Keep OUT/checkpoint after the last step (it holds the optimizer state: about 3x the model)."""
    eval_every: int = 0
    """Every this many steps (and before the first and after the last), score the ``--eval`` tasks
    teacher-forced: the learning curve in the log and in ``finetune.json`` (0: never)."""

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**self.lora)
        errors = self.optim_faults()
        if self.mode not in ("full", "lora"):
            errors.append(f"mode must be full or lora, got {self.mode!r}")
        if self.steps < 1 or self.batch_rows < 1 or self.micro_rows < 1 or self.save_every < 1:
            errors.append("steps, batch_rows, micro_rows and save_every must be >= 1")
        if self.eval_every < 0:
            errors.append(f"eval_every must be >= 0, got {self.eval_every}")
        if self.seq_len < 16:
            errors.append(f"seq_len must be >= 16, got {self.seq_len}")
        if self.stop_at_step is not None and not 1 <= self.stop_at_step <= self.steps:
            errors.append(f"stop_at_step must be in 1..steps, got {self.stop_at_step}")
        if errors:
            raise ValueError("FinetuneConfig: " + "; ".join(errors))


def _gpu() -> FinetuneConfig:
    # the base of the GPU presets: 2000 steps of rows as long as a TTT sequence, activations recomputed
    return dataclasses.replace(FinetuneConfig(), steps=2000, seq_len=8192, grad_checkpointing=True)


PRESETS: dict[str, Callable[[], FinetuneConfig]] = {
    # a small model from random initialisation on this kind of 2-core CPU (see weights/README.md)
    "cpu-tiny": lambda: dataclasses.replace(FinetuneConfig(), preset="cpu-tiny", mode="full", steps=1000, lr=2e-3,
                                            warmup_frac=0.02, batch_rows=4, seq_len=2048, save_every=100),
    # an adapter on a pretrained model, one or more GPUs
    "gpu-lora": lambda: dataclasses.replace(_gpu(), preset="gpu-lora", mode="lora", lora=LoraConfig(rank=128, alpha=32),
                                            lr=1e-4, batch_rows=16),
    # every weight (NVARC's way); FSDP when the model and AdamW do not fit one GPU
    "gpu-full": lambda: dataclasses.replace(_gpu(), preset="gpu-full", mode="full", lr=2e-5, batch_rows=32),
}
"""Each a function returning a fresh FinetuneConfig, a variant of the defaults or of ``_gpu``."""


def load_finetune_config(config: str | Path | None = None, overrides: list[str] | tuple = ()) -> FinetuneConfig:
    """A preset by name (default: gpu-lora with a GPU, else cpu-tiny) or a JSON/YAML file (optionally
    naming a ``preset`` to start from), then ``key=value`` overrides (``lora.rank=32``)."""
    from arcttt.config import build_config

    default = "gpu-lora" if torch.cuda.is_available() else "cpu-tiny"
    return build_config(config or default, PRESETS, overrides, file_preset="cpu-tiny", kind="finetune preset")


def packed_loss_sum(model, batch: PackedBatch, device: torch.device) -> torch.Tensor:
    """Summed cross-entropy over the target tokens of a packed batch (no attention mask: the position
    ids tell transformers where each sample starts)."""
    ids, pos, targets = (t.to(device, non_blocking=True) for t in (batch.input_ids, batch.position_ids, batch.targets))
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    picked = targets[:, 1:]
    return F.cross_entropy(logits[:, :-1][picked].float(), ids[:, 1:][picked], reduction="sum")


# --- processes, model, checkpoints ----------------------------------------------------------------

@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """The process group torchrun describes in the environment (gloo on CPU, nccl on GPUs), or a
    single process when not under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world, device)


def load_base(path: Path, cfg: FinetuneConfig, device: torch.device):
    """The model to train: weights in ``cfg.dtype`` on ``device``, with a LoRA adapter in lora mode
    (attached as TTT attaches its own: :func:`arcttt.model.attach_lora`)."""
    # straight onto this process's GPU (no whole copy in host memory per process); under FSDP each
    # process then keeps only its shard, so what must fit one GPU is the weights alone, not the
    # gradients and optimizer state (12 of the 16 bytes a weight of fp32 AdamW training)
    model = load_causal_lm(path, resolve_dtype(cfg.dtype, device),
                           device_map={"": device} if device.type == "cuda" else None).to(device)
    model.config.use_cache = False
    if cfg.grad_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.mode == "lora":
        model = attach_lora(model, cfg.lora)
    return model


def wrap(model, cfg: FinetuneConfig, dist: Dist):
    """DDP or FSDP2 around the model under more than one process; the model itself otherwise."""
    if dist.world == 1:
        return model
    if cfg.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():  # one shard group per decoder layer, then the rest
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)


def _no_grad_sync(model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if last or not torch.distributed.is_initialized():
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    model.set_requires_gradient_sync(False)  # FSDP2: switched back on before the last micro-batch
    return contextlib.nullcontext()


def _state_options(cfg: FinetuneConfig, **kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, ignore_frozen_params=cfg.mode == "lora", **kw)


RUN_FILES = ("finetune.log", CHECKPOINT, CHECKPOINT + ".tmp", CHECKPOINT + ".old")
"""What an unfinished run of finetune leaves in OUT."""


def _unfinished_run(out: Path) -> bool:
    """Whether ``out`` holds only what an unfinished finetune run leaves (:data:`RUN_FILES`)."""
    return set(os.listdir(out)) <= set(RUN_FILES)


def _complete(folder: Path) -> bool:
    """A checkpoint folder whose last file (state.json, written after the weights and optimizer
    state) is there and reads."""
    try:
        return isinstance(json.loads((folder / "state.json").read_text()), dict)
    except (OSError, ValueError, RecursionError):
        return False


def find_checkpoint(out: Path, repair: bool = False) -> Path | None:
    """OUT's checkpoint, wherever a crash in :func:`save_checkpoint` left it: ``checkpoint``, else a
    complete ``checkpoint.tmp`` (the new one, not yet renamed in), else ``checkpoint.old`` (the old
    one, renamed aside); None when there is none. ``repair``: put the one found at ``checkpoint``."""
    folder = out / CHECKPOINT
    if folder.is_dir():
        found = folder
    else:
        found = next((f for f in (folder.with_name(CHECKPOINT + ".tmp"), folder.with_name(CHECKPOINT + ".old"))
                      if f.is_dir() and _complete(f)), None)
    if found is not None and repair and found != folder:
        found.rename(folder)
        found = folder
    return found


def save_checkpoint(folder: Path, model, opt, state: dict, cfg: FinetuneConfig, dist: Dist) -> None:
    """Weights that train, optimizer state and the loop's state, written by the main process to
    ``checkpoint.tmp`` (state.json last), then swapped in: the old one renamed to
    ``checkpoint.old``, the new one renamed in, the old one removed. A crash at any point leaves a
    whole checkpoint that :func:`find_checkpoint` finds."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    options = _state_options(cfg, cpu_offload=dist.world > 1)
    weights = get_model_state_dict(model, options=options)  # collective under FSDP
    optim = get_optimizer_state_dict(model, opt, options=options)
    if dist.main:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(tmp / "model.safetensors"))
        torch.save(optim, tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "config": dataclasses.asdict(cfg)}, indent=1))
        aside = folder.with_name(folder.name + ".old")
        if folder.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
            folder.rename(aside)
        tmp.rename(folder)
        shutil.rmtree(aside, ignore_errors=True)
    if dist.world > 1:
        torch.distributed.barrier()


def load_checkpoint(folder: Path, model, opt, cfg: FinetuneConfig) -> dict:
    """Restore weights and optimizer state into every process; returns the loop's state. A
    checkpoint that cannot be read, or is not of this run, is a ValueError naming its file."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state_file = folder / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{state_file}: cannot read ({type(e).__name__})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{state_file}: not JSON ({e.msg} at line {e.lineno})") from None
    fields = {"step": int, "cursor": list, "losses": list, "tokens": int, "seconds": (int, float), "config": dict}
    bad = [k for k, t in fields.items() if not isinstance(state, dict) or not isinstance(state.get(k), t)]
    if bad:
        raise ValueError(f"{state_file}: not a finetune checkpoint's state (missing or wrong: {', '.join(bad)})")
    if not 0 <= state["step"] <= cfg.steps:
        raise ValueError(f"{state_file}: the checkpoint is at step {state['step']}, outside this run's 0..{cfg.steps} "
                         "steps")
    saved, now = dict(state["config"]), json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples as lists
    for key in ("stop_at_step", "save_every", "keep_checkpoint", "eval_every"):  # may change between runs
        saved.pop(key, None)
        now.pop(key, None)
    if saved != now:
        changed = sorted(k for k in now if saved.get(k) != now[k])
        raise ValueError(f"{folder}: the checkpoint was written under another configuration ({', '.join(changed)})")
    # lora: the checkpoint holds the adapter only (the frozen weights come from the base model)
    try:
        keys = set_model_state_dict(model, load_file(str(folder / "model.safetensors")),
                                    options=_state_options(cfg, strict=cfg.mode == "full"))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises what its reader raises
        raise ValueError(f"{folder / 'model.safetensors'}: cannot restore the weights ({type(e).__name__}: "
                         f"{first_line(e, 200)})") from None
    if keys.unexpected_keys:
        raise ValueError(f"{folder}: the checkpoint holds weights the model lacks: {keys.unexpected_keys[:3]}")
    try:  # weights_only: a pickle that needs more than tensors is refused, never run
        optim = torch.load(folder / "optimizer.pt", weights_only=True)
        set_optimizer_state_dict(model, opt, optim, options=_state_options(cfg))
    except Exception as e:  # noqa: BLE001 - UnpicklingError, a truncated zip, a state of another optimizer
        raise ValueError(f"{folder / 'optimizer.pt'}: cannot restore the optimizer state ({type(e).__name__}: "
                         f"{first_line(e, 200)})") from None
    return state


def _base_lineage(model_dir: Path) -> tuple[str | None, list[dict]]:
    """Where the base's chain of fine-tunings started (its ``arcttt.json``'s source, or for a base
    that ``arcttt finetune`` wrote, that base's own origin; ``make_tiny_model``: a random init), and
    the earlier stages of that chain (data and steps each)."""
    try:
        meta = json.loads((Path(model_dir) / modeldir.META_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return None, []
    if not isinstance(meta, dict):
        return None, []
    if meta.get("source") != "arcttt finetune":
        return meta.get("source"), []
    earlier = meta.get("stages") if isinstance(meta.get("stages"), list) else []
    return meta.get("base_source"), [*earlier, {"data": meta.get("data"), "steps": meta.get("steps")}]


def export_model(out: Path, base: Path, model, tm: TokenMap, cfg: FinetuneConfig, dist: Dist, meta: dict) -> None:
    """Write the trained model to ``out`` as a ready model directory: the base architecture with the
    trained weights (the adapter merged), in the base's dtype, its tokenizer files and arcttt.json."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from arcttt.weights import portable_config

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=dist.world > 1))
    if not dist.main:
        return
    fresh = load_causal_lm(base)  # in the base's saved dtype
    if cfg.mode == "lora":
        fresh = attach_lora(fresh, cfg.lora)
    fresh.load_state_dict(weights)
    if cfg.mode == "lora":
        fresh = fresh.merge_and_unload()
    fresh.config.use_cache = True
    fresh.save_pretrained(out)
    portable_config(out / "config.json")
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copyfile(base / name, out / name)
    modeldir.write_model_meta(out, tm, source="arcttt finetune", **meta)


# --- the learning curve -------------------------------------------------------------------------

@dataclass
class EvalPoint:
    """The held-out tasks scored teacher-forced after ``step`` optimizer steps (``tokens`` trained on)."""

    set: str
    """The ``--eval`` source."""
    step: int
    tokens: int
    loss: float
    """Mean cross-entropy per answer token (the grid, its newlines and the end marker)."""
    cells: float
    """Fraction of the answers' cells whose most likely token is the right colour."""
    answers: int
    """Answers whose every token (cells, newlines, end) is the most likely one: solved by greedy decoding."""
    n: int

    def line(self) -> str:
        return (f"eval {self.set} step {self.step}: loss {self.loss:.4f} cells {self.cells:.3f} "
                f"answers {self.answers}/{self.n} ({self.tokens:,} tokens trained)")


def eval_samples(tasks: list[Task], tm: TokenMap, seq_len: int) -> list[Encoded]:
    """Each held-out task's first test pair after all its demonstrations, unaugmented (the front
    demonstrations dropped to fit ``seq_len``); tasks that do not fit with one are left out."""
    samples = (fitted(list(t.train), Pair(t.test_inputs[0], t.test_outputs[0]), tm, seq_len) for t in tasks)
    return [enc for enc in samples if enc is not None]


@torch.no_grad()
def teacher_forced(model, samples: list[Encoded], tm: TokenMap, device: torch.device, name: str, step: int,
                   tokens: int) -> EvalPoint:
    """Score ``samples`` teacher-forced (one forward each): the answer's loss, cells and exact answers."""
    was_training = model.training
    model.eval()
    digits = torch.tensor(tm.digits, device=device)
    loss_sum = cells_right = cells = answers = n_tokens = 0
    for enc in samples:
        ids = torch.from_numpy(enc.ids).to(device)[None]
        logits = model(input_ids=ids, position_ids=torch.arange(ids.shape[1], device=device)[None],
                       use_cache=False).logits[0, enc.prompt_len - 1:-1].float()
        target = ids[0, enc.prompt_len:]
        right = logits.argmax(-1) == target
        is_cell = torch.isin(target, digits)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        n_tokens += len(target)
        cells_right += int(right[is_cell].sum())
        cells += int(is_cell.sum())
        answers += bool(right.all())
    model.train(was_training)
    return EvalPoint(name, step, tokens, loss_sum / max(n_tokens, 1), cells_right / max(cells, 1), answers, len(samples))


# --- the loop -----------------------------------------------------------------------------------

def _autocast(cfg: FinetuneConfig, device: torch.device):
    if device.type == "cuda" and cfg.autocast and cfg.dtype == "fp32" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, opt, params, rows: list[list[Encoded]], step: int, cfg: FinetuneConfig, dist: Dist,
               pad: int) -> tuple[float, int]:
    """One optimizer step on this process's share of the global batch ``rows``; returns the mean
    loss over all target tokens of the global batch and the global batch's tokens."""
    n_targets = sum(int(s.loss_mask[1:].sum()) for row in rows for s in row)  # every process knows all rows
    mine = rows[dist.rank::dist.world]
    micro = [mine[k:k + cfg.micro_rows] for k in range(0, len(mine), cfg.micro_rows)]
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    loss_sum = torch.zeros((), device=dist.device)
    for k, chunk in enumerate(micro):
        last = k == len(micro) - 1
        if last and hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(True)
        with _no_grad_sync(model, last), _autocast(cfg, dist.device):
            part = packed_loss_sum(model, collate_rows(chunk, pad), dist.device)
            # processes average gradients: scaling by world makes the sum over all of them / n_targets
            (part * dist.world / n_targets).backward()
        loss_sum += part.detach()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dist.world > 1:
        torch.distributed.all_reduce(loss_sum)  # a sync point; for the logged loss only
    return float(loss_sum) / n_targets, sum(len(s) for row in rows for s in row)


def fit(model, opt, tasks: list[Task], tm: TokenMap, cfg: FinetuneConfig, dist: Dist, out: Path,
        state: dict, log: Callable[[str], None], progress: bool, held_out: dict[str, list[Encoded]] | None = None) -> dict:
    """Steps from ``state["step"]`` to the end (or to ``stop_at_step``), checkpointing on the way and
    scoring ``held_out`` every ``eval_every`` steps."""
    from tqdm import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    cursor = Cursor(*state["cursor"])
    end = cfg.stop_at_step or cfg.steps
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not (progress and dist.main), unit="step",
               dynamic_ncols=True)
    state.setdefault("evals", [])

    def evaluate(step: int) -> None:
        if not cfg.eval_every or any(e["step"] == step for e in state["evals"]):
            return
        for name, samples in (held_out or {}).items():
            point = teacher_forced(model, samples, tm, dist.device, name, step, state["tokens"])
            state["evals"].append(dataclasses.asdict(point))
            log(point.line())

    if state["step"] == 0:
        evaluate(0)
    model.train()
    for step in range(state["step"], end):
        t0 = time.time()
        rows, cursor = next_rows(tasks, cursor, cfg.batch_rows, tm, cfg)
        loss, tokens = train_step(model, opt, params, rows, step, cfg, dist, tm.pad)
        seconds = time.time() - t0
        state.update(step=step + 1, cursor=[cursor.epoch, cursor.index], tokens=state["tokens"] + tokens,
                     seconds=state["seconds"] + seconds)
        state["losses"].append(loss)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens / max(seconds, 1e-9):.0f}", epoch=cursor.epoch)
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == end):
            evaluate(step + 1)  # before the checkpoint, so that a resumed run has the point
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            save_checkpoint(out / CHECKPOINT, model, opt, state, cfg, dist)
        if (step + 1) % max(1, cfg.save_every // 4) == 0 or step + 1 == end:
            log(f"step {step + 1}/{cfg.steps} loss {loss:.4f} lr {lr_at(step, cfg):.2e} "
                f"{tokens / max(seconds, 1e-9):.0f} tok/s epoch {cursor.epoch}")
    bar.close()
    return state


def finetune(model: str | Path, out: str | Path, *, format: str | None = None, data: list[str] = (),
             exclude: list[str] = (), eval: list[str] = (), cfg: FinetuneConfig | None = None,
             resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Fine-tune the model in ``model`` on the tasks of ``data`` (less ``exclude``, ``eval`` and the
    bundled evaluation splits) and write a ready model directory to ``out``; returns a summary.
    ``eval``'s tasks (held out from training) are scored every ``cfg.eval_every`` steps.

    ``out`` follows :func:`arcttt.weights.check_output_dir` (new or empty; with ``resume`` this
    command's unfinished run; with ``overwrite`` a model folder arcttt wrote). The checkpoint and
    finetune.log live in ``out`` while training; the model is written beside it and renamed in."""
    from arcttt.weights import check_output_dir

    cfg = cfg or load_finetune_config()
    base, out = Path(model), Path(out)
    dist = setup_distributed()
    if cfg.batch_rows % dist.world:
        raise ValueError(f"batch_rows ({cfg.batch_rows}) must be a multiple of the processes ({dist.world})")
    if not resume and find_checkpoint(out) is not None:
        raise ValueError(f"{out} holds a checkpoint: pass --resume to continue it, or choose another --out")
    check_output_dir(out, base, overwrite=overwrite, unfinished=_unfinished_run)
    old_model = set(os.listdir(out)) - set(RUN_FILES) if out.is_dir() else set()  # an overwritten model's files
    try:  # read as `run` reads it (arcttt.json checked against tokenizer.json); before anything is written
        tm, _ = model_token_map(base, format)
    except formats.FormatError as e:
        raise formats.FormatError(f"{base}: {e}") from None
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    log_file = out / "finetune.log"

    def log(message: str) -> None:
        if dist.main:
            line = f"{time.strftime('%H:%M:%S')} {message}"
            print(line, flush=True)
            with open(log_file, "a") as f:
                f.write(line + "\n")

    tasks = [t for spec in (data or ["arc-agi-1-train"]) for t in load_tasks(spec)]
    held_out_sets = {spec: load_tasks(spec) for spec in eval}
    held_out_tasks = [t for tasks_ in held_out_sets.values() for t in tasks_]
    excluded = [t for spec in dict.fromkeys([*ALWAYS_EXCLUDED, *exclude]) for t in load_tasks(spec)] + held_out_tasks
    tasks, dropped = exclude_tasks(tasks, excluded)
    log(f"data {', '.join(data or ['arc-agi-1-train'])}: {len(tasks)} tasks kept; dropped {sum(dropped.values())} "
        f"found in --exclude ({', '.join(dict.fromkeys([*ALWAYS_EXCLUDED, *exclude]))}): {dropped['id']} by id, "
        f"{dropped['content']} by content, {dropped['test_grid']} by a test input"
        + (f"; {len(held_out_tasks)} held-out --eval tasks ({', '.join(eval)}) excluded too" if eval else ""))
    if not tasks:
        raise ValueError("no training tasks left after the exclusions")
    torch.manual_seed(cfg.seed)
    net = load_base(base, cfg, dist.device)
    wrapped = wrap(net, cfg, dist)
    opt = make_optimizer([p for p in wrapped.parameters() if p.requires_grad], cfg, dist.device)
    state = {"step": 0, "cursor": [0, 0], "losses": [], "tokens": 0, "seconds": 0.0}
    checkpoint = find_checkpoint(out, repair=dist.main) if resume else None
    if dist.world > 1:
        torch.distributed.barrier()  # the main process has put a found checkpoint in its place
    if checkpoint is not None:
        state = load_checkpoint(out / CHECKPOINT, wrapped, opt, cfg)
        state.pop("config", None)
        log(f"resumed from {out / CHECKPOINT} at step {state['step']}")
    elif resume:
        log(f"--resume: no checkpoint in {out}; starting at step 0")
    n_trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    log(f"training {cfg.mode} ({n_trainable:,} weights) on {dist.world} process(es), {dist.device}; "
        f"{cfg.steps} steps of {cfg.batch_rows} rows x {cfg.seq_len} tokens")
    held_out = {name: eval_samples(ts, tm, cfg.seq_len) for name, ts in held_out_sets.items()} if cfg.eval_every else {}
    state = fit(wrapped, opt, tasks, tm, cfg, dist, out, state, log, progress, held_out)
    summary = {"steps": state["step"], "losses": state["losses"], "evals": state.get("evals", []),
               "tokens": state["tokens"],
               "tokens_per_s": state["tokens"] / max(state["seconds"], 1e-9), "tasks": len(tasks),
               "dropped": dropped, "finished": state["step"] == cfg.steps}
    if summary["finished"]:
        from arcttt.weights import writing_dir

        origin, stages = _base_lineage(base)

        def carried(name: str) -> bool:  # what this run wrote into OUT goes over; the checkpoint if kept
            return name not in old_model and (cfg.keep_checkpoint or not name.startswith(CHECKPOINT))

        # written beside OUT and renamed in: a failure here leaves OUT as it was (checkpoint and all)
        with writing_dir(out, carried) if dist.main else contextlib.nullcontext(out) as folder:
            export_model(folder, base, wrapped, tm, cfg, dist, {
                "base": str(base), "base_source": origin, "stages": stages, "steps": cfg.steps,
                "data": list(data or ["arc-agi-1-train"]), "excluded": list(dict.fromkeys([*ALWAYS_EXCLUDED, *exclude])),
                "held_out": list(eval)})
            if dist.main:
                (folder / "finetune.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), **summary}, indent=1))
        log(f"wrote {out}: final loss {state['losses'][-1]:.4f}, {summary['tokens_per_s']:.0f} tok/s")
    if dist.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
