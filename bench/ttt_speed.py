"""TTT training speed: tokens/s, seconds per step and peak memory of ``arcttt.ttt.train_task``.

Runs the real trainer (load_model + LoRA + train_task) on synthetic sequences of a fixed length
(loss on the last quarter, like an answer after its prompt), first a few untimed steps, then the
timed ones. The model is a directory (``--model``), or built here with random weights:

    python bench/ttt_speed.py                                   # the tiny model (hidden 64, 2 layers)
    python bench/ttt_speed.py --hidden 256 --layers 4 --seq-len 2048
    python bench/ttt_speed.py --model DIR --backend unsloth --load-in-4bit
    python bench/ttt_speed.py --shape qwen3-4b --load-in-4bit --seq-len 8192 --peak-tflops 121   # GPU
    python bench/ttt_speed.py --shape qwen3-4b --keep-model /tmp/q4b --format chat --steps 0    # build only

``--shape qwen3-4b`` writes a random model shaped like Qwen3-4B (hidden 2560, 36 layers, 32 heads,
8 key/value heads, head size 128, MLP 9728, vocabulary cut to the 16 compact tokens; about 3.6 B
parameters, 7.3 GB in bf16) to a temporary directory (``--keep-model DIR``: there, kept, and reused
by a later call), in the format ``--format``: no download. It is meant for a GPU (built there).
``--shape qwen3-mini`` builds the same way a 2-layer, hidden-64 Qwen3: the CPU rehearsal's stand-in.
MFU = tokens/s x model FLOPs per token (6N + 12·L·attn·n, ModelSession.train_flops_per_token)
/ ``--peak-tflops`` (dense bf16 datasheet peak of the card, e.g. L4 121, T4 65 (fp16), H100/H200
SXM 989), and again / ``--measured-tflops`` (what a plain bf16 matmul reached on that card: the
H200 here gave about 790). With ``--backend unsloth`` (or auto resolving to it) unsloth is imported
before transformers, as it asks.
Peak memory: CUDA max allocated on a GPU; the process's peak resident set (RSS) on CPU; beside it
``estimated_train_gib``, what ``arcttt.memory`` expects this training to hold (weights, adapter,
gradients and optimizer, activations), to check the estimate against a GPU's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# random Qwen3 shapes to build: the production model's, and a shrunk one for the CPU rehearsal
# (bench/gpu_check.sh --rehearse) that takes the same code path in seconds
SHAPES = {
    "qwen3-4b": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=9728, max_position_embeddings=40960),
    "qwen3-mini": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16, intermediate_size=128, max_position_embeddings=16384),
}


def build_qwen3(out: Path, format_name: str = "compact", shape: str = "qwen3-4b") -> Path:
    """A random model of one of ``SHAPES`` (config written here), saved in bf16 with arcttt.json;
    initialised on the GPU when there is one (seconds, not minutes)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from arcttt import modeldir

    tokenizer = modeldir.build_tokenizer(format_name)
    config = Qwen3Config(
        vocab_size=len(tokenizer), **SHAPES[shape], rope_theta=1_000_000.0, tie_word_embeddings=True,
        rms_norm_eps=1e-6, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: half the memory of fp32
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(out)
    del model
    tokenizer.save_pretrained(out)
    modeldir.write_model_meta(out, modeldir.token_map_from_tokenizer(format_name, tokenizer), source=f"{shape}-shape")
    return out


def synthetic_sequences(n: int, seq_len: int, tm, seed: int = 0):
    from arcttt.formats import Encoded

    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        ids = rng.choice(np.asarray([*tm.digits, tm.newline], dtype=np.int64), size=seq_len)
        ids[:len(tm.bos)] = tm.bos  # a format may have no BOS (nvarc's has none)
        mask = np.zeros(seq_len, dtype=bool)
        mask[-seq_len // 4:] = True
        seqs.append(Encoded(ids, mask, seq_len - seq_len // 4))
    return seqs


def mfu(flops_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOP/s as a share of a peak (None without one)."""
    return round(flops_per_s / (peak_tflops * 1e12), 4) if peak_tflops else None


def peak_memory_gb(device) -> tuple[float, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "cuda max allocated"
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process peak RSS"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a prepared model directory (default: build one)")
    p.add_argument("--shape", choices=["tiny", *SHAPES], default="tiny", help="model to build without --model")
    p.add_argument("--format", default="compact", help="qwen3 shapes: the arcttt format of the built model")
    p.add_argument("--keep-model", type=Path, help="qwen3 shapes: build into (or reuse) this directory")
    p.add_argument("--hidden", type=int, default=64, help="tiny shape: hidden size")
    p.add_argument("--layers", type=int, default=2, help="tiny shape: layers")
    p.add_argument("--heads", type=int, default=4, help="tiny shape: attention heads")
    p.add_argument("--intermediate", type=int, help="tiny shape: MLP size (default 2 x hidden)")
    p.add_argument("--backend", choices=["auto", "hf", "unsloth"], default="auto")
    p.add_argument("--load-in-4bit", action="store_true")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="auto")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (alpha 32, rsLoRA)")
    p.add_argument("--train-embeddings", action="store_true", help="also train embed_tokens and lm_head in full")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--optimizer", choices=["auto", "adamw", "adamw8bit"], default="auto")
    p.add_argument("--peak-tflops", type=float, help="the device's datasheet peak TFLOP/s, for MFU")
    p.add_argument("--measured-tflops", type=float, help="the device's measured matmul TFLOP/s, for a second MFU")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", type=Path, help="also write the JSON object to this file")
    args = p.parse_args(argv)

    import torch

    from arcttt.model import import_unsloth_first

    import_unsloth_first(args.backend)  # before arcttt.config imports transformers
    from arcttt.config import RunConfig
    from arcttt.memory import GIB, ModelShape, estimate
    from arcttt.model import LoraConfig, ModelConfig, load_model, make_tiny_model
    from arcttt.ttt_data import DataConfig
    from arcttt.ttt import TTTConfig, train_task

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        if args.model:
            model_dir = args.model
        elif args.shape in SHAPES and args.keep_model and (args.keep_model / "config.json").is_file():
            model_dir = args.keep_model
        elif args.shape in SHAPES:
            model_dir = build_qwen3(args.keep_model or Path(tmp) / f"{args.shape}-shape", args.format, args.shape)
        else:
            model_dir = make_tiny_model(Path(tmp) / "tiny", hidden=args.hidden, layers=args.layers, heads=args.heads,
                                        intermediate=args.intermediate or 2 * args.hidden)
        build_s = time.time() - t0
        if args.steps == 0:
            print(f"model: {model_dir} ({build_s:.0f} s)")
            return {"model": str(model_dir), "build_s": build_s}
        t0 = time.time()
        cfg = ModelConfig(backend=args.backend, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
                          max_seq_len=max(args.seq_len, 16), gradient_checkpointing=args.grad_checkpointing,
                          lora=LoraConfig(rank=args.rank, alpha=32, train_embeddings=args.train_embeddings,
                                          train_lm_head=args.train_embeddings))
        session = load_model(model_dir, cfg)
        load_s = time.time() - t0
        shape = ModelShape.from_model_dir(model_dir)

    seqs = synthetic_sequences(args.batch_size * max(args.steps, args.warmup), args.seq_len, session.token_map)
    ttt = dict(lr=1e-4, batch_tokens=args.batch_size * args.seq_len, max_batch_size=args.batch_size,
               optimizer=args.optimizer, grad_checkpointing=args.grad_checkpointing, shuffle=False)
    if args.warmup:
        train_task(session, seqs, TTTConfig(steps=args.warmup, **ttt))
    if session.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = train_task(session, seqs, TTTConfig(steps=args.steps, **ttt))
    if session.device.type == "cuda":
        torch.cuda.synchronize()
    memory, memory_kind = peak_memory_gb(session.device)
    # what arcttt.memory expects this training to hold (CUDA's allocator figure, without overhead)
    plan = estimate(RunConfig(data=DataConfig(max_len=args.seq_len), model=cfg, ttt=TTTConfig(steps=args.steps, **ttt)),
                    shape)
    flops_per_token = session.train_flops_per_token(args.seq_len)
    out = {
        "device": (torch.cuda.get_device_name() if session.device.type == "cuda"
                   else f"cpu x{torch.get_num_threads()} threads"),
        "backend": session.backend, "dtype": str(session.dtype).removeprefix("torch."), "4bit": args.load_in_4bit,
        "n_params": session.n_params, "n_layers": session.n_layers, "hidden": session.hidden_size,
        "lora_rank": args.rank, "train_embeddings": args.train_embeddings, "trainable": session.n_trainable,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size, "grad_checkpointing": args.grad_checkpointing,
        "steps": result.steps, "stopped": result.stopped, "skipped": result.skipped,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "s_per_step": round(result.seconds / max(result.steps, 1), 4),
        "s_per_token": result.seconds / max(result.tokens, 1),
        "peak_memory_gb": round(memory, 3), "memory_kind": memory_kind,
        "estimated_train_gib": round((plan.weights + plan.adapter + plan.train) / GIB, 3),
        "model_tflops_per_s": round(result.tokens_per_s * flops_per_token / 1e12, 4),
        "mfu": mfu(result.tokens_per_s * flops_per_token, args.peak_tflops),
        "peak_tflops": args.peak_tflops,
        "mfu_measured_peak": mfu(result.tokens_per_s * flops_per_token, args.measured_tflops),
        "measured_tflops": args.measured_tflops,
        "build_s": round(build_s, 1), "load_s": round(load_s, 1),
    }
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>20}: {value}")
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv[1:])
