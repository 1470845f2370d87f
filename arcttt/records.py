"""The typed record of one task's result, as written to ``RUN_DIR/tasks/`` and read back by resume,
profiling, the report and budget calibration; the file name a task id gets; the hashes that say
which run a record belongs to.

A record is JSON (:meth:`TaskResult.to_json`), tagged with :data:`SCHEMA_VERSION`. Reading
(:meth:`TaskResult.from_json`) is tolerant of missing optional fields (a record cut short by a crash,
or written by hand) and strict about what would mislead: a record that is not an object, or holds no
task id, raises ``RecordError``.

File names (:func:`task_file_name`): a task id comes from an input file and is not ours to trust
(``../../x``, ``/abs``, NUL, 300 bytes, a newline). It becomes a readable prefix of its safe
characters plus a hash of the whole id, so every id gets a distinct, short, plain name; the record
inside keeps the exact id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1
Status = Literal["ok", "default", "error", "timeout", "stopped", "rejected"]
STATUSES = ("ok", "default", "error", "timeout", "stopped", "rejected")
NO_ANSWER = ("default", "timeout", "error", "stopped", "rejected")  # the submission keeps the defaults
PREFIX_CHARS = 40
HASH_CHARS = 16


class RecordError(ValueError):
    """A task record that cannot be read as one; the message names the file or task."""


# --- file names ---------------------------------------------------------------------------

def _id_bytes(task_id: str) -> bytes:
    return task_id.encode("utf-8", "surrogatepass")  # JSON may hold lone surrogates


def task_file_name(task_id: str) -> str:
    """The file name of a task's record: safe for any string. Characters outside ``[A-Za-z0-9_-]``
    become ``_`` in a prefix of at most 40 characters, followed by a hash of the exact id, so the
    name never holds a path separator, a dot-dot, NUL or a newline, never exceeds 64 bytes, and two
    ids never share it (unless sha256 collides)."""
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", task_id[:PREFIX_CHARS])
    digest = hashlib.sha256(_id_bytes(task_id)).hexdigest()[:HASH_CHARS]
    return f"{prefix or '_'}.{digest}.json"


# --- hashes: which run a record belongs to ----------------------------------------------------------

def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def task_hash(task) -> str:
    """Hash of a task's content (train pairs, test inputs: shapes and cells), not of its id."""
    h = hashlib.sha256()
    for grid in [g for p in task.train for g in (p.input, p.output)] + [None] + list(task.test_inputs):
        h.update(b"|" if grid is None else f"{grid.shape}".encode() + grid.tobytes())
    return h.hexdigest()[:HASH_CHARS]


ANSWER_FIELDS = ("data", "model", "ttt", "search", "select")


def config_hash(cfg_json: dict) -> str:
    """Hash of the parts of a resolved config that shape a task's answer (data, model, TTT, search,
    selection). The budget and the number of workers are left out: a run resumed with less time left
    (as on Kaggle after a restart) must still reuse what it answered."""
    return _digest({k: cfg_json.get(k) for k in ANSWER_FIELDS})


def model_hash(model_dir) -> str:
    """Hash of a model directory that needs no pass over the weights: the text of its config.json and
    arcttt.json and the name and size of every other file. A copied or moved directory keeps it."""
    from pathlib import Path

    model_dir = Path(model_dir)
    parts: list[Any] = []
    try:
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            rel = str(path.relative_to(model_dir))
            if path.name in ("config.json", "arcttt.json"):
                parts.append([rel, path.read_text(errors="replace")])
            else:
                parts.append([rel, path.stat().st_size])
    except OSError as e:
        parts.append(["unreadable", str(e)])
    return _digest(parts)


# --- the records --------------------------------------------------------------------------------------

def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None


def _str(x: Any) -> str | None:
    return None if x is None else str(x)


@dataclass
class TTTResult:
    """What test-time training did on one task (returned by ``ttt.train_task``)."""

    steps: int = 0
    tokens: int = 0
    """Non-padding tokens run through forward and backward."""
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    """Loss of every step, in order."""
    stopped: Literal["done", "deadline", "oom", "empty"] = "done"
    skipped: str | None = None
    """Why no training happened (then ``steps == 0``), else None."""
    sequences: int | None = None
    """Training sequences made for the task (set by the pipeline)."""

    def to_json(self) -> dict:
        return {"steps": self.steps, "tokens": self.tokens, "seconds": round(self.seconds, 3),
                "tokens_per_s": round(self.tokens_per_s, 1), "losses": [round(x, 5) for x in self.losses],
                "stopped": self.stopped, "skipped": self.skipped, "sequences": self.sequences}

    @classmethod
    def from_json(cls, obj: Any) -> TTTResult:
        if not isinstance(obj, dict):
            return cls()
        losses = obj.get("losses")
        stopped = obj.get("stopped")
        return cls(steps=_int(obj.get("steps")) or 0, tokens=_int(obj.get("tokens")) or 0,
                   seconds=_num(obj.get("seconds")) or 0.0, tokens_per_s=_num(obj.get("tokens_per_s")) or 0.0,
                   losses=[v for v in map(_num, losses) if v is not None] if isinstance(losses, list) else [],
                   stopped=stopped if stopped in ("done", "deadline", "oom", "empty") else "done",
                   skipped=_str(obj.get("skipped")), sequences=_int(obj.get("sequences")))


