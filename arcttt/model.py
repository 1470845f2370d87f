"""Loading a causal LM from a local directory, attaching one LoRA adapter, and restoring it between tasks.

:func:`load_model` returns a :class:`ModelSession`: the peft-wrapped model in eval mode, the token
map the directory records (``arcttt.json``), and an in-memory snapshot of the adapter taken right
after attaching it. Per task, ``session.reset()`` copies the snapshot back into the adapter's
parameters (bit for bit), so the base model is loaded once per process, never per task. With
``model.adapter=DIR`` the adapter is a saved PEFT LoRA (safetensors) instead of a fresh one, and
the snapshot, hence every task's starting point, is that adapter.

Backends:
- ``unsloth``: ``FastLanguageModel.from_pretrained`` + ``get_peft_model`` (4-bit or 16-bit). On a
  machine without a GPU unsloth runs its CPU fallback (stock transformers + peft underneath).
- ``hf``: ``AutoModelForCausalLM`` + ``peft.get_peft_model``; 4-bit nf4 through bitsandbytes.
- ``auto``: unsloth when a CUDA GPU is present and unsloth is installed, else hf.

Everything is offline: the hub environment switches are set before transformers, peft or unsloth
are first imported (they are imported inside the functions that need them), weights are read with
``local_files_only=True``, safetensors only, and never with remote code.

The model is called like any Hugging Face causal LM::

    out = session.model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    out.logits, out.past_key_values

:func:`make_tiny_model` builds the small random Llama used by the tests and benchmarks.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from arcttt import formats
from arcttt.backends import backend_of
from arcttt.causal_lm import DTYPES, OFFLINE_KWARGS, load_causal_lm, resolve_dtype
from arcttt.errors import first_line
from arcttt.modeldir import (ModelLoadError, build_tokenizer, check_model_dir, prequantized, token_map_from_tokenizer,
                             write_model_meta)
from arcttt.offline import set_offline_env  # noqa: F401 - callers import it from here too

# All linear layers of a Llama/Qwen/Mistral decoder block.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

log = logging.getLogger("arcttt.model")


SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "arcttt-tiny-syn"
"""arcttt's own small model trained by ``arcttt finetune`` (weights/README.md): the default dry run's."""


@dataclass
class LoraConfig:
    """The per-task adapter."""

    rank: int = 64
    """LoRA rank r."""
    alpha: float = 32
    """LoRA alpha; the update is scaled by alpha/r, or alpha/sqrt(r) with rsLoRA."""
    use_rslora: bool = True
    """Rank-stabilised scaling (alpha/sqrt(r)), so that the rank can change without retuning lr."""
    dropout: float = 0.0
    """Dropout on the adapter input (0 keeps training deterministic and eval == train forward)."""
    target_modules: tuple[str, ...] = LLAMA_LINEAR
    """Leaf names of the linear layers that get an adapter."""
    train_embeddings: bool = False
    """Also train the input embeddings in full (cheap once the vocabulary is cut to ~16 tokens)."""
    train_lm_head: bool = False
    """Also train the output head in full."""
    lora_embeddings: bool = False
    """A LoRA on ``embed_tokens`` and ``lm_head`` too (NVARC); unsloth trains them in full instead."""

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        errors = []
        if self.rank < 1:
            errors.append(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            errors.append(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            errors.append("target_modules must name at least one module")
        if {"embed_tokens", "lm_head"} & set(self.target_modules):
            errors.append("put embed_tokens/lm_head under lora_embeddings (a LoRA) or train_embeddings/"
                          "train_lm_head (in full), not target_modules")
        if self.lora_embeddings and (self.train_embeddings or self.train_lm_head):
            errors.append("lora_embeddings and train_embeddings/train_lm_head exclude each other")
        if errors:
            raise ValueError("LoraConfig: " + "; ".join(errors))

    @property
    def lora_modules(self) -> list[str]:
        """Leaf names of every module that gets a LoRA."""
        return [*self.target_modules, *(("embed_tokens", "lm_head") if self.lora_embeddings else ())]

    @property
    def full_modules(self) -> list[str]:
        """Modules trained in full next to the adapter (peft's modules_to_save)."""
        return [name for name, on in (("embed_tokens", self.train_embeddings), ("lm_head", self.train_lm_head)) if on]


@dataclass
class ModelConfig:
    """How to load the base model."""

    backend: Literal["auto", "hf", "unsloth"] = "auto"
    """auto: unsloth on a CUDA GPU when installed, else hf (transformers + peft)."""
    load_in_4bit: bool = False
    """Quantize the base weights to 4-bit nf4 (bitsandbytes) while loading."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute dtype; auto: bf16 on GPUs that have it, fp16 on those that do not (T4), fp32 on CPU."""
    max_seq_len: int = 8192
    """Longest sequence the model is asked to handle (training sequences beyond it are dropped)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30% slower); set at load time for unsloth."""
    format: str | None = None
    """The format the model was trained on, for a directory without ``arcttt.json`` (compact, chat,
    nvarc, architects); None: ``arcttt.json``'s, else what the tokenizer pins down (nvarc)."""
    adapter: str | None = None
    """A PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) that
    every task starts from instead of a fresh LoRA; its own rank, alpha and target modules are
    used (``lora``'s are not). None: a fresh LoRA as ``lora`` says."""
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**self.lora)
        errors = []
        if self.backend not in ("auto", "hf", "unsloth"):
            errors.append(f"backend must be auto, hf or unsloth, got {self.backend!r}")
        if self.dtype not in ("auto", *DTYPES):
            errors.append(f"dtype must be auto, bf16, fp16 or fp32, got {self.dtype!r}")
        if self.max_seq_len < 16:
            errors.append(f"max_seq_len must be >= 16, got {self.max_seq_len}")
        if self.format is not None and self.format not in formats.FORMATS:
            errors.append(f"format must be one of {', '.join(formats.FORMATS)} or None, got {self.format!r}")
        if errors:
            raise ValueError("ModelConfig: " + "; ".join(errors))


