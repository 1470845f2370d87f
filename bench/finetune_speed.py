"""Training throughput of ``arcttt finetune``'s step on this CPU: tokens/s of ``train_step`` on packed
rows of synthetic tasks, for torch thread counts, fp32 vs bf16 autocast, and torch.compile.

    PYTHONPATH=. python bench/finetune_speed.py [--hidden 128 --layers 4] [--steps 30]

Each variant builds the same random model, warms up for 5 steps (compiles, allocator) and times the
next ``--steps``; the rows are the same in every variant (the stream is a pure function of its seed).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch


def run(model_dir: Path, threads: int, bf16: bool, compile_: bool, steps: int, seq_len: int, rows: int) -> float:
    from arcttt.finetune import Dist, FinetuneConfig, load_base, train_step
    from arcttt.finetune_data import Cursor, load_tasks, next_rows
    from arcttt.modeldir import read_model_meta
    from arcttt.ttt import make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = FinetuneConfig(steps=1000, lr=1e-3, batch_rows=rows, seq_len=seq_len)
    tm, _ = read_model_meta(model_dir)
    dist = Dist(0, 1, torch.device("cpu"))
    model = load_base(model_dir, cfg, dist.device)
    if compile_:
        model = torch.compile(model, dynamic=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg, dist.device)
    tasks = load_tasks("synthetic:2000:0:copy+flip+rotate+small_colour_map")
    cursor, tokens, seconds = Cursor(), 0, 0.0
    model.train()
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    for step in range(5 + steps):
        batch, cursor = next_rows(tasks, cursor, cfg.batch_rows, tm, cfg)
        t0 = time.perf_counter()
        with cast():
            _, n = train_step(model, opt, params, batch, step, cfg, dist, tm.pad)
        if step >= 5:
            seconds += time.perf_counter() - t0
            tokens += n
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--variants", default="1:fp32:eager,2:fp32:eager,1:bf16:eager,1:fp32:compile,1:bf16:compile",
                        help="comma-separated THREADS:DTYPE:MODE")
    args = parser.parse_args()
    from arcttt.model import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_model(Path(tmp) / "m", "compact", hidden=args.hidden, layers=args.layers,
                                    heads=4, intermediate=args.intermediate, seed=0)
        print(f"model: hidden {args.hidden}, {args.layers} layers; rows of {args.rows} x {args.seq_len} tokens; "
              f"{torch.get_num_threads()} threads available")
        for variant in args.variants.split(","):
            threads, dtype, mode = variant.split(":")
            rate = run(model_dir, int(threads), dtype == "bf16", mode == "compile", args.steps, args.seq_len, args.rows)
            print(f"| {threads} | {dtype} | {mode} | {rate:,.0f} tok/s |", flush=True)


if __name__ == "__main__":
    main()
