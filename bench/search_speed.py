"""Speed of the answer search and of the scoring pass, against plain greedy ``model.generate``.

On random models built by ``make_tiny_model`` (loaded through ``load_model``, LoRA attached, as in a
run), for the first test input of a few real tasks under the same augmented views:

- ``generate``: HF greedy ``model.generate``, one view after another, made to produce exactly as
  many tokens as our greedy answer of that view (``min_new_tokens = max_new_tokens``), so that the
  per-token costs compare;
- ``greedy``: our search with one child per node, views one by one (``seq``) or in lock-step
  (``batch``). A random model's greedy answer has whatever length its weights give: the tiny one's
  is a 30 x 30 grid (931 tokens, the grammar stops it there: the longest answer there is), the
  small one's about 32 tokens (so prefill dominates its time per task);
- ``dfs``: the threshold search at a very low threshold, stopped by a time limit: a random model's
  answers are all improbable, so this measures the cost of a node (one token fed, with the
  backtracking: cache crops one by one, mask updates and column drops in lock-step), not how many
  nodes a trained model would need;
- ``prefill``: one forward pass of each view's prompt, which every search method pays once per view
  (the batched ones in one padded batch); "tokens/s without prefill" subtracts it (for the batched
  rows this is approximate);
- ``score``: ``answer_logprobs`` of four candidates (the true answer and three near misses) under
  every view (prompt run once, its cache expanded across the candidates), against one full forward
  pass of prompt + answer per candidate.

    OMP_NUM_THREADS=1 python bench/search_speed.py --models tiny small --tasks 2 --views 4
    python bench/search_speed.py --model DIR --dtype bf16 --tasks 1 --views 16 --max-new 64 --out s.json  # GPU

``--model DIR`` measures a prepared model directory (e.g. the Qwen3-4B-shaped one that
``bench/ttt_speed.py --shape qwen3-4b --keep-model DIR`` builds) instead of the random tiny/small
ones. ``--max-new N`` caps every answer at N tokens (a random 4B model's greedy answer is 931
tokens; ``generate`` of 16 such views one by one takes minutes): ``generate`` then makes N tokens a
view. On a GPU every timed call ends with a device sync.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from arcttt.augment import Augmentation, view_augmentations
from arcttt.data import load_split
from arcttt.formats import answer_ids
from arcttt.model import LoraConfig, ModelConfig, load_model, make_tiny_model
from arcttt.search import SearchStats, search_prompts
from arcttt.select import answer_logprobs
from arcttt.tree import MAX_ANSWER_TOKENS
from arcttt.ttt_data import test_prompts

MODELS = {"tiny": dict(hidden=64, layers=2, heads=4, intermediate=128),
          "small": dict(hidden=256, layers=4, heads=8, intermediate=512)}


def pick_tasks(n: int, min_cells: int, max_cells: int):
    """The first ``n`` ARC-AGI-1 eval tasks (by id) with ``min_cells``-``max_cells`` grid cells (the
    split's median prompt is about 1,100 tokens)."""
    tasks = sorted(load_split("arc-agi-1-eval"), key=lambda t: t.id)
    return [t for t in tasks if min_cells <= t.cells() <= max_cells][:n]


def timed(fn, repeat: int = 1):
    """Result and best time of ``repeat`` calls (the machine is shared: the best is the least disturbed)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench_model(name: str, tasks, n_views: int, threshold: float, dfs_seconds: float, root: Path,
                repeat: int, model_dir: Path | None = None, dtype: str = "fp32",
                max_new: int = MAX_ANSWER_TOKENS) -> list[dict]:
    session = load_model(model_dir or make_tiny_model(root / name, **MODELS[name]),
                         ModelConfig(backend="hf", dtype=dtype, lora=LoraConfig(rank=8, alpha=16)))
    model, tm, device = session.model, session.token_map, session.device
    session.eval_mode()
    search_prompts(model, [test_prompts(tasks[0], 0, tm, [Augmentation()], 8192)[0].prompt], tm, threshold=1.0,
                   greedy=True, max_new_tokens=16)  # warm-up
    rows = {k: {"seconds": 0.0, "tokens": 0, "forwards": 0, "completions": 0} for k in
            ("prefill", "generate", "greedy seq", "greedy batch", "dfs seq", "dfs batch", "score cached", "score full")}

    def add(key, seconds, tokens, forwards=0, completions=0):
        r = rows[key]
        r["seconds"] += seconds
        r["tokens"] += tokens
        r["forwards"] += forwards
        r["completions"] += completions

    for task in tasks:
        augs = view_augmentations(task, 0, n_views, keep_background=True, seed=0)
        prompts = [v.prompt for v in test_prompts(task, 0, tm, augs, 8192)]
        for p in prompts:  # the prompts alone: what every method below pays before its first answer token
            with torch.inference_mode():
                _, s = timed(lambda: model(input_ids=torch.tensor(p, device=device)[None], use_cache=True,
                                           logits_to_keep=1), repeat)
            add("prefill", s, len(p), 1)
        for key, batch in (("greedy seq", False), ("greedy batch", True)):
            (greedy, st), s = timed(lambda: _search(model, prompts, tm, threshold=1.0, greedy=True, batch=batch,
                                                    max_new_tokens=max_new), repeat)
            add(key, s, st.tokens_fed, st.forwards, st.completions)
        lengths = [len(c[0].ids) if c else max_new for c in greedy]  # capped: max_new tokens
        with torch.inference_mode():
            for p, n in zip(prompts, lengths):
                ids = torch.tensor(p, device=device)[None]
                _, s = timed(lambda: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                    max_new_tokens=n, min_new_tokens=n, pad_token_id=tm.pad), repeat)
                add("generate", s, n, n)
        for key, batch in (("dfs seq", False), ("dfs batch", True)):
            (_, st), s = timed(lambda: _search(model, prompts, tm, threshold=threshold, batch=batch,
                                               deadline=time.time() + dfs_seconds))
            add(key, s, st.tokens_fed, st.forwards, st.completions)
        # scoring: the truth and three near misses (one cell recoloured), as a search would find
        truth = task.test_outputs[0]
        grids = [truth] + [_recoloured(truth, k) for k in range(3)]
        for aug, p in zip(augs, prompts):
            answers = [answer_ids(aug.grid(g), tm) for g in grids]
            n_tok = sum(len(a) for a in answers)
            _, s = timed(lambda: answer_logprobs(model, p, answers, batch_size=8), repeat)
            add("score cached", s, n_tok, 2)
            _, s = timed(lambda: [_full_logprob(model, p, a, device) for a in answers], repeat)
            add("score full", s, n_tok, len(answers))
    out = []
    prefill = rows["prefill"]["seconds"]
    for key, r in rows.items():
        decode = r["seconds"] - prefill if key in ("generate", "greedy seq", "greedy batch", "dfs seq", "dfs batch") else None
        out.append({"model": name, "method": key, "s_per_task": r["seconds"] / len(tasks),
                    "tokens_per_s": r["tokens"] / r["seconds"] if r["seconds"] else 0.0,
                    "decode_tokens_per_s": r["tokens"] / decode if decode and decode > 0 else None,
                    "forwards_per_task": r["forwards"] / len(tasks), "completions": r["completions"]})
    return out


def _search(model, prompts, tm, **kw):
    stats = SearchStats()
    return search_prompts(model, prompts, tm, stats=stats, **kw), stats


def _recoloured(grid: np.ndarray, k: int) -> np.ndarray:
    g = grid.copy()
    r, c = divmod(k, g.shape[1])
    g[r % g.shape[0], c] = (g[r % g.shape[0], c] + 1) % 10
    return g


def _full_logprob(model, prompt: np.ndarray, answer: np.ndarray, device="cpu") -> float:
    """The same likelihood without the cache: prompt + answer in one forward pass."""
    with torch.inference_mode():
        ids = torch.tensor(np.concatenate([prompt, answer]), device=device)[None]
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]
        target = torch.tensor(answer, device=device)[:, None]
        return float(torch.log_softmax(logits.float(), -1).gather(-1, target).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "small"], choices=sorted(MODELS))
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2, help="time each call this many times, keep the best")
    ap.add_argument("--threshold", type=float, default=1e-6, help="of the dfs rows")
    ap.add_argument("--dfs-seconds", type=float, default=3.0, help="time limit of a dfs call (all views of a task)")
    ap.add_argument("--cells", type=int, nargs=2, default=[700, 1500], help="only tasks with this many grid cells (min max)")
    ap.add_argument("--model", type=Path, help="a prepared model directory (instead of --models)")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="fp32", help="with --model")
    ap.add_argument("--max-new", type=int, default=MAX_ANSWER_TOKENS, help="cap on every answer's tokens")
    ap.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.manual_seed(0)
    tasks = pick_tasks(args.tasks, *args.cells)
    print(f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
          f"load average {os.getloadavg()[0]:.1f}; tasks {[t.id for t in tasks]}; {args.views} views; "
          f"dfs threshold {args.threshold}, {args.dfs_seconds} s a task")
    print("| model | method | s per task | tokens/s | tokens/s without prefill | forwards per task | completions |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    names = [args.model.name] if args.model else args.models
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for r in bench_model(name, tasks, args.views, args.threshold, args.dfs_seconds, Path(tmp), args.repeat,
                                 model_dir=args.model, dtype=args.dtype if args.model else "fp32",
                                 max_new=args.max_new):
                rows.append(r)
                decode = f"{r['decode_tokens_per_s']:.0f}" if r["decode_tokens_per_s"] else "-"
                print(f"| {r['model']} | {r['method']} | {r['s_per_task']:.2f} | {r['tokens_per_s']:.0f} | {decode} | "
                      f"{r['forwards_per_task']:.0f} | {r['completions']} |", flush=True)
    if args.out:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
        args.out.write_text(json.dumps({"device": device, "tasks": [t.id for t in tasks], "views": args.views,
                                        "max_new": args.max_new, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