@dataclass(eq=False)
class ModelSession:
    """A loaded model with its adapter, and what the rest of the pipeline needs to know about it."""

    model: Any
    """The peft-wrapped causal LM (eval mode unless training)."""
    token_map: formats.TokenMap
    device: torch.device
    dtype: torch.dtype
    backend: Literal["hf", "unsloth"]
    cfg: ModelConfig
    path: Path
    n_params: int
    """Parameters of the base model (unquantized count), without the adapter."""
    n_layers: int
    hidden_size: int
    attn_dim: int
    """Query heads x head size (not always the hidden size: Qwen3-4B has 32 x 128 on 2560)."""
    n_trainable: int
    snapshot: dict[str, torch.Tensor] = field(repr=False)
    """Initial values of every trainable parameter (adapter and fully trained modules), by name."""

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The parameters TTT updates (exactly the ones in the snapshot)."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def reset(self) -> None:
        """Restore the adapter to its state right after attaching (bit for bit) and drop gradients."""
        params = self.trainable_parameters()
        if params.keys() != self.snapshot.keys():
            raise RuntimeError("the model's trainable parameters changed since the snapshot was taken")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.snapshot[name])
                p.grad = None
        self.eval_mode()

    def train_mode(self) -> None:
        """The library's own switch (``backends.py``: unsloth's also switches its kernels)."""
        backend_of(self).train_mode(self.model)

    def eval_mode(self) -> None:
        backend_of(self).eval_mode(self.model)

    def train_flops_per_token(self, seq_len: int) -> float:
        """Model FLOPs of one trained token in a sequence of ``seq_len``: 6N + 12·L·(heads·head size)·n,
        the PaLM paper's convention (non-causal attention counted in full). LoRA skips the frozen
        weights' gradients, so the hardware does about 2/3 of the 6N part."""
        return 6.0 * self.n_params + 12.0 * self.n_layers * self.attn_dim * seq_len

    def describe(self) -> dict:
        return {"path": str(self.path), "backend": self.backend, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "n_params": self.n_params,
                "n_layers": self.n_layers, "hidden_size": self.hidden_size, "attn_dim": self.attn_dim,
                "n_trainable": self.n_trainable,
                "cfg": asdict(self.cfg)}


