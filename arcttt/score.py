"""The competition metric: a test output counts if either attempt equals the truth exactly (shape
included); the score is correct test outputs / all test outputs of the tasks in the solutions (a
micro-average over outputs, not a mean over tasks). A task missing from the submission, or an entry
that is not a valid grid, counts as wrong; tasks in the submission but not in the solutions are
ignored (``validate_submission`` reports them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from arcttt.data import GridError, parse_grid
from arcttt.submission import ATTEMPT_KEYS

TaskStatus = Literal["scored", "missing", "malformed"]


@dataclass(frozen=True)
class TaskScore:
    """One task's row: ``hits[i]`` tells whether test output ``i`` was solved by either attempt."""

    task_id: str
    correct: int
    total: int
    status: TaskStatus  # malformed: some entry is absent or not a valid grid (those outputs count as wrong)
    hits: tuple[bool, ...]


@dataclass(frozen=True)
class ScoreResult:
    correct: int
    total: int
    per_task: tuple[TaskScore, ...]

    @property
    def score(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "correct": self.correct, "total": self.total, "tasks": len(self.per_task),
                "per_task": [asdict(row) | {"hits": list(row.hits)} for row in self.per_task]}


def score_submission(submission_obj: dict[str, Any], solutions: dict[str, list[np.ndarray]]) -> ScoreResult:
    """Score a decoded submission against ``{task_id: [true grid per test input]}``."""
    if not isinstance(submission_obj, dict):
        raise ValueError(f"submission is not a JSON object of tasks (got {type(submission_obj).__name__})")
    rows = tuple(_score_task(tid, submission_obj.get(tid), truths) for tid, truths in solutions.items())
    return ScoreResult(sum(r.correct for r in rows), sum(r.total for r in rows), rows)


def _score_task(task_id: str, entries: Any, truths: list[np.ndarray]) -> TaskScore:
    if entries is None:
        return TaskScore(task_id, 0, len(truths), "missing", (False,) * len(truths))
    entries = entries if isinstance(entries, list) else []
    malformed = len(entries) != len(truths)
    hits = []
    for i, truth in enumerate(truths):
        entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
        hit = False
        for key in ATTEMPT_KEYS:
            try:
                guess = parse_grid(entry[key])
            except (KeyError, GridError):
                malformed = True
                continue
            hit = hit or (guess.shape == truth.shape and bool((guess == truth).all()))
        hits.append(hit)
    status: TaskStatus = "malformed" if malformed else "scored"
    return TaskScore(task_id, sum(hits), len(truths), status, tuple(hits))
