"""MIT's ablation in miniature: how many held-out test outputs a model solves with each stage of the
pipeline switched on in turn, on held-out synthetic tasks and on ARC-AGI-1 evaluation tasks.

Rows (each adds one thing to the row above, except the last, an alternative to the two above it):
  1. no TTT + greedy            the fine-tuned model alone, greedy decoding of the plain prompt
  2. TTT + greedy               after per-task test-time training
  3. TTT + augmented search     depth-first search under N augmented views; the best view's logprob ranks
  4. + product of experts       candidates ranked by their summed log-likelihood under M views
  5. + voting                   ... plus log(how many search views found the candidate)
  6. hierarchical voting (MIT)  votes per symmetry group instead of 4-5

A test output counts as solved when one of the two best candidates equals the truth; the cheap
fallback guesses of the real pipeline are left out here, so that every row measures the model.
The 95 % interval is Wilson's, over test outputs.

Held-out sets, fixed before the model is evaluated:
  synthetic: ``synthetic:N:1`` (seed 1; training used seed 0 and excluded ``synthetic:500:1``);
  ARC-AGI-1 evaluation: the tasks all of whose test sequences (every train pair, the test input and
  its output, compact format) fit in ``--max-len`` tokens (the model's training length), first by id.

    PYTHONPATH=. python bench/accuracy.py --model weights/arcttt-tiny-syn --synthetic 40 --arc 40
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from arcttt.data import load_split
from arcttt.formats import encode
from arcttt.model import LoraConfig, ModelConfig, load_model
from arcttt.search import SearchConfig, search_session, view_augmentations
from arcttt.select import SelectConfig, rank, score_session
from arcttt.synthetic import generate
from arcttt.ttt import TTTConfig, train_task
from arcttt.ttt_data import DataConfig, max_answer_len, test_prompts, training_sequences

ROWS = ("no TTT + greedy", "TTT + greedy", "TTT + augmented search", "+ product of experts", "+ voting",
        "hierarchical voting (MIT)")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def solved(grids: list[np.ndarray], truth: np.ndarray) -> bool:
    return any(g.shape == truth.shape and np.array_equal(g, truth) for g in grids[:2])


def views(task, i, tm, n, seed, max_len):
    """Prompts of up to ``max_len`` tokens (room for the largest answer is added on top)."""
    augs = view_augmentations(task, i, n, keep_background=True, seed=seed)
    return test_prompts(task, i, tm, augs, max_len + max_answer_len(tm))


def greedy_grids(session, task, i, max_len) -> list[np.ndarray]:
    cands = search_session(session, task, i, views(task, i, session.token_map, 1, 0, max_len),
                           SearchConfig(n_augmentations=1, greedy=True))
    return [c.grid for c in cands]


def evaluate_task(session, task, args) -> dict:
    """Every row's verdict for each test output of ``task``."""
    tm, out = session.token_map, {row: [] for row in ROWS}
    session.reset()
    for i in range(task.n_test):
        out[ROWS[0]].append(solved(greedy_grids(session, task, i, args.max_len), task.test_outputs[i]))
    data = training_sequences(task, tm, DataConfig(n_sequences=args.ttt_sequences, max_len=args.max_len))
    if data.sequences:
        train_task(session, data.sequences, TTTConfig(steps=args.ttt_steps, lr=args.ttt_lr, batch_tokens=4096,
                                                      optimizer="adamw"))
    search = SearchConfig(n_augmentations=args.views, threshold=args.threshold)
    select = SelectConfig(n_views=args.views, hits_weight=0.0)
    for i in range(task.n_test):
        truth = task.test_outputs[i]
        out[ROWS[1]].append(solved(greedy_grids(session, task, i, args.max_len), truth))
        cands = search_session(session, task, i, views(task, i, tm, args.views, 0, args.max_len), search)
        by_logprob = sorted(cands, key=lambda c: -c.search_logprob)
        out[ROWS[2]].append(solved([c.grid for c in by_logprob], truth))
        scored = score_session(session, task, i, cands, views(task, i, tm, args.views, 1, args.max_len), select)
        out[ROWS[3]].append(solved([s.grid for s in scored], truth))
        for s in scored:  # the same likelihoods plus the search's hits (select's hits_weight = 1)
            s.score += math.log(max(s.candidate.hits, 1))
        out[ROWS[4]].append(solved([s.grid for s in rank(scored, select)], truth))
        out[ROWS[5]].append(solved([s.grid for s in rank(scored, replace(select, method="vote"))], truth))
    return out


def arc_subset(n: int, max_len: int, tm) -> list:
    fits = [t for t in load_split("arc-agi-1-eval")
            if all(len(encode(t.train, t.test_inputs[k], tm, t.test_outputs[k])) <= max_len for k in range(t.n_test))]
    return fits[:n]


def table(name: str, verdicts: dict[str, list[bool]]) -> list[str]:
    lines = [f"| {name} | row | solved | score | 95 % interval |", "| --- | --- | --- | --- | --- |"]
    for row in ROWS:
        k, n = sum(verdicts[row]), len(verdicts[row])
        lo, hi = wilson(k, n)
        lines.append(f"| | {row} | {k}/{n} | {k / max(n, 1):.3f} | {lo:.3f}-{hi:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--synthetic", type=int, default=40, help="held-out synthetic tasks (seed 1)")
    parser.add_argument("--arc", type=int, default=40, help="ARC-AGI-1 evaluation tasks of the subset")
    parser.add_argument("--max-len", type=int, default=1024, help="token limit of the ARC subset and the prompts")
    parser.add_argument("--ttt-steps", type=int, default=8)
    parser.add_argument("--ttt-sequences", type=int, default=16)
    parser.add_argument("--ttt-lr", type=float, default=1e-3)
    parser.add_argument("--views", type=int, default=8, help="augmented views of the search and the scoring")
    parser.add_argument("--threshold", type=float, default=0.1, help="search: keep paths above this probability")
    parser.add_argument("--out", type=Path, default=None, help="JSON file of every verdict")
    args = parser.parse_args()

    session = load_model(args.model, ModelConfig(backend="hf", dtype="fp32", max_seq_len=args.max_len,
                                                 lora=LoraConfig(rank=8, alpha=16)))
    sets = {"synthetic (held out, seed 1)": generate(args.synthetic, seed=1),
            f"ARC-AGI-1 eval (fits {args.max_len} tokens)": arc_subset(args.arc, args.max_len, session.token_map)}
    results, lines, start = {}, [], time.time()
    for name, tasks in sets.items():
        verdicts = {row: [] for row in ROWS}
        results[name] = {"tasks": [], "verdicts": verdicts}
        for n, task in enumerate(tasks):
            for row, got in evaluate_task(session, task, args).items():
                verdicts[row] += got
            results[name]["tasks"].append(task.id)
            print(f"{name} {n + 1}/{len(tasks)} {task.id}: "
                  f"{' '.join(str(sum(v)) for v in verdicts.values())} ({time.time() - start:.0f} s)", flush=True)
            if args.out:  # after every task, so that a run cut short still leaves what it measured
                args.out.write_text(json.dumps({"model": str(args.model), "seconds": time.time() - start,
                                                "args": {k: str(v) for k, v in vars(args).items()},
                                                "results": results}, indent=1))
        lines += table(name, verdicts) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