def unsloth_available() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(backend: str) -> Literal["hf", "unsloth"]:
    if backend == "auto":
        return "unsloth" if torch.cuda.is_available() and unsloth_available() else "hf"
    if backend == "unsloth" and not unsloth_available():
        raise ModelLoadError("backend 'unsloth' asked for, but unsloth is not installed "
                             "(bash scripts/setup.sh --unsloth, or use backend 'hf')")
    return backend  # type: ignore[return-value]


def import_unsloth_first(backend: str) -> bool:
    """Import unsloth now when ``backend`` is unsloth, or auto resolving to it: unsloth patches
    transformers, peft and trl, and what was imported before it runs unpatched (slower, more
    memory; it warns). Call it before anything imports transformers (``arcttt.config`` does).
    True when unsloth is imported; a failing import raises here, as the load would."""
    if backend not in ("unsloth", "auto") or not unsloth_available():
        return False
    if resolve_backend(backend) != "unsloth":
        return False
    import unsloth  # noqa: F401

    return True




def load_model(path: str | Path, cfg: ModelConfig | None = None) -> ModelSession:
    """Load the model in ``path`` (a local directory), attach a fresh LoRA (or the adapter
    ``cfg.adapter``) and snapshot it."""
    cfg = cfg or ModelConfig()
    path, token_map, _ = check_model_dir(path, cfg.format)
    if cfg.adapter is not None:
        check_adapter_dir(cfg.adapter)  # before the long base load
    set_offline_env()
    backend = resolve_backend(cfg.backend)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(cfg.dtype, device)
    try:
        loader = _load_unsloth if backend == "unsloth" else _load_hf
        model = loader(path, cfg, device, dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # corrupt weights, a bad config, no memory: one clear error that names the path
        raise ModelLoadError(f"{path}: cannot load the model with backend {backend}: "
                             f"{type(e).__name__}: {str(e)[:500]}") from e
    _keep_bnb_cpu_layout(model)
    embeddings = model.get_input_embeddings()
    vocab = getattr(embeddings, "base_layer", embeddings).num_embeddings  # a LoRA on it wraps it
    if max(token_map.used_ids) >= vocab:
        raise ModelLoadError(f"{path}: the {token_map.format} format uses token id {max(token_map.used_ids)} but the model "
                             f"has only {vocab} embeddings")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ModelLoadError(f"{path}: no LoRA target found among {cfg.lora.target_modules}")
    conf = model.get_base_model().config
    head_dim = getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads
    session = ModelSession(
        model=model, token_map=token_map, device=device, dtype=dtype, backend=backend, cfg=cfg, path=path,
        n_params=count_base_params(model), n_layers=int(conf.num_hidden_layers), hidden_size=int(conf.hidden_size),
        attn_dim=int(conf.num_attention_heads * head_dim),
        n_trainable=sum(p.numel() for p in trainable.values()),
        snapshot={n: p.detach().clone() for n, p in trainable.items()},
    )
    session.eval_mode()
    return session


def peft_lora_config(lora: LoraConfig):
    """The ``peft.LoraConfig`` of ``lora``: a LoRA on ``lora_modules`` (the embeddings and head too with
    ``lora_embeddings``), ``full_modules`` trained in full. TTT and finetune both attach through it."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_rslora=lora.use_rslora,
                          target_modules=lora.lora_modules, modules_to_save=lora.full_modules or None,
                          bias="none", task_type="CAUSAL_LM")


def attach_lora(model, lora: LoraConfig):
    """``model`` (a transformers causal LM) wrapped by peft with a fresh LoRA as ``lora`` says."""
    from peft import get_peft_model

    return get_peft_model(model, peft_lora_config(lora))


def _load_hf(path: Path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    kwargs: dict[str, Any] = {"device_map": {"": device.index or 0} if device.type == "cuda" else "cpu"}
    if cfg.load_in_4bit and not prequantized(path):  # a pre-quantized directory loads as it was saved
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    base = load_causal_lm(path, dtype, **kwargs)
    base.config.use_cache = True
    if cfg.gradient_checkpointing:
        # non-reentrant checkpointing needs no input that requires grad (the embeddings are frozen)
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _attach_adapter(base, cfg) if cfg.adapter else attach_lora(base, cfg.lora)


def _load_unsloth(path: Path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype):
    from unsloth import FastLanguageModel

    lora = cfg.lora
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path), max_seq_length=cfg.max_seq_len, dtype=dtype,
        load_in_4bit=cfg.load_in_4bit or prequantized(path),
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False, **OFFLINE_KWARGS)
    if cfg.adapter:
        return _attach_adapter(model, cfg, unsloth=True)
    # unsloth trains embed_tokens/lm_head in full when listed (a LoRA on them becomes full training)
    targets = [*lora.lora_modules, *lora.full_modules]
    return FastLanguageModel.get_peft_model(
        model, r=lora.rank, target_modules=targets, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False, random_state=0,
        use_rslora=lora.use_rslora, max_seq_length=cfg.max_seq_len)


def check_adapter_dir(adapter: str | Path) -> dict:
    """The ``adapter_config.json`` of a PEFT LoRA adapter directory with safetensors weights, or a
    :class:`ModelLoadError` saying what is wrong (a pickled ``adapter_model.bin`` is refused)."""
    path = Path(adapter)
    if not path.is_dir():
        raise ModelLoadError(f"adapter directory {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} is not a PEFT adapter directory: no adapter_config.json")
    if not (path / "adapter_model.safetensors").is_file():
        if (path / "adapter_model.bin").is_file():
            raise ModelLoadError(f"{path} holds adapter_model.bin (a pickle), and only safetensors are loaded: "
                                 "convert it with `arcttt convert-weights SRC DST`")
        raise ModelLoadError(f"{path} has no adapter_model.safetensors")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}/adapter_config.json: cannot read ({e})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/adapter_config.json: not a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelLoadError(f"{path}: not a LoRA adapter (peft_type {config['peft_type']!r})")
    return config


def _attach_adapter(model, cfg: ModelConfig, unsloth: bool = False):
    """``model`` wrapped with the saved adapter ``cfg.adapter``, trainable (its LoRA and any fully
    trained modules), with the adapter's own rank, alpha and targets.

    hf: ``PeftModel.from_pretrained``. unsloth: its GPU build and its CPU fallback attach a saved
    adapter in different ways, and only when the adapter names its base model; so the same LoRA is
    made with unsloth's ``get_peft_model`` (as for a fresh one) and the saved weights are loaded
    into it with peft's ``set_peft_model_state_dict``, every one of them checked to land.
    """
    saved = check_adapter_dir(cfg.adapter)
    log.info("adapter %s: its own r=%s, alpha=%s, rslora=%s, targets %s are used (model.lora's rank, alpha "
             "and targets are not)", cfg.adapter, saved.get("r"), saved.get("lora_alpha"),
             saved.get("use_rslora", False), saved.get("target_modules"))
    if not unsloth:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(cfg.adapter), is_trainable=True, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - the adapter's fault, not the base model's: name the adapter
            raise ModelLoadError(f"adapter {cfg.adapter}: cannot attach it ({type(e).__name__}: "
                                 f"{first_line(e)})") from None
        check_adapter_fits(model, cfg.adapter)  # peft only warns about keys that fit nothing
        return model
    unsupported = [k for k in ("rank_pattern", "alpha_pattern", "layers_to_transform", "use_dora") if saved.get(k)]
    if saved.get("bias", "none") != "none":
        unsupported.append(f"bias={saved['bias']}")
    if unsupported or not isinstance(saved.get("target_modules"), list):
        raise ModelLoadError(f"adapter {cfg.adapter}: the unsloth backend takes an adapter with a list of target "
                             f"modules and no {', '.join(unsupported) or 'regex targets'}; use backend hf")
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from unsloth import FastLanguageModel

    model = FastLanguageModel.get_peft_model(
        model, r=saved["r"], target_modules=[*saved["target_modules"], *(saved.get("modules_to_save") or [])],
        lora_alpha=saved["lora_alpha"], lora_dropout=saved.get("lora_dropout", 0.0), bias="none",
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False, random_state=0,
        use_rslora=saved.get("use_rslora", False), max_seq_length=cfg.max_seq_len)
    weights = _adapter_weights(cfg.adapter, load_file)
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if result.unexpected_keys or missing:
        first = (f"{result.unexpected_keys[0]!r} is not a LoRA weight of the model" if result.unexpected_keys
                 else f"the model's {missing[0]!r} is not in the adapter")
        raise ModelLoadError(f"adapter {cfg.adapter}: its weights do not fit the model ({first}; "
                             f"{len(result.unexpected_keys)} extra, {len(missing)} missing)")
    return model


def _adapter_weights(adapter: str | Path, read):
    """``read`` (``load_file`` or a key lister) of the adapter's safetensors, a fault naming the file."""
    path = Path(adapter) / "adapter_model.safetensors"
    try:
        return read(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file raises what safetensors raises
        raise ModelLoadError(f"{path}: cannot read ({type(e).__name__}: {first_line(e, 200)})") from None


def check_adapter_fits(model, adapter: str | Path) -> None:
    """A :class:`ModelLoadError` naming the adapter folder and the first extra or missing key unless
    every tensor of the saved adapter is a LoRA (or fully trained) weight of ``model`` (a PEFT
    model with that adapter's config) and every such weight is in the adapter."""
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    def keys(path: str) -> set[str]:
        with safe_open(path, "pt") as f:
            return set(f.keys())

    saved = _adapter_weights(adapter, keys)
    wanted = set(get_peft_model_state_dict(model))
    extra, missing = sorted(saved - wanted), sorted(wanted - saved)
    if extra or missing:
        first = f"{extra[0]!r} is not a LoRA weight of the model" if extra else \
            f"the model's {missing[0]!r} is not in the adapter"
        raise ModelLoadError(f"adapter {adapter}: its weights do not fit the model ({first}; {len(extra)} extra, "
                             f"{len(missing)} missing)")


def _keep_bnb_cpu_layout(model) -> int:
    """bitsandbytes 0.50 repacks a 4-bit weight in place for its AVX512-BF16 CPU kernel on the first
    no-grad forward and never unpacks it; backward through the repacked weight is then wrong, so
    training after any search pass would silently stop learning. Keep the trainable layout."""
    count = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def count_base_params(model) -> int:
    """Parameters of the base model as if unquantized (bitsandbytes packs two 4-bit values a byte)."""
    total = 0
    for name, p in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        total += math.prod(shape) if shape is not None else p.numel()
    return total


ARCHITECTURES = ("llama", "qwen3", "mistral")


def make_tiny_model(out_dir: str | Path, format_name: str = "compact", *, hidden: int = 64, layers: int = 2,
                    heads: int = 4, intermediate: int = 128, extra_tokens: int = 0, seed: int = 0,
                    arch: str = "llama", meta: bool = True) -> Path:
    """A random-initialised small causal LM with a matching local tokenizer and ``arcttt.json`` (no download).

    ``arch``: llama, qwen3 (NVARC's base) or mistral (the ARChitects'). Key/value heads are half the
    attention heads (grouped-query attention, as in Llama 3 and Qwen). ``meta=False`` writes no
    ``arcttt.json``, like a published checkpoint (the format must then be given or detected).
    """
    if min(hidden, layers, heads, intermediate) < 1 or extra_tokens < 0:
        raise ValueError(f"hidden, layers, heads and intermediate must be >= 1 and extra_tokens >= 0, got "
                         f"{hidden}, {layers}, {heads}, {intermediate}, {extra_tokens}")
    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}) with an even head size")
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    set_offline_env()
    import transformers

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(format_name, extra_tokens=extra_tokens)
    token_map = token_map_from_tokenizer(format_name, tokenizer)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[arch]
    config = config_class(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2), intermediate_size=intermediate, max_position_embeddings=16384,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **({"head_dim": hidden // heads} if arch != "llama" else {}))
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from arcttt.weights import portable_config

    portable_config(out / "config.json")  # loads the same in transformers 4.4x
    if meta:
        write_model_meta(out, token_map, source="make_tiny_model", seed=seed)
    return out
