"""Where a run's time went, read back from its run directory (see DESIGN.md, "Run directory").

:func:`load_run` reads ``run.json`` and every ``tasks/<id>.json``; a file that cannot be read is
listed in ``Run.problems`` instead of stopping the analysis, and missing optional fields read as
absent. From a :class:`Run`:

- :func:`phase_totals`: worker-seconds per phase (``data``, ``ttt``, ``search``, ``select``, and
  ``other`` for task time no phase covers), with their share of the worker-time budget
  ``budget_s x workers``;
- :func:`task_rows`: one row per task (status, worker, seconds per phase, TTT steps and last loss);
- :func:`worker_idle`: per worker, the gaps between its tasks within [run start, its last task end],
  and how long before the run's last task end it ran out of work (``tail_s``);
- :func:`margin`: deadline minus the last task end, and minus the submission file's mtime;
- :func:`timeline_figure`: a PNG with a row per worker and its tasks as bars coloured by phase;
- :func:`summary`: all of the above as text (``arcttt profile RUN_DIR``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arcttt.data import shown
from arcttt.records import NO_ANSWER, OTHER, Phase, RecordError, TaskResult  # noqa: F401 - re-exported
from arcttt.rundir import RunDirError, require_run_dir  # noqa: F401 - RunDirError re-exported

PHASES = ("frame", "data", "ttt", "search", "select")
PHASE_COLOURS = {"frame": "#bcbd22", "data": "#9e9e9e", "ttt": "#1f77b4", "search": "#ff7f0e", "select": "#2ca02c",
                 OTHER: "#d9d9d9"}
UNKNOWN_COLOUR = "#8c564b"  # a phase name this module does not know


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


@dataclass
class Run:
    """A run directory as read: ``info`` is run.json (empty if unreadable), ``tasks`` the readable
    task results by id, ``problems`` one line per file that could not be read."""

    run_dir: Path
    info: dict
    tasks: dict[str, TaskResult]
    problems: list[str] = field(default_factory=list)
    submission_mtime: float | None = None

    @property
    def task_ids(self) -> list[str]:
        """The run's tasks in run.json order, then any result files not listed there."""
        listed = [str(t) for t in self.info.get("tasks") or []]
        return listed + sorted(set(self.tasks) - set(listed))

    @property
    def missing(self) -> list[str]:
        """Tasks listed in run.json without a result file (not finished, or never started)."""
        return [t for t in self.task_ids if t not in self.tasks]

    @property
    def start(self) -> float | None:
        start = _num(self.info.get("start"))
        if start is None:  # no run.json: the first task start is the best we know
            starts = [t.start for t in self.timed if t.start is not None]
            start = min(starts) if starts else None
        return start

    @property
    def deadline(self) -> float | None:
        return _num(self.info.get("deadline"))

    @property
    def budget_s(self) -> float | None:
        budget = _num(self.info.get("budget_s"))
        if budget is None and self.deadline is not None and self.start is not None:
            budget = self.deadline - self.start
        return budget

    @property
    def workers(self) -> list[int]:
        """Worker ids: 0..n-1 from run.json, plus any other id found in the task results."""
        n = self.info.get("workers")
        ids = set(range(n)) if isinstance(n, int) and not isinstance(n, bool) else set()
        return sorted(ids | {t.worker for t in self.tasks.values() if t.worker is not None})

    @property
    def resumed(self) -> set[str]:
        """Tasks answered by an earlier run in this directory (run.json ``resumed``)."""
        return {str(t) for t in self.info.get("resumed") or []}

    @property
    def timed(self) -> list[TaskResult]:
        """Task results whose time was spent in this run (resumed ones spent theirs earlier)."""
        return [t for tid, t in self.tasks.items() if tid not in self.resumed]

    def path(self, key: str) -> Path | None:
        """A file run.json names (``challenges``, ``solutions``), found where it was, or beside a run
        folder that was copied or moved: in it, in its ``data/`` folder, or in its parent."""
        name = self.info.get(key)
        if not isinstance(name, str) or not name:
            return None
        given = Path(name)
        if not given.is_absolute():
            given = self.run_dir / given
        places = [given] + [d / given.name for d in (self.run_dir, self.run_dir / "data", self.run_dir.parent)]
        return next((p for p in places if p.is_file()), None)

    @property
    def last_end(self) -> float | None:
        ends = [t.end for t in self.timed if t.end is not None]
        return max(ends) if ends else None


