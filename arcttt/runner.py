"""The time-budgeted run: hand every task to a worker process before the deadline, merge the answers.

Layout of work:
- the main process loads the challenges, writes a default submission at once (valid from the first
  second), orders the tasks, and hands them out; it holds no model and no CUDA context;
- one worker process per visible GPU (``worker.py``: ``CUDA_VISIBLE_DEVICES`` set to its own GPU
  before torch is imported) loads the model once, then asks for work: when a worker is idle the main
  process gives it the next task with deadlines computed at that moment (``budget.Budget``), so each
  task's share reflects the time really left;
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
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from arcttt.budget import Budget, TaskDeadlines, check_time_budget, expected_cost, order_tasks
from arcttt.data import Challenges, Task, load_challenges, log_rejected, show_id, shown
from arcttt.errors import write_fault
from arcttt.hardware import visible_gpus
from arcttt.records import SCHEMA_VERSION, TaskResult, config_hash, model_hash, task_file_name, task_hash
from arcttt.rundir import RunLock, claim, log_to, record_files, result_path, write_failure
from arcttt.shards import Shard, parse_shard, take_shard
from arcttt.submission import SubmissionError, SubmissionWriter, atomic_write_json, load_submission
from arcttt.worker import LOAD_LOCK, worker_main

log = logging.getLogger("arcttt.runner")

STOP_RESERVE_S = 2.0  # the dispatch loop ends this long before the deadline, to shut workers down


class RunStopped(BaseException):
    """SIGINT or SIGTERM stopped the run; the submission on disk is valid (defaults where unanswered)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class RunWriteError(Exception):
    """The run could not write a file it needs (run folder, submission, record); names the path."""


@dataclass
class _Worker:
    """A worker process as the main process sees it."""

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



def run(challenges: Path, model: Path, out: Path, *, config: str | Path = "auto",
        time_budget: float | None = None, workers: int | None = None, run_dir: Path | None = None,
        overrides: list[str] | tuple[str, ...] = (), progress: bool = True, resume: bool = False,
        shard: str | None = None, engine=None) -> dict:
    """Answer every task of ``challenges`` with ``model`` before the deadline; write ``out``.

    ``shard`` ("K/N") answers only the tasks of that shard (``shards.py``; ``arcttt merge`` joins
    the shards' run folders). ``engine`` runs the tasks elsewhere than in this machine's worker
    processes: an object with ``resources()`` and ``dispatch(...)`` (``ray_engine.RayEngine``).

    ``out`` is valid from the start (defaults) and rewritten atomically as results arrive. A run
    folder holding another run's records is reused only with ``resume`` (matching records kept).
    Raises ValueError for a bad ``time_budget``, rundir.RunDirError for a run folder in use or
    holding another run, data.DataFileError for an unreadable challenges file, config.ConfigError for
    a bad configuration, modeldir.ModelLoadError when no worker can load the model, RunWriteError when a
    file cannot be written, RunStopped on SIGINT/SIGTERM (``out`` then holds a valid submission).
    """
    check_time_budget(time_budget)
    shard = parse_shard(shard)
    start = time.time()
    out = Path(out).absolute()
    run_dir = Path(run_dir).absolute() if run_dir else out.parent / "arcttt-run"
    with stop_on_signals(), _write_faults():
        (run_dir / "tasks").mkdir(parents=True, exist_ok=True)
        with RunLock(run_dir) as lock:
            how = claim(run_dir, resume=resume)
            return _run_claimed(Path(challenges).absolute(), Path(model).absolute(), out, run_dir, start, how, lock,
                                config=config, time_budget=time_budget, workers=workers, overrides=overrides,
                                progress=progress, command="run", solutions=None, shard=shard, engine=engine)


@contextlib.contextmanager
def _write_faults():
    """An OSError out of the run (a folder that cannot be made, a full disk) becomes RunWriteError."""
    try:
        yield
    except OSError as e:
        raise RunWriteError(write_fault(e)) from None


