"""The time-budgeted run: for each task, TTT data -> reset + train LoRA -> search -> select -> record.

Layout of work:
- the main process loads the challenges, writes a default submission at once (valid from the first
  second), orders the tasks, and hands them out; it holds no model and no CUDA context;
- one worker process per visible GPU (``CUDA_VISIBLE_DEVICES`` set to its own GPU before torch is
  imported) loads the model once, under a lock so that unsloth's imports and patching never race,
  then asks for work: when a worker is idle the main process gives it the next task with deadlines
  computed at that moment (``budget.Budget``), so each task's share reflects the time really left;
- a worker writes each finished task's result to ``RUN_DIR/tasks/<id>.json`` itself (atomically),
  then tells the main process, which merges it into ``submission.json`` (rewritten atomically);
- a worker that dies, or is still on a task past its hang limit, is killed and replaced; its task is
  retried once on another worker if time allows, else keeps its default;
- a run folder belongs to one run at a time (``rundir.RunLock``); a run started again on a folder
  holding records reuses them only with ``resume=True``, and then only the "ok" records whose task
  content, config and model hashes match this run (``records.TaskResult.stale_because``);
- SIGINT and SIGTERM stop the run like the deadline does (workers stopped at once, their tasks
  recorded as ``stopped``) and raise :class:`RunStopped`; the submission on disk stays valid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from arcttt.budget import Budget, TaskDeadlines, expected_cost, order_tasks
from arcttt.data import Challenges, Task, grid_to_list, load_challenges, log_rejected, show_id, shown
from arcttt.hardware import visible_gpus
from arcttt.records import (SCHEMA_VERSION, Phase, TaskResult, TestResult, TTTResult, config_hash, model_hash,
                            task_file_name, task_hash)
from arcttt.rundir import RunLock, claim, record_files
from arcttt.submission import SubmissionError, SubmissionWriter, atomic_write_json, load_submission, validate_submission

log = logging.getLogger("arcttt.pipeline")

# errors after which a CUDA context stays broken: the worker exits and a fresh process replaces it
FATAL_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error")
LOAD_LOCK_TIMEOUT_S = 600.0
STOP_RESERVE_S = 2.0  # the dispatch loop ends this long before the deadline, to shut workers down
LOAD_LOCK = ".load.lock"  # in the run folder: one model load at a time (a file lock dies with its holder)


class RunStopped(BaseException):
    """SIGINT or SIGTERM stopped the run; the submission on disk is valid (defaults where unanswered)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class RunWriteError(Exception):
    """The run could not write a file it needs (run folder, submission, record); names the path."""


def write_fault(e: OSError) -> str:
    """An OSError as one line naming the path: ``cannot write X: No space left on device``."""
    name = e.filename2 or e.filename  # os.replace(tmp, path) names the target second
    where = f" {name}" if name else ""
    return f"cannot write{where}: {e.strerror or type(e).__name__}"


def check_time_budget(seconds) -> None:
    """A time budget must be a positive finite number of seconds (None: the preset's); else ValueError."""
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds <= 0:
        raise ValueError(f"--time-budget must be a positive number of seconds, got {shown(seconds)}")


# --- one task ------------------------------------------------------------------------------------

class _Phases:
    """Times the phases of one task: ``with phases("ttt"): ...`` appends a Phase when it ends (or
    fails), so a phase is recorded with its real end."""

    def __init__(self):
        self.rows: list[Phase] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.time()
        try:
            yield
        finally:
            self.rows.append(Phase(name, start, time.time()))


