"""Decode cost of the answer search on the preallocated cache against transformers' ``DynamicCache``,
and the forwards that sharing the search's prompt caches with the scoring saves.

Part ``decode``: ``--views`` random prompts of ``--prompt`` tokens (the compact format's digits and
newlines, ending with the output marker) on a random ``make_tiny_model`` model loaded by
``load_model`` (hf, fp32, LoRA attached), searched in lock-step (one batch) and one by one:

- ``greedy``: ``--new`` answer tokens a view (the grammar keeps a random model's answer going): the
  cost per step (one token for every view in the batch) and per token;
- ``dfs``: the threshold search at 1e-9 (a random model's answers are all unlikely: it backtracks
  all the time, a crop before nearly every token), stopped about ``--dfs-seconds`` after its prefill.

Times are the search call's, less the time inside its prefill calls (timed by a wrapper in the same
run): the decode steps with everything the search does between them.

Each row runs with ``preallocate=True`` (:class:`arcttt.kvcache.SlabCache`) and ``False`` (the
model's own ``DynamicCache``: ``torch.cat`` of every layer at every token). Greedy: best of ``--repeat``.

Part ``forwards``: one test input of a real task (the default config's 8 search views, 8 scoring
views, the identity among both), searched and scored as ``solve.answer_test_input`` does, with
and without :class:`arcttt.kvcache.PromptCaches`: model calls, prefills and prompt tokens prefilled.

    OMP_NUM_THREADS=1 python bench/kv_cache.py --prompt 4096 --views 8 --new 32
    python bench/kv_cache.py --model DIR --dtype bf16 --prompt 4096 --views 8 --repeat 1 --out k.json  # GPU
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

from arcttt.model import LoraConfig, ModelConfig, load_model, make_tiny_model
from arcttt.search import SearchStats, search_prompts


class Counting(torch.nn.Module):
    """Counts the wrapped model's calls, its prefills (no cache or an empty one), their tokens and
    the time spent in them."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = self.prefills = self.prefill_tokens = 0
        self.prefill_s = 0.0

    def forward(self, **kw):
        past = kw.get("past_key_values")
        self.calls += 1
        if past is not None and past.get_seq_length() > 0:
            return self.inner(**kw)
        t0 = time.perf_counter()
        out = self.inner(**kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the prefill's kernels, not the next step's download, pay for it
        self.prefills += 1
        self.prefill_tokens += int(kw["input_ids"].numel())
        self.prefill_s += time.perf_counter() - t0
        return out


def random_prompts(tm, n: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` prompts of ``length`` tokens: rows of 30 random digits and a newline, then the output marker."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        body = []
        while len(body) < length - len(tm.output):
            body += [tm.digits[d] for d in rng.integers(0, 10, 30)] + [tm.newline]
        out.append(np.asarray(body[:length - len(tm.output)] + list(tm.output), dtype=np.int64))
    return out


def decode_rows(session, prompt_len: int, n_views: int, new: int, dfs_seconds: float, repeat: int) -> list[dict]:
    """The search's time outside its prefill calls (the prefills timed inside the same run), best of
    ``repeat``: what the cache changes."""
    tm = session.token_map
    prompts = random_prompts(tm, n_views, prompt_len)
    rows = []
    for batch in (True, False):
        layout = "lock-step" if batch else "one by one"
        for pre in (False, True):
            cache = "SlabCache" if pre else "DynamicCache"
            best = None
            for _ in range(repeat):
                model, stats = Counting(session.model), SearchStats()
                t0 = time.perf_counter()
                search_prompts(model, prompts, tm, threshold=1.0, greedy=True, batch=batch, max_new_tokens=new + 1,
                               preallocate=pre, stats=stats)
                decode = time.perf_counter() - t0 - model.prefill_s
                if best is None or decode < best["decode_s"]:
                    steps = model.calls - model.prefills
                    best = {"search": f"greedy {layout}", "cache": cache, "prefill_s": model.prefill_s,
                            "decode_s": decode, "steps": steps, "tokens": stats.tokens_fed,
                            "ms_per_step": 1e3 * decode / steps, "ms_per_token": 1e3 * decode / stats.tokens_fed}
            rows.append(best)
            model, stats = Counting(session.model), SearchStats()
            t0 = time.perf_counter()
            search_prompts(model, prompts, tm, threshold=1e-9, batch=batch, preallocate=pre, stats=stats,
                           deadline=time.time() + best["prefill_s"] + dfs_seconds)
            decode, steps = time.perf_counter() - t0 - model.prefill_s, model.calls - model.prefills
            rows.append({"search": f"dfs {layout}", "cache": cache, "decode_s": decode, "tokens": stats.tokens_fed,
                         "steps": steps, "ms_per_step": 1e3 * decode / steps,
                         "ms_per_token": 1e3 * decode / stats.tokens_fed})
            print(json.dumps(rows[-2]), "\n", json.dumps(rows[-1]), flush=True)
    return rows


def forward_rows(session) -> list[dict]:
    from arcttt.config import RunConfig
    from arcttt.data import load_split
    from arcttt.kvcache import PromptCaches
    from arcttt.augment import view_augmentations
    from arcttt.search import Candidate, search_test_input
    from arcttt.select import score_candidates
    from arcttt.ttt_data import test_prompts

    cfg = RunConfig()
    task = sorted(load_split("arc-agi-1-eval"), key=lambda t: t.id)[0]
    tm = session.token_map
    search_views = test_prompts(task, 0, tm, view_augmentations(task, 0, cfg.search.n_augmentations,
                                                                  keep_background=True, seed=cfg.search.seed), 8192)
    score_views = test_prompts(task, 0, tm, view_augmentations(task, 0, cfg.select.n_views,
                                                                 keep_background=True, seed=cfg.select.seed), 8192)
    rows = []
    for share in (False, True):
        model = Counting(session.model)
        keep = PromptCaches([v.prompt for v in score_views], cfg.select.max_cache_bytes) if share else None
        found = search_test_input(model, task, 0, tm, search_views, cfg.search, keep=keep)
        after_search = (model.calls, model.prefills, model.prefill_tokens)
        # a random model finds nothing likely: score the truth and three near misses instead
        truth = task.test_outputs[0]
        cands = found or [Candidate(g, [("id", -1.0)]) for g in [truth] + [_recoloured(truth, k) for k in range(3)]]
        scored = score_candidates(model, task, 0, cands, score_views, tm, cfg.select, prompt_caches=keep)
        rows.append({"task": task.id, "shared": share, "candidates": len(cands),
                     "search_calls": after_search[0], "search_prefills": after_search[1],
                     "scoring_calls": model.calls - after_search[0],
                     "scoring_prefills": model.prefills - after_search[1],
                     "prefill_tokens": model.prefill_tokens, "reused": keep.reused if keep else 0,
                     "scores": [round(s.score, 4) for s in scored]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _recoloured(grid: np.ndarray, k: int) -> np.ndarray:
    g = grid.copy()
    r, c = divmod(k, g.shape[1])
    g[r % g.shape[0], c] = (g[r % g.shape[0], c] + 1) % 10
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", default=["decode", "forwards"], choices=["decode", "forwards"])
    ap.add_argument("--prompt", type=int, default=4096, help="prompt tokens of each view")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--new", type=int, default=32, help="greedy answer tokens a view")
    ap.add_argument("--dfs-seconds", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--model", type=Path, help="a prepared model directory (e.g. gpu_check.sh's Qwen3-4B shape) "
                    "instead of a random one of --hidden/--layers/--heads")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"], default="fp32", help="with --model")
    ap.add_argument("--out", type=Path, help="also write the rows to this JSON file")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or make_tiny_model(Path(tmp) / "m", hidden=args.hidden, layers=args.layers, heads=args.heads,
                                             intermediate=2 * args.hidden)
        session = load_model(path, ModelConfig(backend="hf", dtype=args.dtype if args.model else "fp32",
                                               lora=LoraConfig(rank=8, alpha=16)))
        session.eval_mode()
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
        out = {"device": device, "args": {k: str(v) for k, v in vars(args).items()}}
        if "decode" in args.parts:
            out["decode"] = decode_rows(session, args.prompt, args.views, args.new, args.dfs_seconds, args.repeat)
        if "forwards" in args.parts:
            out["forwards"] = forward_rows(session)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
