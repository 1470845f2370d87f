"""Time budget: one global deadline, a share of the remaining time per task in proportion to its
expected cost, and a cap per phase inside that share.

The global deadline is ``start + time_budget - safety_margin``. When a worker asks for its next task,
the task's share is computed from what is left at that moment::

    share = (deadline - now) * workers * cost(task) / sum(cost(t) for t running or still to start)

clipped to [min_task_s, max_task_s] and to the deadline itself. Inside the share, TTT, search and
selection each end at their own deadline (fractions of the share); time one phase leaves unused
flows to the next. A task is started only if at least ``min_task_s`` remains before the deadline.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal

from arcttt.data import Task, shown

Order = Literal["cheap_first", "given", "expensive_first"]


@dataclass
class BudgetConfig:
    """Deadline, shares and phase caps.

    ``order`` decides which tasks run first. ``cheap_first`` (default) answers the most tasks per
    minute, so a run cut short by the deadline loses the fewest expected points, and the time the
    cheap tasks leave unused flows to the expensive ones at the end (shares are recomputed as tasks
    finish). ``expensive_first`` packs workers better (long tasks do not straggle at the end) when the
    budget is known to be ample; ``given`` keeps the file's order.
    """

    time_budget_s: float = 12 * 3600.0
    """Seconds for the whole run, counted from its start (Kaggle: 12 h from the notebook start)."""
    safety_margin_s: float = 900.0
    """Kept back at the end for writing the final submission and shutting down."""
    ttt_frac: float = 0.55
    """Share of a task's time for TTT."""
    search_frac: float = 0.30
    """Share for the answer search (all test inputs); the rest is for scoring and selection."""
    min_task_s: float = 5.0
    """A task is not started with less than this before the deadline."""
    max_task_s: float = 1800.0
    """No task gets more than this, however much time is left."""
    hang_factor: float = 2.0
    """A worker still on a task after ``hang_factor * share + hang_grace_s`` is declared hung."""
    hang_grace_s: float = 60.0
    order: Order = "cheap_first"

    def __post_init__(self):
        errors = []
        if self.time_budget_s <= 0:
            errors.append(f"time_budget_s must be > 0, got {self.time_budget_s}")
        if not 0 <= self.safety_margin_s < self.time_budget_s:
            errors.append(f"safety_margin_s must be in [0, time_budget_s), got {self.safety_margin_s}")
        if not (0 < self.ttt_frac and 0 < self.search_frac and self.ttt_frac + self.search_frac < 1):
            errors.append("ttt_frac and search_frac must be > 0 and sum to less than 1")
        if self.min_task_s <= 0 or self.max_task_s < self.min_task_s:
            errors.append("need 0 < min_task_s <= max_task_s")
        if self.order not in ("cheap_first", "given", "expensive_first"):
            errors.append(f"order must be cheap_first, given or expensive_first, got {self.order!r}")
        if errors:
            raise ValueError("; ".join(errors))

    def for_budget(self, seconds: float, margin_frac: float = 0.05) -> BudgetConfig:
        """This config for a run given ``seconds`` by a caller that has kept its own margin back: of
        this config's margin, keep at most ``margin_frac`` of the budget (enough to shut down)."""
        return replace(self, time_budget_s=float(seconds),
                       safety_margin_s=min(self.safety_margin_s, margin_frac * seconds))


def task_tokens(task: Task) -> tuple[int, int]:
    """(tokens of the whole task as one training sequence, tokens of one test prompt + answer),
    counting one token per cell and per row plus a few markers, as the compact format does."""
    def grid_tokens(g) -> int:
        return g.shape[0] * (g.shape[1] + 1) + 2

    demos = sum(grid_tokens(p.input) + grid_tokens(p.output) for p in task.train)
    largest_output = max(grid_tokens(p.output) for p in task.train)
    test = max(grid_tokens(g) for g in task.test_inputs)
    return demos, demos + test + largest_output


def expected_cost(task: Task, search_weight: float = 1.0) -> float:
    """Relative cost of a task: its TTT sequence length plus, per test input, its prompt length
    times ``search_weight`` (search + scoring cost relative to training on the same tokens)."""
    train_tokens, prompt_tokens = task_tokens(task)
    return float(train_tokens + search_weight * task.n_test * prompt_tokens)


def order_tasks(tasks: list[Task], order: Order) -> list[Task]:
    if order == "given":
        return list(tasks)
    return sorted(tasks, key=expected_cost, reverse=(order == "expensive_first"))


@dataclass(frozen=True)
class TaskDeadlines:
    """Absolute (time.time()) deadlines of one task's phases."""

    start: float
    ttt: float
    search: float
    end: float

    @property
    def share_s(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict:
        return {"start": self.start, "ttt": self.ttt, "search": self.search, "end": self.end}

    @classmethod
    def from_json(cls, obj: dict) -> TaskDeadlines:
        return cls(obj["start"], obj["ttt"], obj["search"], obj["end"])


@dataclass
class Budget:
    """The run's clock: global deadline and per-task shares."""

    cfg: BudgetConfig
    start: float
    workers: int

    @property
    def deadline(self) -> float:
        return self.start + self.cfg.time_budget_s - self.cfg.safety_margin_s

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    def can_start(self, now: float | None = None) -> bool:
        return self.remaining(now) >= self.cfg.min_task_s

    def share(self, cost: float, pending_cost: float, now: float | None = None) -> float:
        """Seconds for a task of ``cost`` when ``pending_cost`` (this task included) is still to do."""
        left = self.remaining(now)
        if left <= 0:
            return 0.0
        fair = left * self.workers * cost / max(pending_cost, cost, 1e-9)
        return max(min(fair, self.cfg.max_task_s, left), min(self.cfg.min_task_s, left))

    def deadlines(self, cost: float, pending_cost: float, now: float | None = None) -> TaskDeadlines:
        now = time.time() if now is None else now
        share = self.share(cost, pending_cost, now)
        return TaskDeadlines(start=now, ttt=now + self.cfg.ttt_frac * share,
                             search=now + (self.cfg.ttt_frac + self.cfg.search_frac) * share,
                             end=now + share)

    def hang_limit(self, d: TaskDeadlines) -> float:
        """When a worker still busy with the task is declared hung (never past the deadline)."""
        return min(d.start + self.cfg.hang_factor * d.share_s + self.cfg.hang_grace_s, self.deadline)


def check_time_budget(seconds) -> None:
    """A time budget must be a positive finite number of seconds (None: the preset's); else ValueError."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {shown(seconds)}")
