"""Will a full run fit the budget? An estimate from per-token costs (assumed, or measured in an
earlier run: ``arcttt profile --plan --calibration RUN_DIR``), before any GPU time is spent."""

from __future__ import annotations

from dataclasses import dataclass

from arcttt.budget import order_tasks, task_tokens


@dataclass(frozen=True)
class Rates:
    """Per-token costs of one worker, in seconds per token."""

    ttt_s_per_token: float
    """Training (forward + backward + step) per training token."""
    search_s_per_token: float
    """Search per prompt token of one augmented view (prefill, and decoding amortised over it)."""
    select_s_per_token: float
    """Scoring per prompt token of one view (all candidates of that view together)."""
    source: str


# Assumed, not measured: a 4B model in 4-bit with LoRA on one L4 (fp16/bf16), from the field's
# reported figures (NVARC: ~31 s of TTT and ~107 s in all per ARC-AGI-1 task on an H100, which is
# ~4-5x an L4). Give --calibration RUN_DIR to plan from a run's own measurements instead.
ASSUMED_RATES = Rates(ttt_s_per_token=1 / 2500, search_s_per_token=1 / 4000, select_s_per_token=1 / 8000,
                      source="assumed (4B 4-bit on one L4; no calibration run given)")


def rates_from_run(run_dir) -> Rates:
    """Measured per-token costs of a finished run: its phase seconds over the tokens they handled.
    Raises RunDirError or ValueError (one line) for a folder that is not a finished run."""
    import json

    from arcttt.data import load_challenges
    from arcttt.profiling import load_run

    run = load_run(run_dir)
    cfg = json.loads((run.run_dir / "config.json").read_text())
    path = run.path("challenges")
    if path is None:
        raise ValueError(f"calibration run {run.run_dir}: its challenges file is not found")
    tasks = load_challenges(path).tasks
    sums = {"ttt": [0.0, 0], "search": [0.0, 0], "select": [0.0, 0]}
    for r in run.timed:
        if r.status != "ok" or r.task_id not in tasks:
            continue
        seconds = {p: 0.0 for p in sums}
        for name, s in r.phase_seconds().items():
            if name in seconds:
                seconds[name] += s
        _, prompt = task_tokens(tasks[r.task_id])
        n_test = len(r.tests)
        tokens = {"ttt": r.ttt.tokens if r.ttt is not None else 0,
                  "search": n_test * cfg["search"]["n_augmentations"] * prompt,
                  "select": n_test * cfg["select"]["n_views"] * prompt}
        for p in sums:
            if tokens[p] and seconds[p]:
                sums[p][0] += seconds[p]
                sums[p][1] += tokens[p]
    missing = [p for p, (_, n) in sums.items() if n == 0]
    if missing:
        raise ValueError(f"calibration run {run_dir} has no finished task with {', '.join(missing)} timings")
    return Rates(*(s / n for s, n in sums.values()), source=f"measured in {run_dir}")


def plan_report(challenges, config: str = "kaggle-l4x4", calibration=None) -> str:
    """Estimate, from per-token costs, whether a full run of ``challenges`` fits the budget, and how
    much of its planned TTT each task would get. Returns the report as text."""
    from arcttt.config import load_config
    from arcttt.data import load_challenges

    cfg = load_config(config)
    rates = rates_from_run(calibration) if calibration else ASSUMED_RATES
    tasks = order_tasks(list(load_challenges(challenges).tasks.values()), cfg.budget.order)
    workers = cfg.workers or {"kaggle-l4x4": 4, "kaggle-t4x2": 2}.get(cfg.preset, 1)  # GPUs of the machine
    capacity = workers * (cfg.budget.time_budget_s - cfg.budget.safety_margin_s)
    rows, need_total = [], 0.0
    for t in tasks:
        train, prompt = task_tokens(t)
        per_step = max(train, (cfg.ttt.batch_tokens // max(train, 1)) * train)
        ttt_s = cfg.ttt.steps * per_step * rates.ttt_s_per_token
        search_s = t.n_test * cfg.search.n_augmentations * prompt * rates.search_s_per_token
        select_s = t.n_test * cfg.select.n_views * prompt * rates.select_s_per_token
        rows.append((t, train, ttt_s, search_s, select_s))
        need_total += ttt_s + search_s + select_s
    scale = min(1.0, capacity / need_total) if need_total else 1.0
    lines = [f"plan: {len(tasks)} tasks, preset {cfg.preset}, {workers} workers, "
             f"{cfg.budget.time_budget_s / 3600:.1f} h budget - {cfg.budget.safety_margin_s:.0f} s margin",
             f"rates: {rates.source}: TTT {1 / rates.ttt_s_per_token:,.0f} tok/s, "
             f"search {1 / rates.search_s_per_token:,.0f} tok/s, select {1 / rates.select_s_per_token:,.0f} tok/s",
             f"needed: {need_total / 3600:.2f} worker-hours for the planned work; "
             f"available: {capacity / 3600:.2f} worker-hours -> "
             + ("fits" if scale >= 1 else f"does NOT fit: each task gets about {scale:.0%} of its plan"),
             "", f"{'task':<10} {'train tok':>9} {'tests':>5} {'ttt s':>8} {'search s':>8} "
             f"{'select s':>8} {'ttt steps':>9}"]
    for t, train, ttt_s, search_s, select_s in rows:
        steps = int(cfg.ttt.steps * scale)
        lines.append(f"{t.id:<10} {train:>9} {t.n_test:>5} {ttt_s * scale:>8.1f} {search_s * scale:>8.1f} "
                     f"{select_s * scale:>8.1f} {steps:>9}")
    return "\n".join(lines)
