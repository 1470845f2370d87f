"""``arcttt merge``: the run folders of one run split into shards (``run --shard K/N``) joined into
one submission and one run folder.

The merge is refused, with one line naming the folders, when the folders are not parts of one run:
run with different configurations or models (``config_hash``/``model_hash`` of run.json and of
every record), holding a record of a task that is not in the challenges file or whose content
differs there, or covering a task twice (overlapping shards). Tasks no folder covers (a shard that
never ran) keep the default answers, and the merge says so. The merged run folder (``tasks/``,
``run.json``, ``config.json``, ``submission.json``, ``summary.json``, with solutions ``score.json``,
and ``report.html``) is one that ``report`` and ``profile`` read as they read a run's; the worker
ids of each folder are offset so that they stay distinct.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from arcttt.data import Challenges, load_challenges, show_id
from arcttt.records import SCHEMA_VERSION, TaskResult, task_hash
from arcttt.rundir import RUN_FILES, RunLock, earlier_run, record_files, require_run_dir, write_failure, write_record
from arcttt.submission import SubmissionWriter, atomic_write_json, load_submission

MISSING = "missing from the merged run folders"


class MergeError(ValueError):
    """Run folders that cannot be merged; the one-line message names them and the fault."""


@dataclass
class PartRun:
    """One run folder to merge: its run.json and its records by task id."""

    run_dir: Path
    info: dict
    records: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def label(self) -> str:
        shard = self.info.get("shard")
        return f"{self.run_dir} (shard {shard})" if shard else str(self.run_dir)


def read_part(run_dir: Path) -> PartRun:
    """A run folder's run.json and records; MergeError when it is not a finished-enough run folder."""
    from arcttt.rundir import RunDirError

    try:
        run_dir = require_run_dir(Path(run_dir)).absolute()
    except RunDirError as e:
        raise MergeError(str(e)) from None
    info = earlier_run(run_dir) or {}
    if not info.get("config_hash") or not info.get("model_hash"):
        raise MergeError(f"{run_dir}: no readable run.json with config_hash and model_hash (a run cut short "
                         f"before it started?)")
    part = PartRun(run_dir, info)
    for path in record_files(run_dir):
        try:
            rec = TaskResult.from_json(json.loads(path.read_text()), f"{run_dir}/tasks/{path.name}")
        except (OSError, ValueError) as e:  # JSON and record errors are ValueErrors
            raise MergeError(f"{run_dir}/tasks/{path.name}: unreadable record ({e})") from None
        part.records[rec.task_id] = rec
    return part


def check_parts(parts: list[PartRun], loaded: Challenges, challenges: Path) -> list[str]:
    """Refuse (MergeError) folders that are not parts of one run over ``loaded``; returns the notes
    (tasks no folder covers)."""
    if not parts:
        raise MergeError("no run folders to merge")
    dirs = [p.run_dir for p in parts]
    if len(set(dirs)) < len(dirs):
        raise MergeError(f"run folder {next(d for d in dirs if dirs.count(d) > 1)} given twice")
    first = parts[0]
    for part in parts[1:]:
        for key, what in (("model_hash", "models"), ("config_hash", "configurations")):
            if part.info[key] != first.info[key]:
                raise MergeError(f"{first.label} and {part.label} were run with different {what} ({key} "
                                 f"{first.info[key]} vs {part.info[key]}): merge only shards of one run")
    owner: dict[str, PartRun] = {}
    for part in parts:
        for tid, rec in part.records.items():
            where = f"{part.run_dir}: task {show_id(tid)}"
            for key in ("model_hash", "config_hash"):
                if getattr(rec, key) not in (None, part.info[key]):
                    raise MergeError(f"{where} was answered by another run ({key} {getattr(rec, key)}, the "
                                     f"folder's run has {part.info[key]})")
            if tid not in loaded.ids:
                raise MergeError(f"{where} is not in {challenges} (another challenges file?)")
            if rec.status == "ok" and (tid not in loaded.tasks or rec.task_hash != task_hash(loaded.tasks[tid])):
                raise MergeError(f"{where} was answered for other content than {challenges} holds")
            if tid in owner:
                raise MergeError(f"task {show_id(tid)} is in both {owner[tid].label} and {part.label}: the run "
                                 f"folders overlap (each task must come from exactly one shard)")
            owner[tid] = part
    missing = [tid for tid in loaded.ids if tid not in owner]
    if not missing:
        return []
    shards = {p.info.get("shard") for p in parts}
    counts = {s.split("/")[1] for s in shards if isinstance(s, str) and "/" in s}
    absent = ""
    if len(counts) == 1:
        n = int(next(iter(counts)))
        lost = [f"{k}/{n}" for k in range(1, n + 1) if f"{k}/{n}" not in shards]
        absent = f"; shards not given: {', '.join(lost)}" if lost else ""
    return [f"{len(missing)} of {len(loaded.ids)} tasks are in none of the run folders (first: "
            f"{show_id(missing[0])}){absent}: they keep the default answers"]


