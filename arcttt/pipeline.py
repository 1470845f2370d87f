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
- a run started again on the same run directory skips the tasks that already have an "ok" result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from arcttt.budget import Budget, TaskDeadlines, expected_cost, order_tasks
from arcttt.data import Challenges, Task, grid_to_list, load_challenges, log_rejected
from arcttt.submission import SubmissionWriter, atomic_write_json

log = logging.getLogger("arcttt.pipeline")

# errors after which a CUDA context stays broken: the worker exits and a fresh process replaces it
FATAL_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS", "cuDNN error")
LOAD_LOCK_TIMEOUT_S = 600.0
MARGIN_FRAC = 0.05  # at most this share of a given --time-budget is kept back as the run's margin  # a model load that holds the lock longer is presumed dead
STOP_RESERVE_S = 2.0  # the dispatch loop ends this long before the deadline, to shut workers down


# --- one task ------------------------------------------------------------------------------------

class _Phases:
    """Times the phases of one task: ``with phases("ttt"): ...`` appends {phase, start, end}."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        row = {"phase": name, "start": time.time(), "end": None}
        self.rows.append(row)
        try:
            yield
        finally:
            row["end"] = time.time()


def solve_task(session, task: Task, cfg, d: TaskDeadlines, worker: int = 0) -> dict:
    """Run one task end to end on a loaded model; returns its result record (see DESIGN.md)."""
    import torch

    from arcttt.submission import fallback_attempts
    from arcttt.ttt import train_task
    from arcttt.ttt_data import training_sequences

    phase = _Phases()
    result = {"task_id": task.id, "status": "ok", "error": None, "worker": worker, "start": time.time(),
              "deadlines": d.to_json(), "phases": phase.rows, "ttt": None, "tests": []}
    with phase("data"):
        data = training_sequences(task, session.token_map, cfg.data)
    session.reset()  # the LoRA of the previous task, back to its initial state
    result["ttt"] = {"steps": 0, "tokens": 0, "tokens_per_s": 0.0, "losses": [], "skipped": data.skipped,
                     "sequences": len(data.sequences)}
    if data.sequences:
        with phase("ttt"):
            trained = train_task(session, data.sequences, cfg.ttt, deadline=d.ttt)
        result["ttt"].update(trained.to_json(), sequences=len(data.sequences),
                             skipped=trained.skipped or data.skipped)

    defaults = fallback_attempts(task)
    # after TTT, each test input gets an equal part of what is left, split between search and
    # selection in the budget's proportions (so one input's selection cannot eat the next one's search)
    search_part = cfg.budget.search_frac / (1.0 - cfg.budget.ttt_frac)
    for i in range(task.n_test):
        start = time.time()
        window = max(0.0, d.end - start) / (task.n_test - i)
        test = {"attempts": [grid_to_list(g) for g in defaults[i]], "candidates": [], "search": {}}
        try:
            test.update(_answer_test_input(session, task, i, cfg, defaults[i], phase,
                                           search_end=start + window * search_part, select_end=start + window))
        except torch.OutOfMemoryError as e:  # this input keeps its cheap guesses; the others go on
            torch.cuda.empty_cache()
            test["error"] = f"out of memory: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log.warning("task %s test %d: %s", task.id, i, test["error"])
        result["tests"].append(test)
    result["end"] = time.time()
    return result


def _answer_test_input(session, task: Task, i: int, cfg, defaults, phase: _Phases, *,
                       search_end: float, select_end: float) -> dict:
    """Search, score and choose the two attempts for test input ``i``."""
    from arcttt.search import SearchStats, search_session, view_augmentations
    from arcttt.select import choose_attempts, score_session
    from arcttt.ttt_data import test_prompts

    tm = session.token_map
    stats = SearchStats()
    with phase("search"):
        augs = view_augmentations(task, i, cfg.search.n_augmentations, keep_background=cfg.search.keep_background,
                                  seed=cfg.search.seed)
        views = test_prompts(task, i, tm, augs, cfg.data.max_len)
        candidates = search_session(session, task, i, views, cfg.search, deadline=search_end, stats=stats)
    with phase("select"):
        augs = view_augmentations(task, i, cfg.select.n_views, keep_background=cfg.select.keep_background,
                                  seed=cfg.select.seed)
        views = test_prompts(task, i, tm, augs, cfg.data.max_len)
        scored = score_session(session, task, i, candidates, views, cfg.select, deadline=select_end)
        attempts = choose_attempts(scored, *defaults)  # the cheap guesses fill in
    return {"attempts": [grid_to_list(a) for a in attempts],
            "candidates": [c.to_json() for c in scored[:cfg.select.keep_candidates]],
            "search": {"views": stats.views, "forwards": stats.forwards, "completions": stats.completions,
                       "timed_out": stats.timed_out}}


def failed_result(task_id: str, status: str, error: str, worker: int | None, start: float) -> dict:
    return {"task_id": task_id, "status": status, "error": error, "worker": worker, "start": start,
            "end": time.time(), "phases": [], "ttt": None, "tests": []}


def result_path(run_dir: Path, task_id: str) -> Path:
    """Where a task's result record lives in a run directory."""
    return Path(run_dir) / "tasks" / f"{task_id}.json"