def solve_task(session, task: Task, cfg, d: TaskDeadlines, worker: int = 0) -> TaskResult:
    """Run one task end to end on a loaded model; returns its record (see records.py)."""
    import torch

    from arcttt.submission import fallback_attempts
    from arcttt.ttt import train_task
    from arcttt.ttt_data import training_sequences

    phase = _Phases()
    result = TaskResult(task.id, "ok", worker=worker, start=time.time(), deadlines=d.to_json(), phases=phase.rows,
                        task_hash=task_hash(task))
    defaults = fallback_attempts(task)  # of the task as given, whatever frame it is solved in
    if cfg.data.input_frame:
        from arcttt.pretransform import choose_frame, reframe

        with phase("frame"):
            session.reset()
            frame = choose_frame(session.model, task, session.token_map, cfg.data.max_len)
        result.frame = frame.to_json()
        task = reframe(task, frame.symmetry)
    with phase("data"):
        data = training_sequences(task, session.token_map, cfg.data)
    session.reset()  # the LoRA of the previous task, back to its initial state
    result.ttt = TTTResult(skipped=data.skipped, sequences=len(data.sequences))
    if data.sequences:
        with phase("ttt"):
            trained = train_task(session, data.sequences, cfg.ttt, deadline=d.ttt)
        trained.sequences, trained.skipped = len(data.sequences), trained.skipped or data.skipped
        result.ttt = trained

    # after TTT, each test input gets an equal part of what is left, split between search and
    # selection in the budget's proportions (so one input's selection cannot eat the next one's search)
    search_part = cfg.budget.search_frac / (1.0 - cfg.budget.ttt_frac)
    for i in range(task.n_test):
        start = time.time()
        window = max(0.0, d.end - start) / (task.n_test - i)
        test = TestResult(attempts=[grid_to_list(g) for g in defaults[i]])
        try:
            test = _answer_test_input(session, task, i, cfg, defaults[i], phase,
                                      search_end=start + window * search_part, select_end=start + window)
        except torch.OutOfMemoryError as e:  # this input keeps its cheap guesses; the others go on
            torch.cuda.empty_cache()
            test.error = f"out of memory: {_first_line(e)}"
            log.warning("task %s test %d: %s", show_id(task.id), i, test.error)
        result.tests.append(test)
    result.end = time.time()
    return result


def _answer_test_input(session, task: Task, i: int, cfg, defaults, phase: _Phases, *,
                       search_end: float, select_end: float) -> TestResult:
    """Search, score and choose the two attempts for test input ``i``."""
    import torch

    from arcttt.kvcache import PromptCaches
    from arcttt.search import SearchStats, search_session, view_augmentations
    from arcttt.select import choose_attempts, score_session
    from arcttt.ttt_data import answer_room, test_prompts

    tm = session.token_map
    room = answer_room(task, i, tm) if cfg.data.answer_room == "evidence" else None
    stats = SearchStats()
    with phase("search"):
        augs = view_augmentations(task, i, cfg.select.n_views, keep_background=cfg.select.keep_background,
                                  seed=cfg.select.seed)
        score_views = test_prompts(task, i, tm, augs, cfg.data.max_len, room)
        # the search keeps the prompt caches of the scoring's prompts it prefills (the identity view's)
        keep = PromptCaches([v.prompt for v in score_views[:cfg.select.n_views]], cfg.select.max_cache_bytes)
        augs = view_augmentations(task, i, cfg.search.n_augmentations, keep_background=cfg.search.keep_background,
                                  seed=cfg.search.seed)
        views = test_prompts(task, i, tm, augs, cfg.data.max_len, room)
        candidates = search_session(session, task, i, views, cfg.search, deadline=search_end, stats=stats, keep=keep)
    select_error = None
    with phase("select"):
        try:
            scored = score_session(session, task, i, candidates, score_views, cfg.select, deadline=select_end,
                                   prompt_caches=keep)
        except torch.OutOfMemoryError as e:
            # the search's candidates survive: ranked by their hits and search logprob, no views scored
            keep.clear()
            torch.cuda.empty_cache()
            select_error = f"out of memory in scoring: {_first_line(e)}"
            log.warning("task %s test %d: %s; ranking by the search alone", task.id, i, select_error)
            scored = score_session(session, task, i, candidates, [], cfg.select, deadline=select_end)
        attempts = choose_attempts(scored, *defaults)  # the cheap guesses fill in
    return TestResult(attempts=[grid_to_list(a) for a in attempts],
                      candidates=[c.to_json() for c in scored[:cfg.select.keep_candidates]],
                      search={"views": stats.views, "forwards": stats.forwards, "completions": stats.completions,
                              "timed_out": stats.timed_out, "oom": stats.oom},
                      error=select_error)