def _run_claimed(challenges: Path, model: Path, out: Path, run_dir: Path, start: float, how: str, lock: RunLock,
                 *, config, time_budget, workers, overrides, progress, command: str, solutions: Path | None,
                 shard: Shard | None = None, engine=None) -> dict:
    loaded: Challenges = take_shard(load_challenges(challenges), shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = SubmissionWriter.for_challenges(out, loaded)  # valid from here on
    handler = log_to(run_dir / "log.txt", "main")
    try:
        if lock.stale:
            log.warning("took over the lock of process %s, which no longer holds it", lock.stale.get("pid"))
        from arcttt.config import load_config  # after the default submission: it imports torch

        cfg = load_config(config, [*overrides, *([f"workers={workers}"] if workers is not None else [])])
        if time_budget:
            cfg.budget = cfg.budget.for_budget(time_budget)
        meta = {"command": command, "challenges": str(challenges), "model": str(model), "out": str(out),
                "run_dir": str(run_dir), "solutions": str(solutions) if solutions else None, "folder": how,
                "shard": str(shard) if shard else None, "engine": engine.name if engine else "local"}
        return _run(loaded, model, writer, cfg, start, run_dir, progress, meta, how == "resume", engine)
    finally:
        logging.getLogger("arcttt").removeHandler(handler)
        handler.close()
        (run_dir / LOAD_LOCK).unlink(missing_ok=True)


def _run(loaded: Challenges, model: Path, writer: SubmissionWriter, cfg, start: float, run_dir: Path,
         progress: bool, meta: dict, resuming: bool, engine=None) -> dict:
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

    gpus, cpus = engine.resources() if engine else (visible_gpus(), os.cpu_count())
    n_workers, notes = worker_count(cfg.workers, len(gpus), len(todo), cpus)
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
    from arcttt.modeldir import describe_model_dir

    summary["model"] = describe_model_dir(model, cfg.model.format)
    if todo:
        from arcttt.modeldir import ModelLoadError, check_model_dir

        check_model_dir(model, cfg.model.format)  # fail fast, before any worker starts, on a directory that cannot be right
        state = _Dispatch(deque(todo), {t.id: expected_cost(t) for t in todo}, writes=writes)
        dispatch = engine.dispatch if engine else _dispatch
        dispatch(state, budget, cfg_json, hashes, model, run_dir, writer, gpus, n_workers, summary, progress)
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

    from arcttt.faults import faults_from_env

    faults_from_env()  # the tests' fault hook, when set, is checked here once (not in every worker)
    ctx = mp.get_context("spawn")  # fresh interpreters: each worker imports torch for its own GPU
    min_task_s = cfg_json["budget"]["min_task_s"]

    def start_worker(wid: int) -> _Worker:
        gpu = gpus[wid % len(gpus)] if gpus else None
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=worker_main, name=f"arcttt-worker{wid}", daemon=True,
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
            if dispatch_over([w.state for w in pool.values()], state.pending):
                break
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
        take_result(payload, lambda: TaskResult.from_json(json.loads(result_path(run_dir, payload).read_text())),
                    writer, summary, state.writes)
        bar.update()
        w.task, w.state = None, "idle"


def dispatch_over(states: list[str], pending) -> bool:
    """The dispatch loop ends: no worker busy, and no task left or no worker left alive to take it.
    Shared by the local dispatcher and the Ray driver (``states``: each worker's or actor's)."""
    return "busy" not in states and (not pending or all(s == "dead" for s in states))


def take_result(task_id: str, read, writer, summary: dict, writes: list[str]) -> None:
    """A finished task's record (``read()`` returns it) into the submission and the run's counts:
    an "ok" record's attempts go into ``writer``; anything that cannot be read or written leaves the
    task its defaults and the run going. Shared by the local dispatcher and the Ray driver."""
    try:
        result = read()
        if result.status == "ok":
            writer.set(task_id, result.attempts())
            summary["answered"] += 1
        else:
            summary["failed"] += 1
    except OSError as e:  # the submission (or the record) cannot be written or read now: defaults kept
        log.error("task %s: %s; keeping defaults", show_id(task_id), write_fault(e))
        writes.append(write_fault(e))
        summary["failed"] += 1
    # an unreadable or malformed result (SubmissionError, JSON and record errors are ValueErrors):
    # the task keeps its default, the run goes on
    except ValueError as e:
        log.error("task %s: result not usable (%s); keeping defaults", show_id(task_id), shown(str(e)))
        summary["failed"] += 1


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
            synthetic: int = 0, engine=None) -> dict:
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
    A folder holding the records of an ``arcttt run`` is refused unless ``resume``. ``engine``: as
    for :func:`run`."""
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
                                   overrides=overrides, progress=progress, command="dry-run", solutions=solutions,
                                   engine=engine)
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
