"""How many held-out test outputs a model solves, with and without test-time training: the
pipeline's own answer (``solve_task``: TTT data -> reset + train -> search -> select, both attempts)
at several TTT step counts (MIT's curve in miniature), beside greedy decoding of the plain prompt.

Held-out sets, fixed before the model was trained (``arcttt.synthetic.HELD_OUT``, weights/README.md):
  trained   (a) new instances (seed 101) of the families the model was trained on
  unseen    (b) families it never saw: transposes (a symmetry class that no training augmentation
            reaches) and a flip or rotation followed by a colour map (seed 102)
  arc1      (c) ARC-AGI-1 evaluation tasks every test sequence of which (all train pairs, the test
            input and its output, compact format) fits ``--max-len`` tokens, first by id
  arc2      (d) the README job's tasks: the first 10 ARC-AGI-2 evaluation tasks by id

Rows: ``greedy, no TTT`` (the fine-tuned model alone, one greedy decode of the plain prompt) and
``pipeline, TTT N`` for each N of ``--ttt-steps`` (the run's preset, ``cpu-tiny`` by default, with
``ttt.steps=N``; N=0 is search + selection without TTT). A test output counts when either attempt
equals the truth; the pipeline's attempts include its cheap fallback guesses where it found fewer than
two candidates, as a real run's do. The 95 % interval is Wilson's, over test outputs.

    PYTHONPATH=. python bench/accuracy.py --model weights/arcttt-tiny-syn --sets trained,unseen --tasks 32
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from arcttt.augment import view_augmentations
from arcttt.budget import TaskDeadlines
from arcttt.config import load_config
from arcttt.data import load_split
from arcttt.formats import encode
from arcttt.model import load_model
from arcttt.solve import solve_task
from arcttt.submission import fallback_attempts
from arcttt.search import SearchConfig, search_session
from arcttt.synthetic import held_out
from arcttt.ttt_data import max_answer_len, test_prompts

SETS = ("trained", "unseen", "arc1", "arc2")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def solved(grids: list, truth: np.ndarray) -> bool:
    return any(np.asarray(g).shape == truth.shape and np.array_equal(np.asarray(g), truth) for g in grids[:2])


def arc_subset(split: str, n: int, max_len: int, tm) -> list:
    fits = [t for t in load_split(split)
            if all(len(encode(t.train, t.test_inputs[k], tm, t.test_outputs[k])) <= max_len for k in range(t.n_test))]
    return fits[:n]


def task_set(name: str, n: int, max_len: int, tm) -> list:
    if name in ("trained", "unseen"):
        return held_out(name, n)
    if name == "arc1":
        return arc_subset("arc-agi-1-eval", n, max_len, tm)
    if name == "arc2":
        return load_split("arc-agi-2-eval")[:10]
    raise SystemExit(f"unknown set {name!r}; one of {', '.join(SETS)}")


def greedy(session, task, i: int, max_len: int) -> list:
    augs = view_augmentations(task, i, 1, keep_background=True, seed=0)
    views = test_prompts(task, i, session.token_map, augs, max_len + max_answer_len(session.token_map))
    return [c.grid for c in search_session(session, task, i, views, SearchConfig(n_augmentations=1, greedy=True))]


def evaluate_task(session, task, cfg, steps: list[int], max_len: int) -> dict[str, list[bool]]:
    """Every row's verdict for each test output of ``task``."""
    session.reset()
    try:
        out = {"greedy, no TTT": [solved(greedy(session, task, i, max_len), task.test_outputs[i])
                                  for i in range(task.n_test)]}
    except ValueError:  # a test input longer than the prompts may be: unsolved, as in a run
        out = {"greedy, no TTT": [False] * task.n_test}
    for n in steps:
        run = replace(cfg, ttt=replace(cfg.ttt, steps=n))
        far = time.time() + 1e6
        try:
            result = solve_task(session, task, run, TaskDeadlines(time.time(), far, far, far))
            got = [solved(t.attempts, task.test_outputs[i]) for i, t in enumerate(result.tests)]
        except ValueError:  # the run records the task failed and answers its cheap guesses
            got = [solved(a, t) for a, t in zip(fallback_attempts(task), task.test_outputs)]
        out[f"pipeline, TTT {n}"] = got
    return out


def table(name: str, verdicts: dict[str, list[bool]]) -> list[str]:
    lines = [f"| {name} | row | solved | score | 95 % interval |", "| --- | --- | --- | --- | --- |"]
    for row, got in verdicts.items():
        k, n = sum(got), len(got)
        lo, hi = wilson(k, n)
        lines.append(f"| | {row} | {k}/{n} | {k / max(n, 1):.3f} | {lo:.3f}-{hi:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sets", default="trained,unseen,arc1,arc2", help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--tasks", type=int, default=32, help="tasks of each set (arc2: always its 10)")
    parser.add_argument("--max-len", type=int, default=512, help="the ARC-AGI-1 subset's token limit")
    parser.add_argument("--ttt-steps", default="0,8,32,128", help="comma-separated TTT step counts")
    parser.add_argument("--config", default="cpu-tiny", help="the run preset (or file) the pipeline rows use")
    parser.add_argument("--set", action="append", default=[], help="override a config field, e.g. ttt.lr=1e-3")
    parser.add_argument("--out", type=Path, default=None, help="JSON file of every verdict (rewritten after each task)")
    args = parser.parse_args()

    cfg = load_config(args.config, args.set)
    cfg.budget = replace(cfg.budget, max_task_s=1e6)
    session = load_model(args.model, cfg.model)
    steps = [int(s) for s in args.ttt_steps.split(",") if s]
    results, lines, start = {}, [], time.time()
    for name in args.sets.split(","):
        tasks = task_set(name, args.tasks, args.max_len, session.token_map)
        verdicts: dict[str, list[bool]] = {}
        results[name] = {"tasks": [], "verdicts": verdicts}
        for n, task in enumerate(tasks):
            for row, got in evaluate_task(session, task, cfg, steps, cfg.data.max_len).items():
                verdicts.setdefault(row, []).extend(got)
            results[name]["tasks"].append(task.id)
            print(f"{name} {n + 1}/{len(tasks)} {task.id}: "
                  f"{' '.join(f'{sum(v)}' for v in verdicts.values())} ({time.time() - start:.0f} s)", flush=True)
            if args.out:  # after every task, so that a run cut short still leaves what it measured
                args.out.write_text(json.dumps({"model": str(args.model), "seconds": time.time() - start,
                                                "args": {k: str(v) for k, v in vars(args).items()},
                                                "config": cfg.to_json(), "results": results}, indent=1))
        lines += table(name, verdicts) + [""]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