def _first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut at ``limit`` characters (CUDA's OOM message runs on for lines)."""
    text = str(error)
    return text.splitlines()[0][:limit] if text else ""


def one_line(text: str, limit: int = 300) -> str:
    """An error for a record or a message: its first line, cut at ``limit`` characters (with the size)."""
    lines = str(text).strip().splitlines() or [""]
    first = lines[0]
    if len(first) > limit or len(lines) > 1:
        first = f"{first[:limit]}... ({len(str(text)):,} chars)"
    return first


def failed_result(task_id: str, status: str, error: str, worker: int | None, start: float) -> TaskResult:
    return TaskResult(task_id, status, error=one_line(error), worker=worker, start=start, end=time.time())


def result_path(run_dir: Path, task_id: str) -> Path:
    """Where a task's record lives in a run folder: ``tasks/<records.task_file_name(id)>``, a name
    that stays inside ``tasks/`` whatever the id holds."""
    return Path(run_dir) / "tasks" / task_file_name(task_id)


def write_record(run_dir: Path, result: TaskResult) -> None:
    atomic_write_json(result_path(run_dir, result.task_id), result.to_json())


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


# --- worker process ------------------------------------------------------------------------------

def _worker_main(wid: int, gpu: int | None, model_dir: str, cfg_json: dict, run_dir: str, conn,
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
    _log_to(Path(run_dir) / "log.txt", f"worker{wid}")
    log.info("worker %d: pid %d", wid, os.getpid())
    # one load at a time (unsloth's imports and patching race); a file lock dies with its holder, so
    # a worker killed while loading blocks no one (and leaves no semaphore behind)
    with _file_lock(Path(run_dir) / LOAD_LOCK, LOAD_LOCK_TIMEOUT_S):
        try:
            import_unsloth_first(cfg_json["model"]["backend"])  # before arcttt.config imports transformers
            from arcttt.config import config_from_json

            cfg = config_from_json(cfg_json)
            session = load_model(model_dir, cfg.model)
        except Exception as e:  # reported to the main process, which decides what to do
            log.error("worker %d: model failed to load: %s", wid, shown(str(e), 300))
            _send(conn, ("load_failed", wid, one_line(f"{type(e).__name__}: {e}")))
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
        start = time.time()
        if not _send(conn, ("start", wid, task.id)):
            return
        try:
            _act_out_fault(cfg.inject_faults.get(task.id))
            result = solve_task(session, task, cfg, deadlines, wid)
        except BaseException as e:  # noqa: BLE001 - a tokenizer's Rust panic is a BaseException
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # SystemExit from the SIGTERM handler, KeyboardInterrupt
            # the task fails; the worker and its loaded model go on (a crash would reload it per task)
            log.error("task %s failed on worker %d: %s\n%s", show_id(task.id), wid, shown(str(e), 300),
                      traceback.format_exc())
            result = failed_result(task.id, "error", f"{type(e).__name__}: {e}", wid, start)
        result.task_hash, result.config_hash, result.model_hash = task_hash(task), hashes["config"], hashes["model"]
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
def _file_lock(path: Path, timeout: float):
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


def _act_out_fault(fault: str | None) -> None:
    if fault == "crash":
        os._exit(3)
    if fault == "hang":
        while True:
            time.sleep(3600)
    if fault == "raise":
        raise RuntimeError("injected fault")
    if fault == "panic":  # a real one: a pre-tokenizer regex past Oniguruma's retry limit
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers

        tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("((a+)+)+c"), behavior="isolated")
        tok.encode("a" * 30000 + "!")


def _log_to(path: Path, name: str) -> logging.Handler:
    """Send arcttt's log records to ``path`` (appending; every process of the run shares it)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {name} %(levelname)s %(message)s"))
    root = logging.getLogger("arcttt")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


# --- the main process ----------------------------------------------------------------------------

@dataclass
class _Worker:
    wid: int
    gpu: int | None
    proc: mp.Process
    conn: object  # the main process's end of the worker's duplex pipe
    state: str = "loading"  # loading | idle | busy | dead
    task: Task | None = None
    deadlines: TaskDeadlines | None = None
    hang_at: float = 0.0


@dataclass
class _Dispatch:
    """What the main process tracks while tasks run."""

    pending: deque
    costs: dict[str, float]
    retried: set[str] = field(default_factory=set)
    avoid: dict[str, int] = field(default_factory=dict)  # task id -> worker it failed on
    load_errors: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)  # writes that failed (one line each)


def resume(run_dir: Path, writer: SubmissionWriter, tasks: dict[str, Task], hashes: dict) -> tuple[set[str], Counter]:
    """Reuse the records in ``run_dir`` that this run would produce too: status "ok", this schema,
    and the same task content, config and model hashes; their attempts go into ``writer``. Records
    of this run's tasks that do not match are removed (the tasks are redone). Returns (reused task
    ids, Counter of why the others are redone). Records of tasks not in this run are left alone."""
    done: set[str] = set()
    redo: Counter = Counter()
    for path in record_files(run_dir):
        try:
            rec = TaskResult.from_json(json.loads(path.read_text()), f"tasks/{path.name}")
        except (OSError, ValueError) as e:  # JSON and record errors are ValueErrors
            log.warning("ignoring unreadable result %s: %s", path.name, shown(str(e)))
            continue
        task = tasks.get(rec.task_id)
        if task is None or path.name != task_file_name(rec.task_id):
            continue
        why = rec.stale_because(task_hash(task), hashes["config"], hashes["model"])
        if why is None:
            try:
                writer.set(rec.task_id, rec.attempts())
                done.add(rec.task_id)
                continue
            except SubmissionError as e:
                why = f"unusable answers ({shown(str(e))})"
        redo[why] += 1
        path.unlink(missing_ok=True)
    return done, redo


@contextlib.contextmanager
def stop_on_signals():
    """While inside, SIGINT and SIGTERM raise :class:`RunStopped` in the main thread, once: a second
    signal while the run shuts down is ignored. Elsewhere than the main thread, does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def handler(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise RunStopped(signum)

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def worker_count(requested: int | None, gpus: int, tasks: int, cpus: int | None) -> tuple[int, list[str]]:
    """Workers to start (default: one per GPU, one on CPU), capped at the tasks to do and at the
    CPUs (a worker needs a core of its own, even to drive a GPU); a note says when it was capped."""
    n = requested or max(1, gpus)
    cap = max(1, min(tasks, cpus or n))
    if n <= cap:
        return n, []
    return cap, [f"workers: {n} asked, {cap} started ({tasks} tasks to do, {cpus} CPUs)"]


def leave_valid_submission(challenges: Path, out: Path) -> str:
    """After a run that failed or was stopped: keep ``out`` if it is a valid submission for
    ``challenges``, else write the default answers there. Returns one line saying which (or why
    neither could be done)."""
    try:
        loaded = load_challenges(challenges)
        counts = loaded.test_counts()
        if Path(out).is_file() and not validate_submission(load_submission(out), counts):
            return f"{out} holds a valid submission"
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        SubmissionWriter.for_challenges(out, loaded)
        return f"{out} holds the default answers"
    except OSError as e:
        return f"no submission written ({write_fault(e)})"
    except Exception as e:  # noqa: BLE001 - unreadable challenges and the like: say it, do not mask the first error
        return f"no submission written ({type(e).__name__}: {shown(str(e))})"


def run(challenges: Path, model: Path, out: Path, *, config: str | Path = "auto",
        time_budget: float | None = None, workers: int | None = None, run_dir: Path | None = None,
        overrides: list[str] | tuple[str, ...] = (), progress: bool = True, resume: bool = False) -> dict:
    """Answer every task of ``challenges`` with ``model`` before the deadline; write ``out``.

    ``out`` is valid from the start (defaults) and rewritten atomically as results arrive. A run
    folder holding another run's records is reused only with ``resume`` (matching records kept).
    Raises ValueError for a bad ``time_budget``, rundir.RunDirError for a run folder in use or
    holding another run, data.DataFileError for an unreadable challenges file, config.ConfigError for
    a bad configuration, model.ModelLoadError when no worker can load the model, RunWriteError when a
    file cannot be written, RunStopped on SIGINT/SIGTERM (``out`` then holds a valid submission).
    """
    check_time_budget(time_budget)
    start = time.time()
    out = Path(out).absolute()
    run_dir = Path(run_dir).absolute() if run_dir else out.parent / "arcttt-run"
    with stop_on_signals(), _write_faults():
        (run_dir / "tasks").mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) as lock:
            how = claim(run_dir, resume=resume)
            return _run_claimed(Path(challenges).absolute(), Path(model).absolute(), out, run_dir, start, how, lock,
                                config=config, time_budget=time_budget, workers=workers, overrides=overrides,
                                progress=progress, command="run", solutions=None)