def merge_runs(run_dirs: list[Path], challenges: Path, out: Path, *, solutions: Path | None = None,
               run_dir: Path | None = None) -> dict:
    """Merge the shards' run folders into ``out`` and one run folder (default: OUT's folder/arcttt-merged,
    replaced when it holds an earlier merge); with ``solutions``, score it. Returns the summary.
    Raises MergeError for folders that are not parts of one run (nothing written then)."""
    start = time.time()
    challenges, out = Path(challenges).absolute(), Path(out).absolute()
    merged = Path(run_dir).absolute() if run_dir else out.parent / "arcttt-merged"
    loaded = load_challenges(challenges)
    parts = [read_part(d) for d in run_dirs]
    if merged in {p.run_dir for p in parts}:
        raise MergeError(f"the merged run folder {merged} is one of the folders to merge: give another --run-dir")
    notes = check_parts(parts, loaded, challenges)
    merged.mkdir(parents=True, exist_ok=True)
    with RunLock(merged):
        _claim_merged(merged)
        (merged / "tasks").mkdir(exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        writer = SubmissionWriter.for_challenges(out, loaded)
        summary = {"tasks": len(loaded.ids), "merged": len(parts), "answered": 0, "failed": 0, "missing": 0,
                   "notes": notes, "write_errors": []}
        offset, offsets = 0, {}
        for part in parts:
            offsets[str(part.run_dir)] = offset
            workers = {r.worker for r in part.records.values() if r.worker is not None}
            for tid, rec in part.records.items():
                if rec.worker is not None:
                    rec.worker += offset
                write_record(merged, rec)
                if rec.status == "ok":
                    writer.set(tid, rec.attempts())
                    summary["answered"] += 1
                else:
                    summary["failed"] += 1
            n = part.info.get("workers")
            offset += max(n if isinstance(n, int) and not isinstance(n, bool) else 0, max(workers, default=-1) + 1)
        covered = {tid for p in parts for tid in p.records}
        for tid in loaded.ids:
            if tid not in covered:
                write_failure(merged, tid, "default", MISSING, None, start)
                summary["missing"] += 1
        if (parts[0].run_dir / "config.json").is_file():
            shutil.copyfile(parts[0].run_dir / "config.json", merged / "config.json")
        if out != merged / "submission.json":
            shutil.copyfile(out, merged / "submission.json")  # the report reads the run folder's
        atomic_write_json(merged / "run.json", _merged_info(parts, loaded, challenges, out, merged, solutions,
                                                            offsets, offset))
        if solutions is not None:
            from arcttt.data import load_solutions
            from arcttt.score import score_submission

            result = score_submission(load_submission(out), load_solutions(solutions))
            summary["score"] = result.to_json()
            atomic_write_json(merged / "score.json", result.to_json())
        from arcttt.report import write_report

        summary["report"] = str(write_report(merged, solutions))
        summary["run_dir"] = str(merged)
        atomic_write_json(merged / "summary.json", summary)
    return summary


def _claim_merged(merged: Path) -> None:
    """An earlier merge in ``merged`` is replaced; a folder holding a run is refused."""
    earlier = earlier_run(merged)
    if earlier is None:
        return
    if earlier.get("command") != "merge":
        raise MergeError(f"{merged} holds a run's records, not an earlier merge: give another --run-dir")
    for path in record_files(merged):
        path.unlink()
    for name in (*RUN_FILES, "config.json"):
        (merged / name).unlink(missing_ok=True)


def _merged_info(parts: list[PartRun], loaded: Challenges, challenges: Path, out: Path, merged: Path,
                 solutions: Path | None, offsets: dict[str, int], workers: int) -> dict:
    """run.json of the merged folder: the parts' common hashes, their earliest start and latest deadline."""
    first = parts[0].info
    starts = [p.info["start"] for p in parts if isinstance(p.info.get("start"), (int, float))]
    deadlines = [p.info["deadline"] for p in parts if isinstance(p.info.get("deadline"), (int, float))]
    budgets = [p.info["budget_s"] for p in parts if isinstance(p.info.get("budget_s"), (int, float))]
    return {"command": "merge", "challenges": str(challenges), "model": first.get("model"), "out": str(out),
            "run_dir": str(merged), "solutions": str(Path(solutions).absolute()) if solutions else None,
            "folder": "new", "start": min(starts, default=None), "deadline": max(deadlines, default=None),
            "budget_s": max(budgets, default=None), "workers": workers, "preset": first.get("preset"),
            "tasks": loaded.ids, "resumed": [], "config_hash": first["config_hash"],
            "model_hash": first["model_hash"], "schema": SCHEMA_VERSION,
            "parts": [{"run_dir": str(p.run_dir), "shard": p.info.get("shard"), "tasks": len(p.records),
                       "worker_offset": offsets[str(p.run_dir)]} for p in parts]}

