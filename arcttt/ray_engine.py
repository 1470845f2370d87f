"""The Ray engine (``arcttt run --engine ray``): the run's tasks answered by worker actors spread
over a Ray cluster, one per GPU (``num_gpus=1``; on a cluster without GPUs, ``--workers N`` CPU
actors), instead of this machine's worker processes.

The driver (the process running ``arcttt run``) is the local run's main process with another
dispatcher: the run folder, the default submission, the task order, resume, the run.json and the
summary are ``runner._run``'s. Each actor loads the model once, then answers the tasks the driver
hands it one at a time, with deadlines computed when it takes the task (``budget.Budget``, as the
local dispatcher does), so a fast node takes more tasks. An actor answers with
``worker.answer_task`` (the local worker's function) and returns the record; the driver writes
it (``rundir.write_record``) and takes it into the submission (``runner.take_result``), so the
run folder is the one a local run writes, and ``report``, ``profile`` and ``--resume`` read it as
theirs. A task whose actor dies (node lost, out of memory, a crash) or hangs past its limit is
retried once on another actor, then recorded as failed; a dead actor is replaced while time
allows. At the global deadline the driver kills the actors and records what was still running.

Every node needs arcttt (and its dependencies) installed and the model folder at the same path (a
shared file system, or the same copy on each node); the actors write nothing but their log lines,
to ``RUN_DIR/log.txt`` where they can reach it. Ray is an optional extra (``arcttt[ray]``) imported
only here, never by ``import arcttt`` nor by the Kaggle notebook.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from arcttt.budget import Budget, TaskDeadlines
from arcttt.data import Task, show_id, shown
from arcttt.errors import first_line, write_fault
from arcttt.faults import faults_from_env
from arcttt.records import TaskResult
from arcttt.rundir import write_failure, write_record
from arcttt.runner import STOP_RESERVE_S, RunStopped, dispatch_over, take_result
from arcttt.worker import FATAL_ERRORS, answer_task, file_lock

log = logging.getLogger("arcttt.ray_engine")

LOAD_LOCK_TIMEOUT_S = 600.0


# --- the actor -----------------------------------------------------------------------------------

class TaskActor:
    """A worker actor: loads the model once (in its constructor), then answers one task per call."""

    def __init__(self, wid: int, model_dir: str, cfg_json: dict, run_dir: str, hashes: dict,
                 faults: dict[str, str] | None = None):
        self.wid, self.hashes, self.error, self.faults = wid, hashes, None, faults or {}
        self.started = time.time()
        from arcttt.offline import set_offline_env

        set_offline_env()  # before transformers or unsloth is first imported
        os.environ["UNSLOTH_COMPILE_LOCATION"] += f"-worker{wid}"  # actors importing unsloth at once race on one folder
        if Path(run_dir).is_dir():  # this node sees the run folder (the driver's machine, a shared file system)
            handler = logging.FileHandler(Path(run_dir) / "log.txt")
            handler.setFormatter(logging.Formatter(f"%(asctime)s actor{wid} %(levelname)s %(message)s"))
            logging.getLogger("arcttt").addHandler(handler)
            logging.getLogger("arcttt").setLevel(logging.INFO)
        log.info("worker %d: pid %d on %s", wid, os.getpid(), socket.gethostname())
        try:
            with _node_lock(run_dir):  # one load at a time per node: unsloth's imports and patching race
                from arcttt.model import import_unsloth_first, load_model

                import_unsloth_first(cfg_json["model"]["backend"])  # before arcttt.config imports transformers
                from arcttt.config import config_from_json

                self.cfg = config_from_json(cfg_json)
                self.session = load_model(model_dir, self.cfg.model)
        except Exception as e:  # noqa: BLE001 - told to the driver by ready(), which decides what to do
            log.error("worker %d: model failed to load: %s", wid, shown(str(e), 300))
            self.error = first_line(f"{type(e).__name__}: {e}")
        self.loaded = time.time()

    def ready(self) -> dict:
        """How the load went: the pid and host, the seconds it took, the load error (None: ready)."""
        return {"wid": self.wid, "pid": os.getpid(), "host": socket.gethostname(), "error": self.error,
                "load_s": self.loaded - self.started}

    def solve(self, task: Task, deadlines: TaskDeadlines) -> dict:
        """One task's record (``TaskResult.to_json``), as a local worker would write it."""
        return answer_task(self.session, task, self.cfg, deadlines, self.wid, self.hashes, self.faults).to_json()


def _node_lock(run_dir: str, timeout: float = LOAD_LOCK_TIMEOUT_S):
    """An exclusive lock shared by this run's actors on one node (a file in the node's temp folder,
    since the run folder may not be on this node): ``worker.file_lock``."""
    name = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    return file_lock(Path(tempfile.gettempdir()) / f"arcttt-load-{name}.lock", timeout)


# --- the driver ----------------------------------------------------------------------------------