def write_failure(run_dir: Path, task_id: str, status: str, error: str, worker: int | None, start: float) -> None:
    """Record a task that keeps its default answers, and why."""
    atomic_write_json(result_path(run_dir, task_id), failed_result(task_id, status, error, worker, start))


def _attempts(result: dict) -> list[tuple]:
    """A result record's (attempt_1, attempt_2) per test input, as SubmissionWriter.set takes them."""
    return [tuple(t["attempts"]) for t in result["tests"]]


# --- worker process ------------------------------------------------------------------------------

def _worker_main(wid: int, gpu: int | None, model_dir: str, cfg_json: dict, run_dir: str,
                 conn, load_lock) -> None:
    """A worker process: load the model once, then answer tasks sent over ``conn`` until told to stop.

    Messages go over the worker's own pipe (not a queue shared by all workers): a worker killed in
    the middle of a message can then corrupt only its own channel, which dies with it."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    from arcttt.model import load_model, set_offline_env

    set_offline_env()  # before transformers or unsloth is first imported
    os.environ["UNSLOTH_COMPILE_LOCATION"] += f"-worker{wid}"  # workers importing unsloth at once race on one folder
    from arcttt.config import config_from_json

    cfg = config_from_json(cfg_json)
    _log_to(Path(run_dir) / "log.txt", f"worker{wid}")
    # one load at a time (unsloth's imports and patching race); a worker that died holding the
    # lock must not block the others for ever
    locked = load_lock.acquire(timeout=LOAD_LOCK_TIMEOUT_S)
    try:
        session = load_model(model_dir, cfg.model)
    except Exception as e:  # reported to the main process, which decides what to do
        log.error("worker %d: model failed to load: %s", wid, e)
        conn.send(("load_failed", wid, f"{type(e).__name__}: {e}"))
        return
    finally:
        if locked:
            load_lock.release()
    conn.send(("ready", wid, None))
    parent = mp.parent_process()
    while True:
        if not conn.poll(1.0):
            if parent is not None and not parent.is_alive():
                return  # the main process was killed: stop rather than linger
            continue
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task, deadlines = msg
        start = time.time()
        conn.send(("start", wid, task.id))
        try:
            _act_out_fault(cfg.inject_faults.get(task.id))
            result = solve_task(session, task, cfg, deadlines, wid)
        except Exception as e:
            log.error("task %s failed on worker %d: %s\n%s", task.id, wid, e, traceback.format_exc())
            result = failed_result(task.id, "error", f"{type(e).__name__}: {e}", wid, start)
        atomic_write_json(result_path(run_dir, task.id), result)
        conn.send(("done", wid, task.id))
        if result["status"] == "error" and any(s in result["error"] for s in FATAL_ERRORS):
            log.error("worker %d: the GPU is unusable after %s; exiting so that a fresh worker replaces it",
                      wid, result["error"])
            os._exit(1)


def _act_out_fault(fault: str | None) -> None:
    if fault == "crash":
        os._exit(3)
    if fault == "hang":
        while True:
            time.sleep(3600)
    if fault == "raise":
        raise RuntimeError("injected fault")


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


def visible_gpus() -> list[int]:
    """Indices of the GPUs this process may use. ``device_count`` asks NVML and creates no CUDA
    context, so the main process leaves every GPU to its worker."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [int(x) for x in env.split(",") if x.strip().isdigit()]
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except ImportError:
        return []


def resume(run_dir: Path, writer: SubmissionWriter, known: set[str]) -> set[str]:
    """Task ids with an "ok" result already in ``run_dir``; their attempts go into ``writer``."""
    done = set()
    for path in sorted((run_dir / "tasks").glob("*.json")):
        try:
            r = json.loads(path.read_text())
            if r.get("status") != "ok" or r["task_id"] not in known:
                continue
            writer.set(r["task_id"], _attempts(r))
            done.add(r["task_id"])
        except (ValueError, KeyError, TypeError) as e:  # SubmissionError is a ValueError
            log.warning("ignoring unreadable result %s: %s", path, e)
    return done


