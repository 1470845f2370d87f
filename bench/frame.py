"""Which symmetry of the inputs alone makes a held-out task solvable, and does the model's choice
(``pretransform.choose_frame``: the likeliest demonstration outputs) find it?

For each task of the held-out sets (``synthetic.HELD_OUT``: trained and unseen families), every one
of the 8 frames (``--frames all``) or only the identity and the chosen one (``--frames chosen``) is
solved by the pipeline's own ``solve_task`` with the run's preset at ``--ttt-steps`` (frame choice
off inside, since the frame is given). Printed per task: a character per frame solved (1) or not (.)
and the chosen frame; then per set: solved as it is, in the chosen frame, in the best frame (oracle).

    PYTHONPATH=. python bench/frame.py --model weights/arcttt-tiny-syn --tasks 12 --ttt-steps 0 --frames all
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from arcttt.augment import D8_NAMES
from arcttt.budget import TaskDeadlines
from arcttt.config import load_config
from arcttt.model import load_model
from arcttt.solve import solve_task
from arcttt.pretransform import choose_frame, reframe
from arcttt.synthetic import held_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--sets", default="trained,unseen")
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--ttt-steps", type=int, default=0)
    parser.add_argument("--frames", choices=("all", "chosen"), default="chosen")
    parser.add_argument("--config", default="cpu-tiny")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cfg = load_config(args.config, [f"ttt.steps={args.ttt_steps}", "data.input_frame=false"])
    cfg.budget = replace(cfg.budget, max_task_s=1e6)
    session = load_model(args.model, cfg.model)
    rows, start = [], time.time()
    for name in args.sets.split(","):
        for task in held_out(name, args.tasks):
            session.reset()
            frame = choose_frame(session.model, task, session.token_map, cfg.data.max_len)
            solved = {}
            for sym in (D8_NAMES if args.frames == "all" else dict.fromkeys(["id", frame.symmetry])):
                session.reset()
                far = time.time() + 1e6
                result = solve_task(session, reframe(task, sym), cfg, TaskDeadlines(time.time(), far, far, far))
                solved[sym] = any(np.array_equal(np.asarray(a), task.test_outputs[0]) for a in result.tests[0].attempts[:2])
            rows.append({"set": name, "id": task.id, "chosen": frame.symmetry, "solved": solved,
                         "logprobs": frame.logprobs})
            print(f"{name} {task.id}: {''.join('1' if v else '.' for v in solved.values())} chosen {frame.symmetry} "
                  f"({time.time() - start:.0f} s)", flush=True)
            if args.out:
                args.out.write_text(json.dumps({"model": str(args.model), "args": {k: str(v) for k, v in vars(args).items()},
                                                "rows": rows}, indent=1))
    for name in args.sets.split(","):
        got = [r for r in rows if r["set"] == name]
        print(f"{name}: {len(got)} tasks, TTT {args.ttt_steps}: as it is {sum(r['solved']['id'] for r in got)}, "
              f"chosen frame {sum(r['solved'][r['chosen']] for r in got)}"
              + (f", best frame {sum(any(r['solved'].values()) for r in got)}" if args.frames == "all" else ""))


if __name__ == "__main__":
    main()