@contextlib.contextmanager
def _write_faults():
    """An OSError out of the run (a folder that cannot be made, a full disk) becomes RunWriteError."""
    try:
        yield
    except OSError as e:
        raise RunWriteError(write_fault(e)) from None


def _run_claimed(challenges: Path, model: Path, out: Path, run_dir: Path, start: float, how: str, lock: RunLock,
                 *, config, time_budget, workers, overrides, progress, command: str, solutions: Path | None) -> dict:
    loaded: Challenges = load_challenges(challenges)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = SubmissionWriter.for_challenges(out, loaded)  # valid from here on
    handler = _log_to(run_dir / "log.txt", "main")
    try:
        if lock.stale:
            log.warning("took over the lock of process %s, which no longer holds it", lock.stale.get("pid"))
        from arcttt.config import load_config  # after the default submission: it imports torch

        cfg = load_config(config, [*overrides, *([f"workers={workers}"] if workers is not None else [])])
        if time_budget:
            cfg.budget = cfg.budget.for_budget(time_budget)
        meta = {"command": command, "challenges": str(challenges), "model": str(model), "out": str(out),
                "run_dir": str(run_dir), "solutions": str(solutions) if solutions else None, "folder": how}
        return _run(loaded, model, writer, cfg, start, run_dir, progress, meta, how == "resume")
    finally:
        logging.getLogger("arcttt").removeHandler(handler)
        handler.close()
        (run_dir / LOAD_LOCK).unlink(missing_ok=True)


