"""A worker process: load the model once (one load at a time in a run folder), then take tasks
from the main process over its own pipe, solve each (``solve.solve_task``), write its record into
the run folder itself and say so. A task that raises is recorded as failed and the worker goes on;
after an error that leaves the CUDA context broken the worker exits, for a fresh one to replace it.

Messages to the main process: ``("ready", wid, None)``, ``("load_failed", wid, error)``,
``("start", wid, task_id)``, ``("done", wid, task_id)``, ``("write_failed", wid, (task_id, error))``.
From it: ``(task, deadlines)``, or None to stop.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from pathlib import Path

from arcttt.budget import TaskDeadlines
from arcttt.data import Task, show_id, shown
from arcttt.errors import first_line, write_fault
from arcttt.faults import act_out, faults_from_env
from arcttt.records import TaskResult, task_hash
from arcttt.rundir import failed_result, log_to, write_record
from arcttt.solve import solve_task

log = logging.getLogger("arcttt.worker")

# errors after which a CUDA context stays broken: the worker exits and a fresh process replaces it
FATAL_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error")
LOAD_LOCK_TIMEOUT_S = 600.0
LOAD_LOCK = ".load.lock"  # in the run folder: one model load at a time (a file lock dies with its holder)


def worker_main(wid: int, gpu: int | None, model_dir: str, cfg_json: dict, run_dir: str, conn,
                hashes: dict) -> None:
    """A worker process: load the model once, then answer tasks sent over ``conn`` until told to stop.

    Messages go over the worker's own pipe (not a queue shared by all workers): a worker killed in
    the middle of a message can then corrupt only its own channel, which dies with it. The main
    process alone handles SIGINT (a Ctrl-C reaches the whole process group) and stops the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # exit through Python: its semaphores are cleaned up
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # progress bars (model loading) without a multiprocessing semaphore
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from arcttt.model import import_unsloth_first, load_model
    from arcttt.offline import set_offline_env

    set_offline_env()  # before transformers or unsloth is first imported
    os.environ["UNSLOTH_COMPILE_LOCATION"] += f"-worker{wid}"  # workers importing unsloth at once race on one folder
    log_to(Path(run_dir) / "log.txt", f"worker{wid}")
    log.info("worker %d: pid %d", wid, os.getpid())
    faults = faults_from_env()  # a test hook (faults.py); {} in a real run
    # one load at a time (unsloth's imports and patching race); a file lock dies with its holder, so
    # a worker killed while loading blocks no one (and leaves no semaphore behind)
    with file_lock(Path(run_dir) / LOAD_LOCK, LOAD_LOCK_TIMEOUT_S):
        try:
            import_unsloth_first(cfg_json["model"]["backend"])  # before arcttt.config imports transformers
            from arcttt.config import config_from_json

            cfg = config_from_json(cfg_json)
            session = load_model(model_dir, cfg.model)
        except Exception as e:  # reported to the main process, which decides what to do
            log.error("worker %d: model failed to load: %s", wid, shown(str(e), 300))
            _send(conn, ("load_failed", wid, first_line(f"{type(e).__name__}: {e}")))
            return
    if not _send(conn, ("ready", wid, None)):
        return
    parent = mp.parent_process()
    while True:
        if not conn.poll(1.0):
            if parent is not None and not parent.is_alive():
                return  # the main process was killed: stop rather than linger
            continue
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        task, deadlines = msg
        if not _send(conn, ("start", wid, task.id)):
            return
        result = answer_task(session, task, cfg, deadlines, wid, hashes, faults)
        try:
            write_record(Path(run_dir), result)
        except OSError as e:  # the disk is full or gone: the task keeps its default, the main process says so
            log.error("task %s: %s", show_id(task.id), write_fault(e))
            if not _send(conn, ("write_failed", wid, (task.id, write_fault(e)))):
                return
            continue
        if not _send(conn, ("done", wid, task.id)):
            return
        if result.status == "error" and any(s in result.error for s in FATAL_ERRORS):
            log.error("worker %d: the GPU is unusable after %s; exiting so that a fresh worker replaces it",
                      wid, result.error)
            os._exit(1)


def answer_task(session, task: Task, cfg, deadlines: TaskDeadlines, wid: int, hashes: dict,
                faults: dict[str, str] | None = None) -> TaskResult:
    """A worker's answer to one task, whatever happens: :func:`solve_task`'s record, or an "error"
    record when it raises; stamped with the run's hashes. Shared by the local worker processes and
    the Ray actors (``ray_engine``). ``faults``: the tests' hook (``faults.py``)."""
    start = time.time()
    try:
        act_out((faults or {}).get(task.id))
        result = solve_task(session, task, cfg, deadlines, wid)
    except BaseException as e:  # noqa: BLE001 - a tokenizer's Rust panic is a BaseException
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # SystemExit from the SIGTERM handler, KeyboardInterrupt
        # the task fails; the worker and its loaded model go on (a crash would reload it per task)
        log.error("task %s failed on worker %d: %s\n%s", show_id(task.id), wid, shown(str(e), 300),
                  traceback.format_exc())
        result = failed_result(task.id, "error", f"{type(e).__name__}: {e}", wid, start)
    result.task_hash, result.config_hash, result.model_hash = task_hash(task), hashes["config"], hashes["model"]
    return result


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def _send(conn, msg) -> bool:
    """Send to the main process; False (no traceback) when it is gone."""
    try:
        conn.send(msg)
        return True
    except (OSError, EOFError):
        return False


@contextlib.contextmanager
def file_lock(path: Path, timeout: float):
    """Hold an exclusive ``flock`` on ``path`` for the block, waiting up to ``timeout`` seconds; a
    lock not had by then is given up on (its holder is presumed stuck) and the block runs anyway."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    log.warning("model load lock %s still held after %.0f s; loading anyway", path, timeout)
                    break
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)