def load_run(run_dir: str | Path) -> Run:
    """Read run.json and every tasks/*.json of a run folder; unreadable files become problems, and
    records of tasks the run does not list (left by another run in the folder) are left out.
    Raises RunDirError for a path that is not a run folder."""
    run_dir = require_run_dir(Path(run_dir))
    problems = []
    info: dict = {}
    try:
        info = json.loads((run_dir / "run.json").read_text())
        if not isinstance(info, dict):
            problems.append("run.json: not a JSON object")
            info = {}
    except FileNotFoundError:
        problems.append("run.json: missing")
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"run.json: cannot read ({e})")
    tasks: dict[str, TaskResult] = {}
    listed = {str(t) for t in info.get("tasks") or []}
    others = 0
    tasks_dir = run_dir / "tasks"
    if not tasks_dir.is_dir():
        problems.append("tasks/: missing (no task finished)")
    else:
        for path in sorted(tasks_dir.glob("*.json")):
            try:
                rec = TaskResult.from_json(json.loads(path.read_text()), f"tasks/{path.name}")
            except (OSError, ValueError) as e:  # JSON and record errors are ValueErrors
                problems.append(f"tasks/{path.name}: cannot read ({shown(str(e))})")
                continue
            if listed and rec.task_id not in listed:
                others += 1
                continue
            tasks[rec.task_id] = rec
    if others:
        problems.append(f"{others} task result(s) of tasks this run does not list (another run's) left out")
    sub = run_dir / "submission.json"
    return Run(run_dir, info, tasks, problems, sub.stat().st_mtime if sub.is_file() else None)


# --- figures ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PhaseTotal:
    phase: str
    seconds: float
    share: float | None  # of budget_s x workers; None when the budget is unknown


def phase_totals(run: Run) -> list[PhaseTotal]:
    """Worker-seconds per phase over all tasks, known phases first, ``other`` last."""
    totals: dict[str, float] = {}
    for rec in run.timed:
        for name, s in rec.phase_seconds().items():
            totals[name] = totals.get(name, 0.0) + s
    names = [p for p in PHASES if p in totals] + sorted(set(totals) - set(PHASES) - {OTHER})
    names += [OTHER] if OTHER in totals else []
    capacity = (run.budget_s or 0.0) * len(run.workers)
    return [PhaseTotal(n, totals[n], totals[n] / capacity if capacity > 0 else None) for n in names]


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    status: str
    worker: int | None
    seconds: float | None
    phases: dict[str, float]
    ttt_steps: int | None
    final_loss: float | None
    n_candidates: int
    error: str | None
    resumed: bool = False  # answered by an earlier run; its seconds are not in this run's totals


def task_rows(run: Run) -> list[TaskRow]:
    """One row per task of the run, in run order; tasks without a result file read as ``missing``."""
    rows = []
    for tid in run.task_ids:
        rec = run.tasks.get(tid)
        if rec is None:
            rows.append(TaskRow(tid, "missing", None, None, {}, None, None, 0, None))
            continue
        rows.append(TaskRow(tid, rec.status, rec.worker, rec.seconds, rec.phase_seconds(),
                            rec.ttt_steps, rec.final_loss, rec.n_candidates, rec.error, tid in run.resumed))
    return rows


@dataclass(frozen=True)
class WorkerIdle:
    worker: int
    tasks: int
    busy_s: float
    idle_s: float  # gaps within [run start, this worker's last task end]
    tail_s: float  # run's last task end - this worker's last task end


def _union_seconds(spans: list[tuple[float, float]]) -> float:
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(spans):
        if cur_end is None or s > cur_end:
            total += 0.0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    return total + (0.0 if cur_end is None else cur_end - cur_start)


def worker_idle(run: Run) -> list[WorkerIdle]:
    """Per worker: busy time (union of its task spans), idle gaps up to its last task end, and the
    tail it sat without work while other workers still ran."""
    start, last = run.start, run.last_end
    out = []
    for w in run.workers:
        spans = [(t.start, t.end) for t in run.timed
                 if t.worker == w and t.start is not None and t.end is not None]
        if not spans or start is None:
            tail = (last - start) if last is not None and start is not None else 0.0
            out.append(WorkerIdle(w, len(spans), 0.0, 0.0, tail))
            continue
        w_end = max(e for _, e in spans)
        busy = _union_seconds([(max(s, start), e) for s, e in spans if e > start])
        out.append(WorkerIdle(w, len(spans), busy, max(0.0, w_end - start - busy), last - w_end))
    return out


@dataclass(frozen=True)
class Margin:
    deadline: float | None
    last_task_end: float | None
    submission_mtime: float | None

    @property
    def after_last_task_s(self) -> float | None:
        """Seconds left at the deadline after the last task ended (negative: overran)."""
        return None if self.deadline is None or self.last_task_end is None else self.deadline - self.last_task_end

    @property
    def after_submission_s(self) -> float | None:
        """Seconds left at the deadline after submission.json was last written."""
        if self.deadline is None or self.submission_mtime is None:
            return None
        return self.deadline - self.submission_mtime


def margin(run: Run) -> Margin:
    return Margin(run.deadline, run.last_end, run.submission_mtime)


# --- output ----------------------------------------------------------------------------------------

