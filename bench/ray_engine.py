"""Tasks per hour of the Ray engine against the local engine with the same number of workers, on
the same tasks, same machine, one after the other in one process; and the Ray engine's overhead per
task (actor start, hand-over to the actor, the record's way back to the driver).

    python bench/ray_engine.py [--tasks 8] [--workers 1 2 4]

The tiny random model (``make_tiny_model``) and cpu-smoke with one TTT step and one view, on the
cheapest ARC-AGI-1 eval tasks: the figures measure the engines, not the model. Tasks per hour are
given over the whole run (model loading included) and over the task time (first hand-over to last
record). The local engine starts at most one worker per CPU (``pipeline.worker_count``), Ray as
many actors as asked (``ray.init(num_cpus=N)``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

FAST = ["ttt.steps=1", "data.n_sequences=2", "data.answer_room=evidence", "search.n_augmentations=1",
        "select.n_views=1", "budget.min_task_s=2", "budget.hang_grace_s=300"]


def cheapest(n: int, folder: Path) -> Path:
    from arcttt.budget import expected_cost
    from arcttt.data import load_split, task_to_json

    tasks = sorted(load_split("arc-agi-1-eval"), key=lambda t: (expected_cost(t), t.id))[:n]
    path = folder / "challenges.json"
    path.write_text(json.dumps({t.id: task_to_json(t) for t in tasks}))
    return path


def task_span(run_dir: Path) -> tuple[float, list[float]]:
    """(first hand-over to last record end, hand-over delay of each task) from the run's records."""
    recs = [json.loads(p.read_text()) for p in (run_dir / "tasks").glob("*.json")]
    given = [r["deadlines"]["start"] for r in recs if r.get("deadlines")]
    ends = [r["end"] for r in recs if r.get("end")]
    handover = [r["start"] - r["deadlines"]["start"] for r in recs if r.get("deadlines") and r.get("start")]
    return max(ends) - min(given), handover


def one(engine_name: str, workers: int, challenges: Path, model: Path, root: Path) -> dict:
    from arcttt.runner import run

    engine = None
    if engine_name == "ray":
        import ray

        from arcttt.ray_engine import RayEngine

        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        engine = RayEngine()
    run_dir = root / f"{engine_name}-{workers}"
    start = time.time()
    try:
        summary = run(challenges, model, run_dir / "submission.json", config="cpu-smoke", time_budget=1800,
                      workers=workers, run_dir=run_dir, progress=False, overrides=FAST, engine=engine)
    finally:
        if engine is not None:
            import ray

            ray.shutdown()
    wall = time.time() - start
    span, handover = task_span(run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    row = {"engine": engine_name, "asked": workers, "workers": meta["workers"], "answered": summary["answered"],
           "wall_s": wall, "tasks_per_h": summary["answered"] / wall * 3600,
           "task_tasks_per_h": summary["answered"] / span * 3600, "handover_ms": 1000 * statistics.mean(handover)}
    if engine_name == "ray":
        stats = summary["ray"]
        row["actor_ready_s"] = statistics.mean(a["ready_s"] for a in stats["actors"])
        row["actor_load_s"] = statistics.mean(a["load_s"] for a in stats["actors"])
        row["return_ms"] = 1000 * statistics.mean(stats["return_s"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    from arcttt.model import make_tiny_model

    root = Path(tempfile.mkdtemp(prefix="arcttt-bench-ray-"))
    model = make_tiny_model(root / "model")
    challenges = cheapest(args.tasks, root)
    rows = []
    for n in args.workers:
        for engine in ("local", "ray"):
            rows.append(one(engine, n, challenges, model, root))
            print(json.dumps(rows[-1]), flush=True)
    print("\n| workers asked | engine | started | answered | wall s | tasks/h (run) | tasks/h (task time) | "
          "hand-over ms | actor ready s | record back ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['asked']} | {r['engine']} | {r['workers']} | {r['answered']} | {r['wall_s']:.1f} | "
              f"{r['tasks_per_h']:.0f} | {r['task_tasks_per_h']:.0f} | {r['handover_ms']:.1f} | "
              f"{r.get('actor_ready_s', float('nan')):.1f} | {r.get('return_ms', float('nan')):.0f} |")
    by = {(r["engine"], r["asked"]): r for r in rows}
    for n in args.workers:
        print(f"workers {n}: ray / local tasks per hour (run) = "
              f"{by[('ray', n)]['tasks_per_h'] / by[('local', n)]['tasks_per_h']:.2f}")


if __name__ == "__main__":
    main()
