"""The draft-verified search (issue #22) against plain search: model calls, answer tokens fed and
wall time per test input, with the candidates checked equal row by row.

Models:
- ``oracle``: the test stand-in that knows the answers (tests/oracle.py), with noise (a quarter of
  the views prefer a near miss), on ARC-AGI-1 evaluation tasks; its cache is a tuple, so its views
  run one by one;
- ``trained``: a small trained model (``--trained``, default weights/arcttt-tiny-syn), no TTT, on
  held-out synthetic tasks (seed 1), where it gives real answers;
- ``random``: a random ``make_tiny_model`` whose head is scaled up (``--sharpen``) so that it is sure
  of arbitrary answers: every view finds its own, so drafts from other views (and the test input)
  are wrong: the worst case, where only the overhead shows.

Each test input is searched with the same views and config, plain (``draft=False``) and with drafts,
one view at a time (``seq``) and in lock-step (``batch``; not the oracle's), ``--repeat`` times
interleaved, keeping the best time. Candidates must be the same grids, found by the same views,
with log-probabilities within 1e-4 (a multi-token forward rounds differently), or the bench fails.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/draft_search.py --tasks 8 --views 8 --out d.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from arcttt.augment import view_augmentations
from arcttt.data import load_split
from arcttt.formats import compact_token_map
from arcttt.model import ModelConfig, load_model, make_tiny_model
from arcttt.search import SearchConfig, SearchStats, grid_key, search_test_input
from arcttt.synthetic import generate
from arcttt.ttt_data import test_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def candidates_key(cands) -> list:
    return [(grid_key(c.grid), [k for k, _ in c.found]) for c in cands]


def same(a, b, tol: float = 1e-4) -> bool:
    return candidates_key(a) == candidates_key(b) and all(
        abs(x - y) <= tol for ca, cb in zip(a, b) for (_, x), (_, y) in zip(ca.found, cb.found))


def run(model, tm, tasks, cfg: SearchConfig, modes: list[str], repeat: int, max_len: int) -> list[dict]:
    rows = {(m, d): {"calls": 0, "tokens": 0, "draft_tokens": 0, "verified": 0, "seconds": 0.0, "candidates": 0,
                     "inputs": 0} for m in modes for d in (False, True)}
    mismatches = []
    for task in tasks:
        for i in range(task.n_test):
            augs = view_augmentations(task, i, cfg.n_augmentations, keep_background=cfg.keep_background, seed=cfg.seed)
            views = test_prompts(task, i, tm, augs, max_len)
            for mode in modes:
                got, best = {}, {False: float("inf"), True: float("inf")}
                for _ in range(repeat):
                    for draft in (False, True):
                        stats = SearchStats()
                        c = replace(cfg, batch_views=mode == "batch", draft=draft)
                        t0 = time.perf_counter()
                        got[draft] = (search_test_input(model, task, i, tm, views, c, stats=stats), stats)
                        best[draft] = min(best[draft], time.perf_counter() - t0)
                if not same(got[False][0], got[True][0]):
                    mismatches.append(f"{task.id}:{i} {mode}")
                for draft in (False, True):
                    cands, st = got[draft]
                    r = rows[(mode, draft)]
                    r["calls"] += st.forwards
                    r["tokens"] += st.tokens_fed
                    r["draft_tokens"] += st.draft_fed
                    r["verified"] += st.verified
                    r["seconds"] += best[draft]
                    r["candidates"] += len(cands)
                    r["inputs"] += 1
    if mismatches:
        raise SystemExit(f"candidates differ with drafts: {mismatches}")
    return [{"mode": m, "draft": d, **r} for (m, d), r in rows.items()]


def adversarial(model, tm, tasks, cfg: SearchConfig, repeat: int, max_len: int) -> list[dict]:
    """The worst case on one view at a time: each view's draft is its own greedy answer with its
    second token changed, so the search takes the draft's first token, and the chunk fed with it is
    wrong from the next one on (a ``DRAFT_CHUNK`` of tokens wasted a view)."""
    from arcttt.search import greedy, search_prompts

    rows = {d: {"calls": 0, "tokens": 0, "draft_tokens": 0, "verified": 0, "seconds": 0.0, "candidates": 0,
                "inputs": 0} for d in (False, True)}
    for task in tasks:
        augs = view_augmentations(task, 0, cfg.n_augmentations, keep_background=cfg.keep_background, seed=cfg.seed)
        prompts = [v.prompt for v in test_prompts(task, 0, tm, augs, max_len)]
        drafts = []
        for p in prompts:
            g = greedy(model, p, tm)
            ids = list(g.ids) if g is not None and len(g.ids) > 2 else None
            if ids:
                ids[1] = tm.digits[(tm.digits.index(ids[1]) + 1) % 10] if ids[1] in tm.digits else tm.digits[0]
            drafts.append([ids] if ids else None)
        got, best = {}, {False: float("inf"), True: float("inf")}
        for _ in range(repeat):
            for d in (False, True):
                stats = SearchStats()
                t0 = time.perf_counter()
                got[d] = (search_prompts(model, prompts, tm, threshold=cfg.threshold, batch=False, stats=stats,
                                         drafts=drafts if d else None), stats)
                best[d] = min(best[d], time.perf_counter() - t0)
        if [[(c.ids, round(c.logprob, 4)) for c in v] for v in got[False][0]] != \
                [[(c.ids, round(c.logprob, 4)) for c in v] for v in got[True][0]]:
            raise SystemExit(f"completions differ with adversarial drafts: {task.id}")
        for d in (False, True):
            comps, st = got[d]
            r = rows[d]
            for k, x in (("calls", st.forwards), ("tokens", st.tokens_fed), ("draft_tokens", st.draft_fed),
                         ("verified", st.verified), ("seconds", best[d]), ("candidates", sum(map(len, comps))),
                         ("inputs", 1)):
                r[k] += x
    return [{"mode": "seq, adversarial drafts", "draft": d, **r} for d, r in rows.items()]


def sharpened_random(root: Path, sharpen: float):
    """A random model sure of arbitrary short answers (as tests/test_search.py's ``tiny_llama``): its
    head's weights scaled, and a bias on its logits against every token but the answer symbols, for
    the newline and for the end."""
    session = load_model(make_tiny_model(root / "random", hidden=64, layers=2, heads=4, intermediate=128),
                         ModelConfig(backend="hf", dtype="fp32"))
    tm, head = session.token_map, session.model.get_output_embeddings()
    bias = torch.full((head.weight.shape[0],), -8.0)
    bias[list(tm.digits)] = 0.0
    bias[tm.newline], bias[tm.end[0]] = 0.5, 2.0
    with torch.no_grad():
        head.weight.mul_(sharpen)
    head.register_forward_hook(lambda module, args, out: out + bias.to(out))
    return session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["oracle", "trained", "random"])
    ap.add_argument("--trained", type=Path, default=Path("weights/arcttt-tiny-syn"))
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--sharpen", type=float, default=60.0, help="random model: its head's weights times this")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--cells", type=int, nargs=2, default=[0, 600], help="ARC tasks with this many grid cells")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = SearchConfig(n_augmentations=args.views, threshold=args.threshold)
    arc = [t for t in sorted(load_split("arc-agi-1-eval"), key=lambda t: t.id)
           if args.cells[0] <= t.cells() <= args.cells[1] and t.test_outputs is not None][:args.tasks]
    syn = generate(args.tasks, seed=1)
    print(f"torch threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
          f"load average {os.getloadavg()[0]:.1f}; {args.views} views, threshold {args.threshold}; best of {args.repeat}")
    print("| model | views | search | calls / input | tokens fed / input | draft tokens / input | nodes verified / input "
          "| s / input | candidates |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "oracle":
                from oracle import Oracle

                tm = compact_token_map()
                model, tasks, modes = Oracle(arc, tm, 16, noise=0.25, truth_p_noisy=0.3), arc, ["seq"]
            elif name == "trained":
                session = load_model(args.trained, ModelConfig(backend="hf", dtype="fp32"))
                session.eval_mode()
                model, tm, tasks, modes = session.model, session.token_map, syn, ["seq", "batch"]
            else:
                session = sharpened_random(Path(tmp), args.sharpen)
                session.eval_mode()
                model, tm, tasks, modes = session.model, session.token_map, arc, ["seq", "batch"]
            rows = run(model, tm, tasks, cfg, modes, args.repeat, args.max_len)
            if name == "random":
                rows += adversarial(model, tm, tasks, cfg, args.repeat, args.max_len)
                modes = modes + ["seq, adversarial drafts"]
            for r in rows:
                r["model"] = name
                out.append(r)
                n = r["inputs"]
                print(f"| {name} | {r['mode']} | {'draft' if r['draft'] else 'plain'} | {r['calls'] / n:.1f} | "
                      f"{r['tokens'] / n:.1f} | {r['draft_tokens'] / n:.1f} | {r['verified'] / n:.1f} | "
                      f"{r['seconds'] / n:.3f} | {r['candidates']} |", flush=True)
            for mode in modes:
                p, d = (next(r for r in out if r["model"] == name and r["mode"] == mode and r["draft"] == x)
                        for x in (False, True))
                print(f"| {name} | {mode} | ratio plain / draft | {p['calls'] / max(d['calls'], 1):.2f}x | "
                      f"{p['tokens'] / max(d['tokens'], 1):.2f}x | | | {p['seconds'] / d['seconds']:.3f}x | same |",
                      flush=True)
    if args.out:
        args.out.write_text(json.dumps({"device": f"cpu x{torch.get_num_threads()}", "args": vars(args) | {
            "trained": str(args.trained), "out": str(args.out)}, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