@dataclass
class _Actor:
    wid: int
    handle: object
    ref: object = None  # the call in flight: ready() while loading, solve() while busy
    state: str = "loading"  # loading | idle | busy | dead
    task: Task | None = None
    deadlines: TaskDeadlines | None = None
    hang_at: float = 0.0
    given_at: float = 0.0
    started: float = field(default_factory=time.time)


class RayEngine:
    """``runner.run(..., engine=RayEngine(address))``: the tasks answered by Ray actors.

    ``address``: the cluster to join (``auto``, ``ray://HEAD:10001``, ...); None: ``RAY_ADDRESS``,
    else a local Ray instance started for the run. A Ray already initialised in this process (a
    test's ``ray.init(num_cpus=3)``) is used as it is and left running."""

    name = "ray"

    def __init__(self, address: str | None = None):
        self.address = address
        self.owned = False  # this engine started (or joined) Ray: it shuts it down at the end

    def _connect(self):
        from arcttt.config import ConfigError

        try:
            import ray
        except ImportError:
            raise ConfigError("--engine ray needs the ray package: pip install 'arcttt[ray]'") from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot join the Ray cluster at {self.address or 'RAY_ADDRESS'}: "
                                  f"{first_line(e)[:300]}") from None
            self.owned = True
        return ray

    def resources(self) -> tuple[list[int], int]:
        """(GPU indices, CPUs) of the Ray cluster: one actor per GPU, or up to its CPUs on CPU."""
        ray = self._connect()
        total = ray.cluster_resources()
        return list(range(int(total.get("GPU", 0)))), max(1, int(total.get("CPU", 1)))

    def dispatch(self, state, budget: Budget, cfg_json: dict, hashes: dict, model: Path, run_dir: Path, writer,
                 gpus: list[int], n_workers: int, summary: dict, progress: bool) -> None:
        """Answer ``state.pending`` with ``n_workers`` actors before ``budget.deadline``; every
        record goes to ``run_dir``, every answer into ``writer``; counts into ``summary``."""
        ray = self._connect()
        try:
            _Driver(ray, state, budget, cfg_json, hashes, model, run_dir, writer, gpus, summary, progress).run(n_workers)
        finally:
            if self.owned:
                ray.shutdown()
                self.owned = False


