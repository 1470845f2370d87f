"""How often selection recovers the true answer when views disagree, per selection method.

The stand-in of tests/oracle.py knows each task's answer. In a *clean* view it gives the true
answer probability 1 - w and a plausible wrong one (the truth with one cell recoloured, the same
wrong grid in the task's frame in every view) probability w; in a *noisy* view (a fraction f of the
views, chosen by a hash of the prompt) the wrong one comes first and the truth gets only p. Both
answers stay above the search threshold, so every method sees both candidates; what differs is how
they are ranked: ``poe`` (sum of logprobs over the scoring views + log hits), ``nvarc`` (hits +
mean logprob), ``vote`` (hierarchical votes, then the poe score). For each (f, method) it runs
``solve_task`` (search under 8 views, scoring under 8 others, no TTT) on the oracle's tasks (the
first 10 ARC-AGI-2 evaluation tasks whose test outputs use only colours of their test input) and
counts the test outputs whose attempt 1, or either attempt, is the truth.

    python bench/selection_noise.py [--format nvarc] [--p 0.3] [--w 0.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracle import oracle_session  # noqa: E402
from test_oracle import TASKS  # noqa: E402

from arcttt.budget import TaskDeadlines  # noqa: E402
from arcttt.config import load_config  # noqa: E402
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer  # noqa: E402
from arcttt.solve import solve_task  # noqa: E402
from arcttt.tokenizer import as_text_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--format", default="nvarc")
    ap.add_argument("--p", type=float, default=0.3, help="the truth's probability in a noisy view")
    ap.add_argument("--w", type=float, default=0.2, help="the wrong answer's probability in a clean view")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.625, 0.75, 1.0])
    ap.add_argument("--views", type=int, default=8)
    args = ap.parse_args()
    tok = build_tokenizer(args.format)
    tm = token_map_from_tokenizer(args.format, tok)
    vocab = len(as_text_tokenizer(tok).vocab())
    n_outputs = sum(t.n_test for t in TASKS)
    print(f"format {args.format}, {len(TASKS)} tasks, {n_outputs} test outputs, {args.views} search views + "
          f"{args.views} scoring views; truth p={args.p} in noisy views, wrong w={args.w} in clean ones")
    print(f"{'noisy views':>11}  {'method':>6}  {'attempt 1':>9}  {'either':>6}  {'seconds':>7}")
    for f in args.noise:
        for method in ("poe", "nvarc", "vote"):
            cfg = load_config("cpu-smoke", ["ttt.steps=0", "search.greedy=false", "search.threshold=0.1",
                                            f"search.n_augmentations={args.views}", f"select.n_views={args.views}",
                                            f"select.method={method}", "select.hits_weight=1.0"])
            session = oracle_session(TASKS, tm, vocab, noise=f, truth_p_noisy=args.p, wrong_p_clean=args.w)
            first = either = 0
            t0 = time.time()
            for task in TASKS:
                now = time.time()
                result = solve_task(session, task, cfg, TaskDeadlines(now, now, now + 600, now + 1200))
                for test, truth in zip(result.tests, task.test_outputs):
                    hits = [np.array_equal(np.array(a), truth) for a in test.attempts]
                    first += hits[0]
                    either += any(hits)
            print(f"{f:>11.3f}  {method:>6}  {first:>4}/{n_outputs:<4}  {either:>3}/{n_outputs:<3}  "
                  f"{time.time() - t0:>7.1f}")


if __name__ == "__main__":
    main()