@dataclass
class TestResult:
    """One test input's answer: the two attempts (grids as lists), the top candidates as the
    selection scored them (``select.Scored.to_json``), search counters, and an error if it failed."""

    __test__ = False  # not a pytest test class, whatever its name

    attempts: list = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    search: dict = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict:
        out = {"attempts": self.attempts, "candidates": self.candidates, "search": self.search}
        if self.error is not None:
            out["error"] = self.error
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TestResult:
        if not isinstance(obj, dict):
            return cls()
        att, cands, search = obj.get("attempts"), obj.get("candidates"), obj.get("search")
        return cls(attempts=att if isinstance(att, list) else [],
                   candidates=[c for c in cands if isinstance(c, dict)] if isinstance(cands, list) else [],
                   search=search if isinstance(search, dict) else {}, error=_str(obj.get("error")))


@dataclass(frozen=True)
class Phase:
    phase: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


OTHER = "other"


@dataclass
class TaskResult:
    """One task's record (``RUN_DIR/tasks/<task_file_name(id)>``)."""

    task_id: str
    status: str = "ok"
    error: str | None = None
    worker: int | None = None
    start: float | None = None
    end: float | None = None
    phases: list[Phase] = field(default_factory=list)
    ttt: TTTResult | None = None
    tests: list[TestResult] = field(default_factory=list)
    deadlines: dict | None = None
    task_hash: str | None = None
    config_hash: str | None = None
    model_hash: str | None = None
    frame: dict | None = None
    """The symmetry of the inputs the task was solved in, with each candidate's likelihood
    (``pretransform.Frame``); None (and not written) when the run does not choose one (``data.input_frame`` off)."""
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return {"schema": self.schema, "task_id": self.task_id, "status": self.status, "error": self.error,
                "worker": self.worker, "start": self.start, "end": self.end, "deadlines": self.deadlines,
                "phases": [dataclasses.asdict(p) for p in self.phases],
                "ttt": None if self.ttt is None else self.ttt.to_json(),
                "tests": [t.to_json() for t in self.tests],
                "task_hash": self.task_hash, "config_hash": self.config_hash, "model_hash": self.model_hash,
                **({"frame": self.frame} if self.frame is not None else {})}

    @classmethod
    def from_json(cls, obj: Any, where: str = "record") -> TaskResult:
        """A record from decoded JSON. Raises RecordError when it is not an object or has no task id;
        other fields that are missing or of the wrong type read as absent. A phase cut short by a crash
        (no end) ends with its task."""
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: not a JSON object")
        tid = obj.get("task_id")
        if not isinstance(tid, str):
            raise RecordError(f"{where}: no task_id string")
        end = _num(obj.get("end"))
        phases = []
        for p in obj.get("phases") or []:
            if isinstance(p, dict):
                s, e = _num(p.get("start")), _num(p.get("end"))
                e = end if e is None else e
                if s is not None and e is not None:
                    phases.append(Phase(str(p.get("phase", "?")), s, e))
        tests = obj.get("tests")
        return cls(task_id=tid, status=str(obj.get("status") or "unknown"), error=_str(obj.get("error")),
                   worker=_int(obj.get("worker")), start=_num(obj.get("start")), end=end, phases=phases,
                   ttt=TTTResult.from_json(obj["ttt"]) if isinstance(obj.get("ttt"), dict) else None,
                   tests=[TestResult.from_json(t) for t in tests if isinstance(t, dict)]
                   if isinstance(tests, list) else [],
                   deadlines=obj.get("deadlines") if isinstance(obj.get("deadlines"), dict) else None,
                   task_hash=_str(obj.get("task_hash")), config_hash=_str(obj.get("config_hash")),
                   model_hash=_str(obj.get("model_hash")),
                   frame=obj.get("frame") if isinstance(obj.get("frame"), dict) else None,
                   schema=_int(obj.get("schema")) or 0)

    # --- read-side views (profiling, report) ---

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else max(0.0, self.end - self.start)

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase name (repeated phases add up), plus ``other`` for uncovered task time."""
        out: dict[str, float] = {}
        for p in self.phases:
            out[p.phase] = out.get(p.phase, 0.0) + p.seconds
        if self.seconds is not None:
            rest = self.seconds - sum(out.values())
            if rest > 1e-9:
                out[OTHER] = rest
        return out

    @property
    def ttt_steps(self) -> int | None:
        return None if self.ttt is None else self.ttt.steps

    @property
    def final_loss(self) -> float | None:
        return self.ttt.losses[-1] if self.ttt is not None and self.ttt.losses else None

    @property
    def n_candidates(self) -> int:
        return sum(len(t.candidates) for t in self.tests)

    def attempts(self) -> list[tuple]:
        """(attempt_1, attempt_2) per test input, as ``SubmissionWriter.set`` takes them."""
        return [tuple(t.attempts) for t in self.tests]

    def stale_because(self, task_hash: str, config_hash: str, model_hash: str) -> str | None:
        """Why this record cannot be reused by a run with these hashes (None: it can)."""
        if self.status != "ok":
            return f"status {self.status}"
        if self.schema != SCHEMA_VERSION:
            return "older record format"
        for name, want in (("task", task_hash), ("config", config_hash), ("model", model_hash)):
            if getattr(self, f"{name}_hash") != want:
                return f"different {name}"
        return None
