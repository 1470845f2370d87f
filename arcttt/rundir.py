"""The run folder as a resource: what makes a folder a run folder, one lock per folder, and the rule
for a folder that already holds another run's records.

- A run folder holds ``run.json`` (or, cut short before that, ``tasks/``). ``report`` and
  ``profile`` refuse any other path (:func:`require_run_dir`), and never create it.
- :class:`RunLock`: ``RUN_DIR/.lock`` is held (``flock``) for the whole run and names the process.
  A second run on the folder stops at once with one line naming that process. The kernel drops the
  lock when its process dies, so a lock left by a killed run is taken over; where the file system
  has no ``flock``, the lock file is created exclusively and a lock whose process no longer exists
  is stale and replaced.
- :func:`claim`: a folder holding another run's records is reused only when asked (``--resume``:
  matching records are kept, see ``runner.resume``); a dry run may instead replace an earlier dry
  run's records (:data:`RUN_FILES`), which is what running the README's dry run twice does.
- A task's record lives at ``tasks/<records.task_file_name(id)>`` (:func:`result_path`), written
  atomically (:func:`write_record`); a task that keeps its defaults gets one too (:func:`write_failure`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import logging
import socket
import time
from pathlib import Path

from arcttt.data import show_id
from arcttt.errors import first_line, write_fault
from arcttt.records import TaskResult, task_file_name
from arcttt.submission import atomic_write_json

log = logging.getLogger("arcttt.rundir")

LOCK_NAME = ".lock"
# files a run writes in its folder (besides tasks/); a replaced dry run loses exactly these
RUN_FILES = ("run.json", "summary.json", "score.json", "report.html", "timeline.png", "log.txt", "submission.json")


class RunDirError(Exception):
    """A path that is not a usable run folder: missing, not a run, in use, or holding another run."""


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "run.json").is_file() or (path / "tasks").is_dir())


def require_run_dir(path: Path) -> Path:
    """``path`` if it is a run folder; else RunDirError saying what it is instead."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"run folder {path} does not exist")
    if not path.is_dir():
        raise RunDirError(f"{path} is not a folder (give the run folder, not a file in it)")
    if not is_run_dir(path):
        raise RunDirError(f"{path} is not a run folder (no run.json and no tasks/ in it)")
    return path


def record_files(run_dir: Path) -> list[Path]:
    tasks = Path(run_dir) / "tasks"
    return sorted(tasks.glob("*.json")) if tasks.is_dir() else []


def result_path(run_dir: Path, task_id: str) -> Path:
    """Where a task's record lives in a run folder: ``tasks/<records.task_file_name(id)>``, a name
    that stays inside ``tasks/`` whatever the id holds."""
    return Path(run_dir) / "tasks" / task_file_name(task_id)


def write_record(run_dir: Path, result: TaskResult) -> None:
    """Write a task's record into the run folder, atomically (see submission.atomic_write_json)."""
    atomic_write_json(result_path(run_dir, result.task_id), result.to_json())


def failed_result(task_id: str, status: str, error: str, worker: int | None, start: float) -> TaskResult:
    """The record of a task that keeps its default answers, and why (one line)."""
    return TaskResult(task_id, status, error=first_line(error), worker=worker, start=start, end=time.time())


def write_failure(run_dir: Path, task_id: str, status: str, error: str, worker: int | None, start: float,
                  writes: list[str] | None = None) -> None:
    """Record a task that keeps its default answers, and why. A record that cannot be written is
    logged (and counted in ``writes``) rather than raised: the submission still holds the defaults."""
    try:
        write_record(run_dir, failed_result(task_id, status, error, worker, start))
    except OSError as e:
        log.error("task %s: %s", show_id(task_id), write_fault(e))
        if writes is not None:
            writes.append(write_fault(e))


def log_to(path: Path, name: str) -> logging.Handler:
    """Send arcttt's log records to ``path`` (the run folder's log.txt: appended, every process of
    the run shares it), each line naming the process ``name``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s"))
    root = logging.getLogger("arcttt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def earlier_run(run_dir: Path) -> dict | None:
    """run.json of the run that last used ``run_dir`` ({} if it left records but no readable
    run.json); None when the folder holds no run."""
    run_dir = Path(run_dir)
    meta = run_dir / "run.json"
    if meta.is_file():
        try:
            obj = json.loads(meta.read_text())
            return obj if isinstance(obj, dict) else {}
        except (OSError, ValueError):
            return {}
    return {} if record_files(run_dir) else None


def claim(run_dir: Path, *, resume: bool, replace_dry_run: bool = False) -> str:
    """Decide what to do with what ``run_dir`` holds; returns ``new``, ``resume`` or ``replaced``.

    Without ``resume``, a folder holding another run's records raises RunDirError (one line saying
    what to do), except that ``replace_dry_run`` lets a dry run replace an earlier dry run's files.
    """
    earlier = earlier_run(run_dir)
    if earlier is None:
        return "new"
    if resume:
        return "resume"
    was_dry = earlier.get("command") == "dry-run" or (Path(run_dir) / "score.json").is_file()
    if replace_dry_run and was_dry:
        for path in record_files(run_dir):
            path.unlink()
        for name in RUN_FILES:
            (Path(run_dir) / name).unlink(missing_ok=True)
        return "replaced"
    n = len(record_files(run_dir))
    raise RunDirError(f"run folder {run_dir} holds another run's records ({n} task results): add --resume to "
                      f"reuse those that match this run, or give another --run-dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_owner(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text() or "{}")
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder's lock; RunDirError if another live run has it.
    ``stale`` tells, after entering, the owner of a stale lock that was taken over (else None)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.stale: dict | None = None

    def _busy(self, owner: dict) -> RunDirError:
        return RunDirError(f"run folder {self.path.parent} is in use by process {owner.get('pid', '?')} on "
                           f"{owner.get('host', '?')} (lock {self.path}); wait for it to end, or use another folder")

    def __enter__(self) -> RunLock:
        import fcntl

        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._busy(_read_owner(self.path)) from None
            except OSError as e:  # no flock on this file system: fall back to the pid in the file
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                return self._enter_by_pid()
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:  # not unlinked by its last holder meanwhile
                    break
            os.close(fd)
        else:
            raise RunDirError(f"cannot take the lock {self.path}")
        owner = _read_owner(self.path)
        if owner.get("pid") not in (None, os.getpid()):
            self.stale = owner  # it held no flock: its process ended (or the pid was reused)
        self.fd = fd
        self._write_owner()
        return self

    def _enter_by_pid(self) -> RunLock:
        for _ in range(10):
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self._write_owner()
                return self
            except FileExistsError:
                owner = _read_owner(self.path)
                pid = owner.get("pid")
                if isinstance(pid, int) and owner.get("host") == socket.gethostname() and _pid_alive(pid):
                    raise self._busy(owner) from None
                self.stale = owner
                self.path.unlink(missing_ok=True)
        raise RunDirError(f"cannot take the lock {self.path}")

    def _write_owner(self) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if _read_owner(self.path).get("pid") == os.getpid():
                self.path.unlink()
        os.close(self.fd)  # releases the flock
        self.fd = None