def _run(loaded: Challenges, model: Path, writer: SubmissionWriter, cfg, start: float, run_dir: Path,
         progress: bool, meta: dict, resuming: bool) -> dict:
    from arcttt.config import save_config

    log_rejected(loaded, log.warning)
    writes: list[str] = []
    for r in loaded.rejected:
        write_failure(run_dir, r.task_id, "rejected", r.reason, None, start, writes)
    cfg_json = cfg.to_json()
    # a saved adapter is part of the model: one retrained at the same path must not be resumed
    hashes = {"config": config_hash(cfg_json),
              "model": model_hash(model) + (f"+{model_hash(cfg.model.adapter)}" if cfg.model.adapter else "")}
    done, redo = resume(run_dir, writer, loaded.tasks, hashes) if resuming else (set(), Counter())
    if resuming:
        log.info("resume: %d tasks reused from %s; %d redone (%s)", len(done), run_dir, sum(redo.values()),
                 ", ".join(f"{n}: {why}" for why, n in redo.most_common()) or "none")
    todo = order_tasks([t for t in loaded.tasks.values() if t.id not in done], cfg.budget.order)

    gpus = visible_gpus()
    n_workers, notes = worker_count(cfg.workers, len(gpus), len(todo), os.cpu_count())
    for note in notes:
        log.info("note: %s", note)
    budget = Budget(cfg.budget, start, n_workers)
    save_config(cfg, run_dir / "config.json")
    atomic_write_json(run_dir / "run.json", {
        **meta, "start": start, "deadline": budget.deadline, "budget_s": cfg.budget.time_budget_s,
        "workers": n_workers, "preset": cfg.preset, "tasks": loaded.ids, "resumed": sorted(done),
        "config_hash": hashes["config"], "model_hash": hashes["model"], "schema": SCHEMA_VERSION})
    log.info("run: %d tasks to do (%d resumed, %d rejected), %d workers, deadline in %.0f s",
             len(todo), len(done), len(loaded.rejected), n_workers, budget.remaining())

    summary = {"tasks": len(loaded.ids), "resumed": len(done), "redone": dict(redo), "rejected": len(loaded.rejected),
               "answered": 0, "failed": 0, "unstarted": 0, "notes": notes, "write_errors": writes}
    from arcttt.model import describe_model_dir

    summary["model"] = describe_model_dir(model, cfg.model.format)
    if todo:
        from arcttt.model import ModelLoadError, check_model_dir

        check_model_dir(model, cfg.model.format)  # fail fast, before any worker starts, on a directory that cannot be right
        state = _Dispatch(deque(todo), {t.id: expected_cost(t) for t in todo}, writes=writes)
        _dispatch(state, budget, cfg_json, hashes, model, run_dir, writer, gpus, n_workers, summary, progress)
        summary["unstarted"] = len(state.pending)
        if state.load_errors and summary["answered"] + summary["failed"] == 0:
            raise ModelLoadError(f"model {model} could not be loaded: {state.load_errors[0]}")
    summary.update(seconds=time.time() - start, margin_s=budget.deadline - time.time())
    atomic_write_json(run_dir / "summary.json", summary)
    log.info("run finished: %s", summary)
    return summary


