"""Per-task test-time training: a few optimizer steps of the session's LoRA on one task's sequences.

:func:`train_task` is the whole recipe: pack the sequences into padded batches under a token budget,
then run the loop in :func:`_fit` (lr -> forward -> loss -> backward -> clip -> step -> zero_grad ->
log) until the planned steps are done or the deadline comes. On CUDA out-of-memory it frees memory
and retries with smaller batches, then with only the shorter sequences, and finally gives the task
up (``skipped="oom: ..."``) instead of crashing the run. The caller resets the adapter
(``session.reset()``) before each task; the optimizer is created here, per task.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from arcttt.backends import backend_of
from arcttt.errors import first_line
from arcttt.formats import Encoded
from arcttt.model import ModelSession
from arcttt.records import TTTResult  # noqa: F401 - the record type train_task returns


@dataclass
class OptimConfig:
    """The optimiser and its learning-rate schedule, shared by TTT (:class:`TTTConfig`) and
    ``arcttt finetune`` (``FinetuneConfig``); inherited, so that its keys stay flat (``ttt.lr``, ``lr``)."""

    steps: int = 64
    """Planned optimizer steps."""
    lr: float = 1e-4
    """Peak learning rate."""
    warmup_frac: float = 0.1
    """Fraction of the steps spent warming up linearly to ``lr``."""
    min_lr_frac: float = 0.0
    """The cosine decays to ``lr * min_lr_frac`` at the last step."""
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 disables)."""
    optimizer: Literal["adamw", "adamw8bit", "auto"] = "auto"
    """auto: 8-bit AdamW (bitsandbytes) on a GPU when it is installed, else torch AdamW."""

    def optim_faults(self) -> list[str]:
        """What is wrong with the optimiser fields (a subclass's ``__post_init__`` reports them with its own)."""
        faults = []
        if self.steps < 0:
            faults.append(f"steps must be >= 0, got {self.steps}")
        if not self.lr > 0:
            faults.append(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            faults.append(f"warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if not 0 <= self.min_lr_frac <= 1:
            faults.append(f"min_lr_frac must be in [0, 1], got {self.min_lr_frac}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            faults.append("weight_decay and grad_clip must be >= 0")
        if self.optimizer not in ("adamw", "adamw8bit", "auto"):
            faults.append(f"optimizer must be adamw, adamw8bit or auto, got {self.optimizer!r}")
        return faults

    def __post_init__(self):
        if faults := self.optim_faults():
            raise ValueError(f"{type(self).__name__}: " + "; ".join(faults))


@dataclass
class TTTConfig(OptimConfig):
    """Hyperparameters of one task's training (``steps``: the batches are cycled if there are fewer)."""

    batch_tokens: int = 8192
    """Token budget of one padded batch (batch size x longest sequence in it)."""
    max_batch_size: int = 16
    embedding_lr_scale: float = 1.0
    """Learning rate of ``embed_tokens``/``lm_head`` (their LoRA or the modules in full) relative to
    ``lr`` (the ARChitects' 2024 run: 0.1)."""
    grad_checkpointing: bool = False
    """Recompute activations in backward (hf backend; unsloth's is set at load time)."""
    shuffle: bool = True
    """Shuffle the sequences before packing (and again at every pass over them)."""
    seed: int = 0
    log_every: int = 8
    """Call ``log`` every this many steps (and at the last)."""

    def __post_init__(self):
        errors = self.optim_faults()
        if not self.embedding_lr_scale > 0:
            errors.append(f"embedding_lr_scale must be > 0, got {self.embedding_lr_scale}")
        if self.batch_tokens < 16 or self.max_batch_size < 1:
            errors.append(f"batch_tokens must be >= 16 and max_batch_size >= 1, got {self.batch_tokens}, "
                          f"{self.max_batch_size}")
        if self.log_every < 1:
            errors.append(f"log_every must be >= 1, got {self.log_every}")
        if errors:
            raise ValueError("TTTConfig: " + "; ".join(errors))


@dataclass
class Batch:
    input_ids: torch.Tensor       # int64 [b, n], right-padded
    attention_mask: torch.Tensor  # int64 [b, n]
    targets: torch.Tensor         # bool [b, n]: position t is predicted from t-1
    tokens: int                   # non-padding tokens


def lr_at(step: int, cfg: OptimConfig) -> float:
    """Linear warmup to ``cfg.lr``, then cosine down to ``cfg.lr * cfg.min_lr_frac``, reached one step
    after the last (so that no planned step runs at the floor, which may be 0)."""
    warmup = math.ceil(cfg.warmup_frac * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.steps - warmup))
    min_lr = cfg.lr * cfg.min_lr_frac
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def pack_batches(sequences: list[Encoded], batch_tokens: int, max_batch_size: int, pad: int) -> list[Batch]:
    """Group consecutive sequences into right-padded batches whose padded size (rows x longest row)
    stays within ``batch_tokens``; a sequence longer than the budget gets a batch of its own."""
    groups: list[list[Encoded]] = []
    for seq in sequences:
        group = groups[-1] if groups else None
        if group and len(group) < max_batch_size and \
                (len(group) + 1) * max(len(seq), max(map(len, group))) <= batch_tokens:
            group.append(seq)
        else:
            groups.append([seq])
    return [_collate(g, pad) for g in groups]


def _collate(group: list[Encoded], pad: int) -> Batch:
    n = max(len(s) for s in group)
    ids = np.full((len(group), n), pad, dtype=np.int64)
    mask = np.zeros((len(group), n), dtype=np.int64)
    targets = np.zeros((len(group), n), dtype=bool)
    for row, s in enumerate(group):
        ids[row, :len(s)] = s.ids
        mask[row, :len(s)] = 1
        targets[row, :len(s)] = s.loss_mask
    targets[:, 0] = False  # the first token is never predicted
    return Batch(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(targets), int(mask.sum()))


def batch_loss(model, batch: Batch, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of a batch (summed, then divided by their number)."""
    ids, mask, targets = (t.to(device, non_blocking=True)
                          for t in (batch.input_ids, batch.attention_mask, batch.targets))
    # logits are only needed from the position before the first target on (saves the big
    # [b, n, vocab] tensor over the prompt when the vocabulary is large)
    first = int(targets.any(0).nonzero()[0]) - 1
    keep = ids.shape[1] - first
    # right-padded rows: positions 0.. from each row's start, explicit on every forward
    pos = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=keep).logits
    logits = logits[:, -keep:-1] if keep > 1 else logits[:, :0]
    labels = ids[:, first + 1:]
    picked = targets[:, first + 1:]
    return F.cross_entropy(logits[picked].float(), labels[picked], reduction="sum") / picked.sum()


def mean_loss(session: ModelSession, sequences: list[Encoded], batch_tokens: int = 8192) -> float:
    """Mean cross-entropy over all target tokens of ``sequences`` (no training; eval mode)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in pack_batches(sequences, batch_tokens, 64, session.token_map.pad):
            n = int(batch.targets.sum())
            if n:
                with _autocast(session):
                    total += float(batch_loss(session.model, batch, session.device)) * n
                count += n
    if not count:
        raise ValueError("no target tokens in the sequences")
    return total / count


EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def param_groups(named: dict[str, torch.nn.Parameter], cfg: TTTConfig) -> list[dict]:
    """The trainable parameters in optimizer groups, each with its ``lr_scale``: the embeddings and
    output head (their adapters or the modules themselves) at ``embedding_lr_scale``, the rest at 1."""
    emb = [p for n, p in named.items() if any(f".{m}." in f".{n}." for m in EMBEDDING_MODULES)]
    rest = [p for n, p in named.items() if not any(f".{m}." in f".{n}." for m in EMBEDDING_MODULES)]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if emb:
        groups.append({"params": emb, "lr_scale": cfg.embedding_lr_scale})
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``groups`` (parameter groups, or a plain list of parameters) at ``cfg.lr``."""
    kind = cfg.optimizer
    if kind == "auto":
        kind = "adamw8bit" if device.type == "cuda" and _bnb_available() else "adamw"
    if kind == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type == "cuda")


def _bnb_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def _autocast(session: ModelSession):
    """bf16/fp16 autocast on CUDA; on CPU the model computes in its own dtype."""
    if session.device.type == "cuda" and session.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast("cuda", dtype=session.dtype)
    return contextlib.nullcontext()


def _fit(session: ModelSession, batches: list[Batch], cfg: TTTConfig, deadline: float | None,
         log: Callable[[str], None] | None, result: TTTResult) -> None:
    """The training loop; appends to ``result`` as it goes (so a caller that catches an error sees
    the steps done so far)."""
    model, device = session.model, session.device
    named = session.trainable_parameters()
    params = list(named.values())
    opt = make_optimizer(param_groups(named, cfg), cfg, device)
    # fp16 activations' gradients underflow without loss scaling (bf16 and fp32 need none); the scaler
    # needs fp32 master weights, which peft gives the adapter by default
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and session.dtype == torch.float16
                                  and all(p.dtype == torch.float32 for p in params))
    rng = np.random.default_rng(cfg.seed + 1)
    order = np.arange(len(batches))
    step_time = 0.0
    for step in range(result.steps, cfg.steps):
        if deadline is not None and time.time() + step_time > deadline:
            result.stopped = "deadline"  # the next step would end after the deadline
            return
        t0 = time.time()
        if step % len(batches) == 0 and step > 0 and cfg.shuffle:
            order = rng.permutation(len(batches))
        batch = batches[order[step % len(batches)]]
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with _autocast(session):
            loss = batch_loss(model, batch, device)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        result.steps += 1
        result.tokens += batch.tokens
        result.losses.append(float(loss.detach()))  # a sync point; one a step is cheap next to the step
        step_time = time.time() - t0
        if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            log(f"ttt step {step + 1}/{cfg.steps} loss {result.losses[-1]:.4f} lr {lr:.2e} "
                f"batch {tuple(batch.input_ids.shape)} {batch.tokens / max(step_time, 1e-9):.0f} tok/s")


def train_task(session: ModelSession, sequences: list[Encoded], cfg: TTTConfig | None = None,
               deadline: float | None = None, log: Callable[[str], None] | None = None) -> TTTResult:
    """Train the session's adapter on one task's sequences; leaves the model in eval mode.

    Sequences longer than the model's ``max_seq_len`` or without a target token are dropped.
    ``deadline`` is a ``time.time()`` value: no step starts that would (judging by the last one)
    end after it.
    """
    cfg = cfg or TTTConfig()
    start = time.time()
    result = TTTResult(steps=0, tokens=0, seconds=0.0, tokens_per_s=0.0)
    usable = [s for s in sequences if len(s) <= session.cfg.max_seq_len and s.loss_mask[1:].any()]
    if cfg.shuffle:
        usable = [usable[i] for i in np.random.default_rng(cfg.seed).permutation(len(usable))]
    if not usable or cfg.steps == 0:
        result.stopped, result.skipped = "empty", "no training sequences" if not usable else "no steps planned"
        return result
    torch.manual_seed(cfg.seed)
    budget, max_len = cfg.batch_tokens, max(len(s) for s in usable)
    checkpointing = (cfg.grad_checkpointing and backend_of(session).checkpointing_per_call
                     and not session.cfg.gradient_checkpointing)
    try:
        if checkpointing:
            session.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        session.train_mode()
        while True:
            batches = pack_batches([s for s in usable if len(s) <= max_len], budget, cfg.max_batch_size,
                                   session.token_map.pad)
            try:
                _fit(session, batches, cfg, deadline, log, result)
                break
            except torch.OutOfMemoryError as e:
                oom = first_line(e, 200) or "out of memory"
            # outside the except block, so that the traceback no longer holds the step's tensors
            _free_memory(session)
            if max(b.input_ids.shape[0] for b in batches) > 1:  # halve the batches first
                budget = max(b.input_ids.numel() for b in batches) // 2
            else:  # one sequence a batch already: leave out the longest ones
                max_len = int(max_len * 0.75)
            if not any(len(s) <= max_len for s in usable):
                result.stopped = "oom"
                result.skipped = f"oom: {oom}" if result.steps == 0 else None
                if log:
                    log(f"ttt out of memory at step {result.steps} even one short sequence at a time; giving up")
                break
            if log:
                log(f"ttt out of memory at step {result.steps}; retrying with batches of <= {budget} tokens "
                    f"and sequences of <= {max_len} tokens")
        if result.stopped == "deadline" and result.steps == 0:
            result.skipped = "deadline reached before the first step"
    finally:
        if checkpointing:
            session.model.gradient_checkpointing_disable()
        session.model.zero_grad(set_to_none=True)
        session.eval_mode()
    result.seconds = time.time() - start
    result.tokens_per_s = result.tokens / result.seconds if result.seconds > 0 else 0.0
    return result


def _free_memory(session: ModelSession) -> None:
    session.model.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
