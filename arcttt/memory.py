"""Peak GPU memory of a run, estimated from the model's shape and the run's config (no GPU needed).

:func:`estimate` adds up, in bytes, what one worker holds on its GPU:

- ``weights``: the base model; linear layers in 4-bit nf4 with double quantization (bitsandbytes:
  half a byte a weight, plus one byte of absmax per block of 64, plus 4 bytes per 256 such blocks)
  when ``load_in_4bit``, else at the compute dtype; embeddings, norms and the head always at the
  compute dtype;
- ``adapter``: the LoRA matrices (fp32, as peft keeps them) and the modules trained in full (a copy
  at the compute dtype): present from load to the end of the run;
- ``train_state``: their gradients and the optimizer's two moments (fp32 AdamW: 8 bytes a weight;
  8-bit AdamW: 2), during TTT only;
- ``train_activations``: what the backward pass keeps, for one batch of ``T`` tokens
  (``T = max(ttt.batch_tokens, longest sequence)``). Per layer and token a Llama/Qwen block keeps
  ``4h + 2·attn + 2·kv + 4·I + r·m`` values at the compute dtype (both norms' inputs and outputs,
  q, k, v, the attention output, the MLP's gate, SiLU(gate), up and their product; each of the m
  adapted layers' ``x·A``), attention itself taking O(T) (flash / memory-efficient SDPA). Without
  checkpointing every layer keeps that, plus one layer's worth of gradients in flight; with it,
  every layer keeps only its input (``h``) and one layer is recomputed at a time (two layers' worth
  in flight). Plus the logits of the batch: the head's output, its fp32 copy and the fp32 gradient;
- ``search``: the key/value cache of the views searched in lock-step (as many views as
  ``search.max_batch_tokens`` lets into one batch, each ``max_len`` prompt tokens plus the longest
  answer), plus the prefill's working memory (one layer's hidden, q/k/v and MLP tensors for the
  whole batch, nothing kept for backward);
- ``select``: scoring one view: the prompt's cache and its expansion across the candidates of a
  batch (``select.batch_size``, fewer when ``select.max_cache_bytes`` says so, as
  :func:`arcttt.kvcache.rows_within` decides), each with room for the longest answer, the
  prefill's working memory, the candidates' logits and one candidate's fp32 log-softmax; the
  search phase also holds the identity view's prompt cache, kept for the scoring (when it fits
  ``select.max_cache_bytes``);
- ``overhead``: the CUDA context, cuBLAS workspaces and the allocator's fragmentation (a constant).

The peak is ``weights + adapter + overhead + max(train_state + train_activations, search, select)``:
the phases follow each other and free what they used. These are estimates to plan with (a preset
that does not fit one card will OOM; one that fits may still, on a task longer than planned):
``bench/gpu_check.sh`` measures the real peaks beside them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from arcttt.tree import MAX_ANSWER_TOKENS

GIB = 2 ** 30
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # a 4-bit weight with bitsandbytes' double-quantized absmax
LORA_BYTES = 4  # peft keeps the adapter in fp32 (autocast_adapter_dtype)
OVERHEAD_BYTES = 0.75 * GIB  # CUDA context + cuBLAS workspace + allocator fragmentation (assumed)
# usable memory of the cards Kaggle lends (what is left to a process after the driver's share)
CARDS = {"L4": 22.0 * GIB, "T4": 14.5 * GIB}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a Llama/Qwen/Mistral-style decoder."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True
    """Input embeddings and output head share one matrix."""
    name: str = "custom"

    @property
    def attn(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of a block, by leaf name."""
        h, a, kv, i = self.hidden, self.attn, self.kv, self.intermediate
        return {"q_proj": (h, a), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (a, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Weights of all blocks' linear layers (what 4-bit quantizes)."""
        return self.layers * sum(i * o for i, o in self.linear_dims().values())

    @property
    def other_params(self) -> int:
        """Embeddings, head (unless tied) and norms (two per block and a final one)."""
        return self.vocab * self.hidden * (1 if self.tied else 2) + (2 * self.layers + 1) * self.hidden

    @property
    def n_params(self) -> int:
        return self.linear_params + self.other_params

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Key/value cache of one token over all layers."""
        return self.layers * 2 * self.kv * dtype_bytes

    @classmethod
    def from_config(cls, config: dict[str, Any], name: str = "custom") -> ModelShape:
        """From a Hugging Face ``config.json`` (as a dict)."""
        heads = int(config["num_attention_heads"])
        return cls(layers=int(config["num_hidden_layers"]), hidden=int(config["hidden_size"]), heads=heads,
                   kv_heads=int(config.get("num_key_value_heads") or heads),
                   head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
                   intermediate=int(config["intermediate_size"]), vocab=int(config["vocab_size"]),
                   tied=bool(config.get("tie_word_embeddings", False)), name=name)

    @classmethod
    def from_model_dir(cls, path: str | Path) -> ModelShape:
        path = Path(path)
        return cls.from_config(json.loads((path / "config.json").read_text()), name=path.name)


# Qwen3-4B with its vocabulary cut to an arcttt format's 16 tokens (``arcttt shrink-vocab``), the
# model the Kaggle presets are planned for.
QWEN3_4B = ModelShape(layers=36, hidden=2560, heads=32, kv_heads=8, head_dim=128, intermediate=9728,
                      vocab=16, tied=True, name="qwen3-4b (16-token vocabulary)")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part (see the module doc)."""

    weights: float
    adapter: float
    train_state: float
    train_activations: float
    search: float
    select: float
    overhead: float = OVERHEAD_BYTES

    @property
    def train(self) -> float:
        return self.train_state + self.train_activations

    @property
    def peak(self) -> float:
        return self.weights + self.adapter + self.overhead + max(self.train, self.search, self.select)

    @property
    def peak_phase(self) -> str:
        phases = {"ttt": self.train, "search": self.search, "select": self.select}
        return max(phases, key=phases.get)

    def fits(self, card_bytes: float) -> bool:
        return self.peak <= card_bytes

    def to_json(self) -> dict:
        parts = ("weights", "adapter", "train_state", "train_activations", "search", "select", "overhead", "peak")
        return {f"{p}_gib": round(getattr(self, p) / GIB, 3) for p in parts} | {"peak_phase": self.peak_phase}


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2  # auto: bf16 on an L4, fp16 on a T4


def adapter_params(shape: ModelShape, lora) -> tuple[int, int]:
    """(LoRA weights, weights of the modules trained in full) of ``lora`` (a ``model.LoraConfig``)."""
    dims = shape.linear_dims()
    unknown = [m for m in lora.target_modules if m not in dims]
    if unknown:
        raise ValueError(f"no shape known for target modules {unknown} (known: {', '.join(dims)})")
    per_layer = sum(lora.rank * (dims[m][0] + dims[m][1]) for m in lora.target_modules)
    return shape.layers * per_layer, len(lora.full_modules) * shape.vocab * shape.hidden


def activation_values_per_token(shape: ModelShape, lora) -> int:
    """Values one block keeps for backward per token (see the module doc)."""
    h, i = shape.hidden, shape.intermediate
    return 4 * h + 2 * shape.attn + 2 * shape.kv + 4 * i + lora.rank * len(lora.target_modules)


def answer_tokens(format: str | None) -> int:
    """The longest answer in tokens: a 30 x 30 grid and the end in the token formats (one token a
    cell); in a template format at most one token a character of the writer's 30 x 30 text (Llama 3
    splits MIT's spaced digits one a token), plus the end."""
    from arcttt.templates import TEMPLATES

    if format in TEMPLATES:
        from arcttt.gridtext import WRITERS

        return WRITERS[TEMPLATES[format].writer].max_answer_chars() + 1
    return MAX_ANSWER_TOKENS


def adapter_lora(m):
    """The LoRA a run trains: ``m.lora`` (a ``model.ModelConfig``'s), or, with a saved adapter
    (``m.adapter``), the rank and targets its ``adapter_config.json`` gives, which win at load time."""
    if not m.adapter:
        return m.lora
    try:
        saved = json.loads((Path(m.adapter) / "adapter_config.json").read_text())
        targets = saved["target_modules"]
        return replace(m.lora, rank=int(saved["r"]), alpha=saved.get("lora_alpha", m.lora.alpha),
                       target_modules=tuple(targets) if isinstance(targets, list) else m.lora.target_modules)
    except (OSError, ValueError, KeyError, TypeError):
        return m.lora  # the load itself says what is wrong with the folder


def estimate(cfg, shape: ModelShape = QWEN3_4B) -> MemoryEstimate:
    """Peak GPU memory of one worker running ``cfg`` (a ``config.RunConfig``) on a model of ``shape``."""
    m = cfg.model
    b = _dtype_bytes(m.dtype)
    if m.load_in_4bit:
        weights = shape.linear_params * NF4_BYTES + shape.other_params * b
    else:
        weights = shape.n_params * b
    lora = adapter_lora(m)
    lora_n, full_n = adapter_params(shape, lora)
    adapter = lora_n * LORA_BYTES + full_n * b
    eight_bit = cfg.ttt.optimizer in ("adamw8bit", "auto")  # auto: 8-bit on a GPU
    # gradients at the weights' dtype, then AdamW's two moments (fp32 / the weights' dtype, or 1 byte each)
    moments = (2, 2) if eight_bit else (2 * LORA_BYTES, 2 * b)
    train_state = lora_n * (LORA_BYTES + moments[0]) + full_n * (b + moments[1])

    longest = min(cfg.data.max_len, m.max_seq_len)
    tokens = max(cfg.ttt.batch_tokens, longest)
    per_layer = activation_values_per_token(shape, lora) * tokens * b
    if m.gradient_checkpointing or cfg.ttt.grad_checkpointing:
        kept = shape.layers * shape.hidden * tokens * b + 2 * per_layer
    else:
        kept = (shape.layers + 1) * per_layer
    logits = tokens * shape.vocab * (b + 4 + 4)
    train_activations = kept + logits

    def prefill(n_tokens: int) -> float:  # one layer's working tensors, nothing kept
        return n_tokens * (2 * shape.hidden + shape.attn + 2 * shape.kv + 3 * shape.intermediate) * b

    from arcttt.kvcache import rows_within

    kv = shape.kv_bytes_per_token(b)
    answer = answer_tokens(m.format)
    rows = min(cfg.search.n_augmentations, max(1, cfg.search.max_batch_tokens // longest)) \
        if cfg.search.batch_views else 1
    search = rows * (longest + answer) * kv + prefill(rows * longest) + rows * shape.vocab * 4
    if cfg.select.n_views:
        budget = cfg.select.max_cache_bytes
        if budget is None or longest * kv <= budget:
            search += longest * kv  # the identity view's prompt cache, kept for the scoring
        batch = rows_within(kv, longest, answer, shape.vocab, cfg.select.batch_size, budget)
        # the prompt's cache and its expansion across the batch, with room for the answers
        select = (longest * kv + batch * (longest + answer) * kv + prefill(longest)
                  + (batch * b + 4) * answer * shape.vocab)  # logits; one row's fp32 log-softmax
    else:
        select = 0.0
    return MemoryEstimate(weights=weights, adapter=adapter, train_state=train_state,
                          train_activations=train_activations, search=search, select=select)


def memory_report(configs: dict[str, Any], shape: ModelShape = QWEN3_4B,
                  cards: dict[str, float] = CARDS) -> str:
    """A table of the estimate of each config (name -> ``RunConfig``) and whether it fits each card."""
    lines = [f"peak GPU memory per worker (estimated; model {shape.name}, {shape.n_params / 1e9:.2f} B parameters):",
             f"{'preset':<14} {'weights':>8} {'adapter':>8} {'ttt':>8} {'search':>8} {'select':>8} {'peak GiB':>9}  "
             + "  ".join(f"{c} ({cards[c] / GIB:.1f} GiB)" for c in cards)]
    for name, cfg in configs.items():
        e = estimate(cfg, shape)
        fits = "  ".join(f"{('fits' if e.fits(cards[c]) else 'NO'):<{len(c) + 12}}" for c in cards)
        lines.append(f"{name:<14} {e.weights / GIB:>8.2f} {e.adapter / GIB:>8.2f} {e.train / GIB:>8.2f} "
                     f"{e.search / GIB:>8.2f} {e.select / GIB:>8.2f} {e.peak / GIB:>9.2f}  {fits.rstrip()}")
    lines.append(f"(peak = weights + adapter + {OVERHEAD_BYTES / GIB:.2f} GiB overhead + the largest phase; "
                 "see arcttt/memory.py for what each part counts)")
    return "\n".join(lines)


def plan_memory_report(config: str | Path = "kaggle-l4x4", model: str | Path | None = None) -> str:
    """:func:`memory_report` for ``config`` (a preset or config file) and every Kaggle preset, on the
    shape of ``model`` (a model directory's ``config.json``; default :data:`QWEN3_4B`)."""
    from arcttt.config import PRESETS, load_config

    cfg = load_config(config)
    configs = {cfg.preset if str(config) in PRESETS else str(config): cfg}
    configs |= {name: make() for name, make in PRESETS.items() if name.startswith("kaggle-") and name not in configs}
    return memory_report(configs, ModelShape.from_model_dir(model) if model else QWEN3_4B)