def _dispatch(state: _Dispatch, budget: Budget, cfg_json: dict, hashes: dict, model: Path, run_dir: Path, writer,
              gpus: list[int], n_workers: int, summary: dict, progress: bool) -> None:
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # fresh interpreters: each worker imports torch for its own GPU
    min_task_s = cfg_json["budget"]["min_task_s"]

    def start_worker(wid: int) -> _Worker:
        gpu = gpus[wid % len(gpus)] if gpus else None
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, name=f"arcttt-worker{wid}", daemon=True,
                           args=(wid, gpu, str(model), cfg_json, str(run_dir), child_conn, hashes))
        proc.start()
        child_conn.close()  # so that a dead worker reads as EOF here, not as silence
        return _Worker(wid, gpu, proc, conn)

    pool = {wid: start_worker(wid) for wid in range(n_workers)}
    bar = tqdm(total=len(state.pending), desc="tasks", unit="task", disable=not progress)

    def settle(w: _Worker, status: str, error: str) -> None:
        """A worker failed on its task: retry it once elsewhere, else record the failure."""
        task = w.task
        log.error("task %s: %s on worker %d", show_id(task.id), error, w.wid)
        if task.id not in state.retried and budget.can_start():
            state.retried.add(task.id)
            state.avoid[task.id] = w.wid
            state.pending.appendleft(task)
        else:
            write_failure(run_dir, task.id, status, error, w.wid, w.deadlines.start, state.writes)
            summary["failed"] += 1
            bar.update()
        w.task = None

    stopped: RunStopped | None = None
    try:
        # stop a little before the deadline: shutting the workers down takes a moment too
        while time.time() < budget.deadline - STOP_RESERVE_S:
            for event in _poll(pool, timeout=0.2):
                _handle_event(*event, pool, state, run_dir, writer, summary, bar)
            for w in list(pool.values()):
                if w.state == "busy" and not w.proc.is_alive():
                    settle(w, "error", f"worker crashed (exit code {w.proc.exitcode})")
                elif w.state == "busy" and time.time() > w.hang_at:
                    w.proc.kill()
                    settle(w, "timeout", f"worker hung: no result {w.hang_at - w.deadlines.start:.0f} s after start")
                elif w.state == "idle" and not w.proc.is_alive():
                    log.error("worker %d exited between tasks (exit code %s)", w.wid, w.proc.exitcode)
                elif w.state == "loading" and not w.proc.is_alive():
                    w.state = "dead"  # died loading the model: another try would most likely die too
                    continue
                else:
                    continue
                w.proc.join(5)
                w.conn.close()
                w.state = "dead"
                if state.pending and budget.remaining() > 2 * min_task_s:
                    pool[w.wid] = start_worker(w.wid)  # a fresh process on the same GPU
            for w in pool.values():
                if w.state == "idle" and state.pending and budget.can_start():
                    _give_task(w, state, pool, budget)
            if not any(w.state == "busy" for w in pool.values()) and (
                    not state.pending or all(w.state == "dead" for w in pool.values())):
                break  # all done, or no worker left to do the rest
    except RunStopped as e:
        stopped = e
        log.warning("run stopped by %s: stopping the workers; unfinished tasks keep their defaults", e.name)
        raise
    finally:
        bar.close()
        _stop(pool)
        status, why = ("stopped", f"run stopped by {stopped.name}") if stopped else \
            ("timeout", "still running at the deadline")
        for w in pool.values():  # still running at the deadline (or the signal): they keep their defaults
            if w.state == "busy" and w.task is not None:
                write_failure(run_dir, w.task.id, status, why, w.wid, w.deadlines.start, state.writes)
                summary["failed"] += 1
        status, why = ("stopped", f"not started: run stopped by {stopped.name}") if stopped else \
            ("default", "not started before the deadline")
        for task in state.pending:
            write_failure(run_dir, task.id, status, why, None, time.time(), state.writes)