def run(challenges: Path, model: Path, out: Path, *, config: str | Path = "auto",
        time_budget: float | None = None, workers: int | None = None, run_dir: Path | None = None,
        overrides: list[str] | tuple[str, ...] = (), progress: bool = True) -> dict:
    """Answer every task of ``challenges`` with ``model`` before the deadline; write ``out``.

    ``out`` is valid from the start (defaults) and rewritten atomically as results arrive. Raises
    data.DataFileError for an unreadable challenges file, config.ConfigError for a bad configuration
    and model.ModelLoadError when no worker can load the model (``out`` then holds the defaults).
    """
    from arcttt.config import load_config

    start = time.time()
    cfg = load_config(config, [*overrides, *([f"workers={workers}"] if workers is not None else [])])
    if time_budget:
        cfg.budget = cfg.budget.for_budget(time_budget)
    out, run_dir = Path(out), Path(run_dir) if run_dir else Path(out).parent / "arcttt-run"
    (run_dir / "tasks").mkdir(parents=True, exist_ok=True)
    handler = _log_to(run_dir / "log.txt", "main")
    try:
        return _run(challenges, model, out, cfg, start, run_dir, progress)
    finally:
        logging.getLogger("arcttt").removeHandler(handler)
        handler.close()


def _run(challenges: Path, model: Path, out: Path, cfg, start: float, run_dir: Path, progress: bool) -> dict:
    from arcttt.config import save_config

    loaded: Challenges = load_challenges(challenges)
    writer = SubmissionWriter.for_challenges(out, loaded)  # valid from here on
    log_rejected(loaded, log.warning)
    for r in loaded.rejected:
        write_failure(run_dir, r.task_id, "rejected", r.reason, None, start)
    done = resume(run_dir, writer, set(loaded.tasks))
    if done:
        log.info("resuming: %d tasks already answered in %s", len(done), run_dir)
    todo = order_tasks([t for t in loaded.tasks.values() if t.id not in done], cfg.budget.order)

    gpus = visible_gpus()
    n_workers = cfg.workers or max(1, len(gpus))
    budget = Budget(cfg.budget, start, n_workers)
    save_config(cfg, run_dir / "config.json")
    atomic_write_json(run_dir / "run.json", {
        "start": start, "deadline": budget.deadline, "budget_s": cfg.budget.time_budget_s,
        "workers": n_workers, "challenges": str(challenges), "model": str(model), "preset": cfg.preset,
        "tasks": loaded.ids, "resumed": sorted(done)})
    log.info("run: %d tasks to do (%d resumed, %d rejected), %d workers, deadline in %.0f s",
             len(todo), len(done), len(loaded.rejected), n_workers, budget.remaining())

    summary = {"tasks": len(loaded.ids), "resumed": len(done), "rejected": len(loaded.rejected),
               "answered": 0, "failed": 0, "unstarted": 0}
    if todo:
        from arcttt.model import ModelLoadError, check_model_dir

        check_model_dir(model)  # fail fast, before any worker starts, on a directory that cannot be right
        state = _Dispatch(deque(todo), {t.id: expected_cost(t) for t in todo})
        _dispatch(state, budget, cfg, model, run_dir, writer, gpus, n_workers, summary, progress)
        summary["unstarted"] = len(state.pending)
        if state.load_errors and summary["answered"] + summary["failed"] == 0:
            raise ModelLoadError(f"model {model} could not be loaded: {state.load_errors[0]}")
    summary.update(seconds=time.time() - start, margin_s=budget.deadline - time.time())
    atomic_write_json(run_dir / "summary.json", summary)
    log.info("run finished: %s", summary)
    return summary


