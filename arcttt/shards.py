"""Shards of a challenges file, for schedulers without Ray (a Slurm array, several machines by hand).

``arcttt run --shard K/N`` answers the tasks whose id hashes to shard K of N, in its own run folder;
``arcttt merge`` (``merge.py``) joins the N run folders into one submission. A task's shard is a
pure function of its id (sha256, never Python's per-process ``hash``), so every node of an array
job, on any machine, picks the same tasks, and the N shards cover every task exactly once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from arcttt.data import Challenges, shown


@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based: 1/3, 2/3, 3/3)."""

    k: int
    n: int

    def __post_init__(self):
        if not 1 <= self.k <= self.n:
            raise ValueError(f"--shard K/N needs 1 <= K <= N, got {self.k}/{self.n}")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def holds(self, task_id: str) -> bool:
        return shard_of(task_id, self.n) == self.k


def parse_shard(text: str | Shard | None) -> Shard | None:
    """``"K/N"`` as a Shard (None stays None); ValueError naming the text when it is not K/N."""
    if text is None or isinstance(text, Shard):
        return text
    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", str(text))
    if not match:
        raise ValueError(f"--shard must be K/N (e.g. 2/4), got {shown(text)}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_of(task_id: str, n: int) -> int:
    """The shard (1..n) a task id belongs to: a stable hash of the id's exact text."""
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % n + 1


def take_shard(loaded: Challenges, shard: Shard | None) -> Challenges:
    """The part of ``loaded`` in ``shard`` (good and rejected tasks alike), in file order."""
    if shard is None:
        return loaded
    return Challenges(tasks={tid: t for tid, t in loaded.tasks.items() if shard.holds(tid)},
                      rejected=[r for r in loaded.rejected if shard.holds(r.task_id)],
                      ids=[tid for tid in loaded.ids if shard.holds(tid)])