def _give_task(w: _Worker, state: _Dispatch, pool: dict, budget: Budget) -> None:
    others = any(o.state in ("idle", "loading", "busy") and o.wid != w.wid for o in pool.values())
    # a retried task is left for another worker (if there is one); this one takes the next task
    task = next((t for t in state.pending if not (others and state.avoid.get(t.id) == w.wid)), None)
    if task is None:
        return
    state.pending.remove(task)
    # the tasks other workers are on still hold their share of the time left: count them in full
    running = sum(state.costs[o.task.id] for o in pool.values() if o.state == "busy" and o.task is not None)
    pending_cost = state.costs[task.id] + sum(state.costs[t.id] for t in state.pending) + running
    w.deadlines = budget.deadlines(state.costs[task.id], pending_cost)
    w.hang_at = budget.hang_limit(w.deadlines)
    w.task, w.state = task, "busy"
    try:
        w.conn.send((task, w.deadlines))
    except OSError:  # the worker just died: its liveness check settles the task
        pass


def _poll(pool: dict, timeout: float) -> list[tuple]:
    """Every message the workers have sent, waiting up to ``timeout`` for the first."""
    from multiprocessing.connection import wait

    conns = [w.conn for w in pool.values() if w.state != "dead" and not w.conn.closed]
    if not conns:
        time.sleep(timeout)
        return []
    events = []
    for conn in wait(conns, timeout):
        try:
            while conn.poll():
                events.append(conn.recv())
        except (EOFError, OSError):
            conn.close()  # the worker is gone; its liveness check settles its task
    return events


def _handle_event(kind: str, wid: int, payload, pool: dict, state: _Dispatch, run_dir: Path, writer,
                  summary: dict, bar) -> None:
    w = pool.get(wid)
    if kind == "ready" and w is not None:
        w.state = "idle"
    elif kind == "load_failed":
        state.load_errors.append(payload)
        if w is not None:
            w.state = "dead"
    elif kind == "write_failed" and w is not None and w.task is not None and w.task.id == payload[0]:
        state.writes.append(payload[1])  # the worker could not write its record: the task keeps its default
        summary["failed"] += 1
        bar.update()
        w.task, w.state = None, "idle"
    elif kind == "done" and w is not None and w.task is not None and w.task.id == payload:
        try:
            result = TaskResult.from_json(json.loads(result_path(run_dir, payload).read_text()))
            if result.status == "ok":
                writer.set(payload, result.attempts())
                summary["answered"] += 1
            else:
                summary["failed"] += 1
        except OSError as e:  # the submission (or the record) cannot be written or read now: defaults kept
            log.error("task %s: %s; keeping defaults", show_id(payload), write_fault(e))
            state.writes.append(write_fault(e))
            summary["failed"] += 1
        # an unreadable or malformed result (SubmissionError, JSON and record errors are ValueErrors):
        # the task keeps its default, the run goes on
        except ValueError as e:
            log.error("task %s: result not usable (%s); keeping defaults", show_id(payload), shown(str(e)))
            summary["failed"] += 1
        bar.update()
        w.task, w.state = None, "idle"


def _stop(pool: dict, grace: float = STOP_RESERVE_S / 2, clock=time.monotonic) -> None:
    """Stop every worker within about ``grace`` + 1 s, however many there are: busy ones get SIGTERM
    (they exit through Python, cleaning up) and idle ones are asked to exit, all at once; then one
    shared wait; then whoever is left is killed, again all at once, and waited for once more."""
    for w in pool.values():
        if w.state == "busy":
            w.proc.terminate()
        elif w.proc.is_alive() and not w.conn.closed:
            with contextlib.suppress(OSError):
                w.conn.send(None)
    for limit in (grace, 1.0):
        end = clock() + limit
        for w in pool.values():
            w.proc.join(timeout=max(0.0, end - clock()))
        late = [w for w in pool.values() if w.proc.is_alive()]
        if not late:
            break
        for w in late:
            w.proc.kill()
    for w in pool.values():
        with contextlib.suppress(OSError):
            w.conn.close()


# --- dry run -------------------------------------------------------------------------------------