def _dispatch(state: _Dispatch, budget: Budget, cfg, model: Path, run_dir: Path, writer,
              gpus: list[int], n_workers: int, summary: dict, progress: bool) -> None:
    from tqdm import tqdm

    ctx = mp.get_context("spawn")  # fresh interpreters: each worker imports torch for its own GPU
    load_lock = ctx.Lock()
    cfg_json = cfg.to_json()

    def start_worker(wid: int) -> _Worker:
        gpu = gpus[wid % len(gpus)] if gpus else None
        conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, name=f"arcttt-worker{wid}", daemon=True,
                           args=(wid, gpu, str(model), cfg_json, str(run_dir), child_conn, load_lock))
        proc.start()
        child_conn.close()  # so that a dead worker reads as EOF here, not as silence
        return _Worker(wid, gpu, proc, conn)

    pool = {wid: start_worker(wid) for wid in range(n_workers)}
    bar = tqdm(total=len(state.pending), desc="tasks", unit="task", disable=not progress)

    def settle(w: _Worker, status: str, error: str) -> None:
        """A worker failed on its task: retry it once elsewhere, else record the failure."""
        task = w.task
        log.error("task %s: %s on worker %d", task.id, error, w.wid)
        if task.id not in state.retried and budget.can_start():
            state.retried.add(task.id)
            state.avoid[task.id] = w.wid
            state.pending.appendleft(task)
        else:
            write_failure(run_dir, task.id, status, error, w.wid, w.deadlines.start)
            summary["failed"] += 1
            bar.update()
        w.task = None

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
                if state.pending and budget.remaining() > 2 * cfg.budget.min_task_s:
                    pool[w.wid] = start_worker(w.wid)  # a fresh process on the same GPU
            for w in pool.values():
                if w.state == "idle" and state.pending and budget.can_start():
                    _give_task(w, state, pool, budget)
            if not any(w.state == "busy" for w in pool.values()) and (
                    not state.pending or all(w.state == "dead" for w in pool.values())):
                break  # all done, or no worker left to do the rest
    finally:
        bar.close()
        _stop(pool)
        for w in pool.values():  # still running at the deadline: they keep their defaults
            if w.state == "busy" and w.task is not None:
                write_failure(run_dir, w.task.id, "timeout", "still running at the deadline", w.wid,
                              w.deadlines.start)
                summary["failed"] += 1
        for task in state.pending:
            write_failure(run_dir, task.id, "default", "not started before the deadline", None, time.time())


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
    elif kind == "done" and w is not None and w.task is not None and w.task.id == payload:
        try:
            result = json.loads(result_path(run_dir, payload).read_text())
            if result["status"] == "ok":
                writer.set(payload, _attempts(result))
                summary["answered"] += 1
            else:
                summary["failed"] += 1
        # an unreadable or malformed result (SubmissionError and JSON errors are ValueErrors), or a
        # submission that cannot be written now: the task keeps its default, the run goes on
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("task %s: result not usable (%s); keeping defaults", payload, e)
            summary["failed"] += 1
        bar.update()
        w.task, w.state = None, "idle"


def _stop(pool: dict) -> None:
    """Idle workers are asked to exit; busy ones (still on a task at the end) are killed."""
    for w in pool.values():
        if w.state == "busy":
            w.proc.kill()
        elif w.proc.is_alive() and not w.conn.closed:
            with contextlib.suppress(OSError):
                w.conn.send(None)
    for w in pool.values():
        w.proc.join(timeout=STOP_RESERVE_S / 2)
        if w.proc.is_alive():
            w.proc.kill()
            w.proc.join(timeout=1)


# --- dry run -------------------------------------------------------------------------------------

def dry_run(out: Path, *, split: str = "arc-agi-2-eval", tasks: int | None = 10, model: Path | None = None,
            time_budget: float | None = None, config: str | Path | None = None,
            challenges: Path | None = None, solutions: Path | None = None, workers: int | None = None,
            overrides: list[str] | tuple[str, ...] = (), progress: bool = True) -> dict:
    """Run on tasks with known solutions and score: the bundled ``split`` (first ``tasks`` by id)
    or given ``challenges``/``solutions`` files. With no model, builds the tiny random model and
    uses the ``cpu-smoke`` preset. Writes into ``out``: submission.json, score.json, report.html and
    the run directory files (tasks/, run.json, config.json, log.txt, timeline.png)."""
    from arcttt.data import export_split, load_solutions
    from arcttt.score import score_submission
    from arcttt.submission import load_submission

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if challenges is None:
        challenges, solutions = export_split(split, out / "data", limit=tasks)
    if model is None:
        from arcttt.model import make_tiny_model

        model = make_tiny_model(out / "tiny-model")
        config = config or "cpu-smoke"
    summary = run(Path(challenges), Path(model), out / "submission.json", run_dir=out,
                  config=config or "auto",
                  time_budget=time_budget, workers=workers, overrides=overrides, progress=progress)
    if solutions is not None:
        result = score_submission(load_submission(out / "submission.json"), load_solutions(solutions))
        summary["score"] = result.to_json()
        atomic_write_json(out / "score.json", result.to_json())
    from arcttt.report import write_report

    summary["report"] = str(write_report(out, Path(solutions) if solutions else None))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