def timeline_figure(run: Run, path: str | Path) -> Path:
    """Save a PNG: one row per worker, each task a bar split into its phases; the deadline dashed."""
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call before pyplot is imported
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    workers = run.workers or [0]
    t0 = run.start or 0.0
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(workers) + 1.6), dpi=100)
    span = max([(run.deadline or 0.0) - t0] + [t.end - t0 for t in run.timed if t.end is not None] + [1.0])
    unit, scale = ("hours", 3600.0) if span > 3 * 3600 else ("minutes", 60.0) if span > 1800 else ("seconds", 1.0)

    def at(t: float) -> float:
        return (t - t0) / scale
    # Spans grouped per (row, layer) so each layer of a row is one draw call (a whole split has
    # thousands of phases; one broken_barh each takes seconds).
    tasks, phases, failed = defaultdict(list), defaultdict(list), defaultdict(list)
    used = set()
    for rec in run.timed:
        if rec.worker is None or rec.start is None or rec.end is None:
            continue
        y = workers.index(rec.worker)
        tasks[y].append((at(rec.start), rec.seconds / scale))
        for p in rec.phases:
            name = p.phase if p.phase in PHASE_COLOURS else "?"
            used.add(name)
            phases[y, name].append((at(p.start), p.seconds / scale))
        if rec.status != "ok":  # a task that gave no answer of its own: hatched red outline
            failed[y].append((at(rec.start), rec.seconds / scale))
        if rec.seconds > 0.07 * span:  # label the bars wide enough to hold a task id
            ax.text(at(rec.start + rec.seconds / 2), y + 0.33, rec.task_id, ha="center", va="top",
                    fontsize=7, color="black", clip_on=True)
    for y, spans in tasks.items():
        ax.broken_barh(spans, (y - 0.3, 0.6), facecolor=PHASE_COLOURS[OTHER], edgecolor="black", linewidth=0.6)
        used.add(OTHER)
    for (y, name), spans in phases.items():
        ax.broken_barh(spans, (y - 0.27, 0.54), facecolor=PHASE_COLOURS.get(name, UNKNOWN_COLOUR), linewidth=0)
    for y, spans in failed.items():
        ax.broken_barh(spans, (y - 0.3, 0.6), facecolor="none", edgecolor="#d62728", linewidth=1.5, hatch="//")
    if run.deadline is not None:
        ax.axvline(at(run.deadline), color="#d62728", linestyle="--", linewidth=1)
        ax.text(at(run.deadline), -0.5, " deadline", color="#d62728", va="top", fontsize=8)
    ax.set_yticks(range(len(workers)), [f"worker {w}" for w in workers])
    ax.set_ylim(-0.6, len(workers) - 0.35)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} since run start")
    ax.set_title(f"{len(run.tasks)} tasks on {len(workers)} worker(s); red hatched: no answer of its own")
    handles = [Patch(color=c, label=n) for n, c in PHASE_COLOURS.items() if n in used]
    handles += [Patch(color=UNKNOWN_COLOUR, label="other phase")] if "?" in used else []
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(handles),
                  fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _s(x: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary(run: Run) -> str:
    """The run's profile as text: problems, per-phase totals, per-task rows, idle time, margin."""
    lines = [f"run {run.run_dir}: {len(run.tasks)} task results, {len(run.task_ids)} tasks, "
             f"{len(run.workers)} worker(s), budget {_s(run.budget_s)} s"]
    lines += [f"problem: {p}" for p in run.problems]
    if run.missing:
        lines.append(f"no result file for {len(run.missing)} task(s): {' '.join(run.missing[:10])}"
                     + (" ..." if len(run.missing) > 10 else ""))
    lines += ["", "phase totals (worker-seconds; share of budget_s x workers)"]
    totals = phase_totals(run)
    for t in totals:
        lines.append(f"  {t.phase:<8} {t.seconds:10.1f} s  {_s(None if t.share is None else 100 * t.share):>6} %")
    lines.append(f"  {'all':<8} {sum(t.seconds for t in totals):10.1f} s")
    rows = task_rows(run)
    names = [t.phase for t in totals]
    lines += ["", "tasks", "  " + f"{'task':<10} {'status':<8} {'wkr':>3} {'total s':>8} "
              + " ".join(f"{n:>7}" for n in names) + f" {'steps':>6} {'loss':>7} {'cands':>5}"]
    for r in rows:
        lines.append("  " + f"{r.task_id:<10} {r.status:<8} {_s(r.worker, '{}'):>3} {_s(r.seconds):>8} "
                     + " ".join(f"{_s(r.phases.get(n)):>7}" for n in names)
                     + f" {_s(r.ttt_steps, '{}'):>6} {_s(r.final_loss, '{:.3f}'):>7} {r.n_candidates:>5}"
                     + ("  (resumed)" if r.resumed else "") + (f"  error: {r.error}" if r.error else ""))
    lines += ["", "workers (idle: gaps before its last task ends; tail: out of work while others ran)"]
    for w in worker_idle(run):
        lines.append(f"  worker {w.worker}: {w.tasks} tasks, busy {w.busy_s:.1f} s, idle {w.idle_s:.1f} s, "
                     f"tail {w.tail_s:.1f} s")
    m = margin(run)
    lines += ["", f"margin at the deadline: {_s(m.after_last_task_s)} s after the last task ended, "
              f"{_s(m.after_submission_s)} s after submission.json was last written"]
    return "\n".join(lines)