class _Driver:
    """The dispatch loop over Ray actors (one run)."""

    def __init__(self, ray, state, budget, cfg_json, hashes, model, run_dir, writer, gpus, summary, progress):
        self.ray, self.state, self.budget, self.cfg_json, self.hashes = ray, state, budget, cfg_json, hashes
        self.model, self.run_dir, self.writer, self.summary, self.progress = model, run_dir, writer, summary, progress
        self.actor_cls = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(TaskActor)
        self.pool: dict[int, _Actor] = {}
        self.stats = summary.setdefault("ray", {"actors": [], "handover_s": [], "return_s": []})

    def start(self, wid: int) -> None:
        # the tests' fault hook is read here, in the driver, and handed to each actor: an actor's
        # environment is its node's, not the driver's
        handle = self.actor_cls.remote(wid, str(self.model), self.cfg_json, str(self.run_dir), self.hashes,
                                       faults_from_env())
        self.pool[wid] = _Actor(wid, handle, ref=handle.ready.remote())

    def run(self, n_workers: int) -> None:
        from tqdm import tqdm

        state, budget = self.state, self.budget
        self.bar = tqdm(total=len(state.pending), desc="tasks", unit="task", disable=not self.progress)
        for wid in range(n_workers):
            self.start(wid)
        stopped = None
        try:
            while time.time() < budget.deadline - STOP_RESERVE_S:
                self.collect(timeout=0.2)
                now = time.time()
                for a in list(self.pool.values()):
                    if a.state == "busy" and now > a.hang_at:
                        self.ray.kill(a.handle, no_restart=True)
                        self.lost(a, "timeout", f"worker hung: no result {a.hang_at - a.deadlines.start:.0f} s "
                                                f"after start")
                for a in self.pool.values():
                    if a.state == "idle" and state.pending and budget.can_start():
                        self.give(a)
                if dispatch_over([a.state for a in self.pool.values()], state.pending):
                    break
        except RunStopped as e:
            stopped = e
            log.warning("run stopped by %s: stopping the actors; unfinished tasks keep their defaults", e.name)
            raise
        finally:
            self.bar.close()
            for a in self.pool.values():
                if a.state != "dead":
                    with contextlib.suppress(Exception):
                        self.ray.kill(a.handle, no_restart=True)
            status, why = ("stopped", f"run stopped by {stopped.name}") if stopped else \
                ("timeout", "still running at the deadline")
            for a in self.pool.values():
                if a.state == "busy" and a.task is not None:
                    write_failure(self.run_dir, a.task.id, status, why, a.wid, a.deadlines.start, state.writes)
                    self.summary["failed"] += 1
            status, why = ("stopped", f"not started: run stopped by {stopped.name}") if stopped else \
                ("default", "not started before the deadline")
            for task in state.pending:
                write_failure(self.run_dir, task.id, status, why, None, time.time(), state.writes)

    def collect(self, timeout: float) -> None:
        """Take every finished call: a load (the actor is ready, or dead), a task's record, a death."""
        calls = {a.ref: a for a in self.pool.values() if a.ref is not None}
        if not calls:
            time.sleep(timeout)
            return
        done, rest = self.ray.wait(list(calls), num_returns=1, timeout=timeout)  # the first that ends
        if done and rest:  # and any other already ended, without waiting
            done += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in done:
            a = calls[ref]
            a.ref = None
            try:
                value = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 - RayActorError (the actor died), RayTaskError, ...
                self.died(a, e)
                continue
            if a.state == "loading":
                self.loaded(a, value)
            elif a.state == "busy":
                self.answered(a, value)

    def loaded(self, a: _Actor, info: dict) -> None:
        self.stats["actors"].append({"wid": a.wid, "host": info["host"], "ready_s": time.time() - a.started,
                                     "load_s": info["load_s"]})
        if info["error"]:
            self.state.load_errors.append(info["error"])
            self.ray.kill(a.handle, no_restart=True)
            a.state = "dead"
        else:
            log.info("worker %d ready on %s (pid %d) after %.1f s", a.wid, info["host"], info["pid"],
                     time.time() - a.started)
            a.state = "idle"

    def answered(self, a: _Actor, record: dict) -> None:
        """A task's record from its actor: written here, then taken into the submission."""
        received = time.time()
        result = TaskResult.from_json(record)
        if result.start is not None:
            self.stats["handover_s"].append(max(0.0, result.start - a.given_at))
        if result.end is not None:
            self.stats["return_s"].append(max(0.0, received - result.end))
        try:
            write_record(self.run_dir, result)
        except OSError as e:  # the disk is full or gone: the task keeps its default
            log.error("task %s: %s", show_id(result.task_id), write_fault(e))
            self.state.writes.append(write_fault(e))
            self.summary["failed"] += 1
        else:
            take_result(result.task_id, lambda: result, self.writer, self.summary, self.state.writes)
        self.bar.update()
        a.task, a.state = None, "idle"
        if result.status == "error" and any(s in (result.error or "") for s in FATAL_ERRORS):
            log.error("worker %d: the GPU is unusable after %s; replacing the actor", a.wid, result.error)
            self.ray.kill(a.handle, no_restart=True)
            a.state = "dead"
            self.replace(a)

    def died(self, a: _Actor, error: BaseException) -> None:
        why = first_line(error).split(" The actor ")[0][:200]
        if a.state == "loading":
            log.error("worker %d died loading the model: %s", a.wid, why)
            self.state.load_errors.append(f"worker actor died loading the model: {why}")
            a.state = "dead"  # another try would most likely die too
        elif a.state == "busy":
            self.lost(a, "error", f"worker actor died ({type(error).__name__})")

    def lost(self, a: _Actor, status: str, error: str) -> None:
        """An actor failed on its task (died, hung): retry the task once elsewhere, else record the
        failure; then a fresh actor takes the dead one's place if time allows."""
        task = a.task
        log.error("task %s: %s on worker %d", show_id(task.id), error, a.wid)
        if task.id not in self.state.retried and self.budget.can_start():
            self.state.retried.add(task.id)
            self.state.avoid[task.id] = a.wid
            self.state.pending.appendleft(task)
        else:
            write_failure(self.run_dir, task.id, status, error, a.wid, a.deadlines.start, self.state.writes)
            self.summary["failed"] += 1
            self.bar.update()
        a.task, a.ref, a.state = None, None, "dead"
        self.replace(a)

    def replace(self, a: _Actor) -> None:
        if self.state.pending and self.budget.remaining() > 2 * self.cfg_json["budget"]["min_task_s"]:
            self.start(a.wid)

    def give(self, a: _Actor) -> None:
        state = self.state
        others = any(o.state in ("idle", "loading", "busy") and o.wid != a.wid for o in self.pool.values())
        # a retried task is left for another actor (if there is one); this one takes the next task
        task = next((t for t in state.pending if not (others and state.avoid.get(t.id) == a.wid)), None)
        if task is None:
            return
        state.pending.remove(task)
        # the tasks other actors are on still hold their share of the time left: count them in full
        running = sum(state.costs[o.task.id] for o in self.pool.values() if o.state == "busy" and o.task)
        pending_cost = state.costs[task.id] + sum(state.costs[t.id] for t in state.pending) + running
        a.deadlines = self.budget.deadlines(state.costs[task.id], pending_cost)
        a.hang_at = self.budget.hang_limit(a.deadlines)
        a.task, a.state, a.given_at = task, "busy", time.time()
        a.ref = a.handle.solve.remote(task, a.deadlines)