def _add_held_out(challenges: Path, solutions: Path, n: int) -> dict[str, list[str]]:
    """Append ``n`` held-out synthetic tasks (half ``trained``, half ``unseen`` families) to a Kaggle
    challenges/solutions pair; returns each group's task ids."""
    from arcttt.data import grid_to_list, task_to_json
    from arcttt.synthetic import held_out

    chal, sols = json.loads(challenges.read_text()), json.loads(solutions.read_text())
    groups = {}
    for name, count in (("trained", (n + 1) // 2), ("unseen", n // 2)):
        tasks = held_out(name, count)
        for t in tasks:
            chal[t.id] = task_to_json(t)
            sols[t.id] = [grid_to_list(g) for g in t.test_outputs]
        groups[f"held-out synthetic, {name} families"] = [t.id for t in tasks]
    challenges.write_text(json.dumps(chal, separators=(",", ":")))
    solutions.write_text(json.dumps(sols, separators=(",", ":")))
    return groups


def dry_run(out: Path, *, split: str = "arc-agi-2-eval", tasks: int | None = 10, model: Path | None = None,
            time_budget: float | None = None, config: str | Path | None = None,
            challenges: Path | None = None, solutions: Path | None = None, workers: int | None = None,
            overrides: list[str] | tuple[str, ...] = (), progress: bool = True, resume: bool = False,
            synthetic: int = 0) -> dict:
    """Run on tasks with known solutions and score: the bundled ``split`` (first ``tasks`` by id)
    or given ``challenges``/``solutions`` files, plus ``synthetic`` held-out synthetic tasks (half
    of families our model was trained on, half of families it never saw: ``synthetic.HELD_OUT``),
    each group scored on its own too (``summary["groups"]``). With no model, uses the repository's
    own small trained model (``weights/arcttt-tiny-syn``, with the ``cpu-tiny`` preset; the tiny
    random model with ``cpu-smoke`` when it is missing). Writes into ``out``: submission.json,
    score.json, report.html and the run folder files (tasks/, run.json, config.json, log.txt,
    timeline.png).

    ``out`` is the dry run's own folder: an earlier dry run's records there are replaced (the
    profile and report then show this run's timings), unless ``resume`` reuses those that match.
    A folder holding the records of an ``arcttt run`` is refused unless ``resume``."""
    from arcttt.data import export_split, load_solutions
    from arcttt.score import score_submission

    check_time_budget(time_budget)
    start = time.time()
    out = Path(out).absolute()
    with stop_on_signals(), _write_faults():
        (out / "tasks").mkdir(parents=True, exist_ok=True)
        with RunLock(out) as lock:
            how = claim(out, resume=resume, replace_dry_run=True)
            groups: dict[str, list[str]] = {}
            if challenges is None:
                challenges, solutions = export_split(split, out / "data", limit=tasks)
                groups[split] = list(load_solutions(solutions))
                if synthetic:
                    groups.update(_add_held_out(challenges, solutions, synthetic))
            if model is None:
                from arcttt.config import load_config
                from arcttt.model import SHIPPED_MODEL, make_tiny_model

                fmt = load_config(config or "cpu-smoke", overrides).model.format or "compact"
                if fmt == "compact" and (SHIPPED_MODEL / "config.json").is_file():
                    model = SHIPPED_MODEL  # our own small trained model (weights/README.md)
                    config = config or "cpu-tiny"
                else:  # another format asked for, or an installed package without the repository's weights/
                    config = config or "cpu-smoke"
                    model = out / "tiny-model"
                    if not (model / "config.json").is_file() or not resume:
                        shutil.rmtree(model, ignore_errors=True)
                        model = make_tiny_model(model, fmt)
            solutions = Path(solutions).absolute() if solutions is not None else None
            summary = _run_claimed(Path(challenges).absolute(), Path(model).absolute(), out / "submission.json", out,
                                   start, how, lock, config=config or "auto", time_budget=time_budget, workers=workers,
                                   overrides=overrides, progress=progress, command="dry-run", solutions=solutions)
            if solutions is not None:
                truths, submitted = load_solutions(solutions), load_submission(out / "submission.json")
                result = score_submission(submitted, truths)
                summary["score"] = result.to_json()
                if len(groups) > 1:
                    summary["groups"] = {name: score_submission(submitted, {k: truths[k] for k in ids}).to_json()
                                         for name, ids in groups.items()}
                atomic_write_json(out / "score.json", result.to_json())
            from arcttt.report import write_report

            summary["report"] = str(write_report(out, solutions))
            atomic_write_json(out / "summary.json", summary)
            return summary
