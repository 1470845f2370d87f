"""One task on a loaded model -> its record (``records.TaskResult``), one function per phase:

- :func:`frame` (when ``data.input_frame``): the symmetry of the inputs alone the model finds
  likeliest (``pretransform.py``); the other phases then see the task in that frame;
- :func:`adapt`: the task's TTT data, the LoRA reset to its initial state, training;
- :func:`search_views`: the answer search under augmented views of one test input;
- :func:`choose`: scoring of the search's candidates under the scoring's views, two attempts chosen;
- :func:`default_test`: a test input's cheap guesses (``submission.fallback_attempts``), kept when
  nothing better is found.

:func:`solve_task` runs them in order; any engine (the worker processes of ``worker.py``, another
that holds a model) calls it with the deadlines its dispatcher gave the task.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from arcttt.budget import TaskDeadlines
from arcttt.data import Task, grid_to_list, show_id
from arcttt.errors import first_line
from arcttt.records import Phase, TaskResult, TestResult, TTTResult, task_hash

log = logging.getLogger("arcttt.solve")


class Phases:
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
    from arcttt.submission import fallback_attempts

    phase = Phases()
    result = TaskResult(task.id, "ok", worker=worker, start=time.time(), deadlines=d.to_json(), phases=phase.rows,
                        task_hash=task_hash(task))
    defaults = fallback_attempts(task)  # of the task as given, whatever frame it is solved in
    if cfg.data.input_frame:
        result.frame, task = frame(session, task, cfg, phase)
    result.ttt = adapt(session, task, cfg, d.ttt, phase)
    # after TTT, each test input gets an equal part of what is left, split between search and
    # selection in the budget's proportions (so one input's selection cannot eat the next one's search)
    search_part = cfg.budget.search_frac / (1.0 - cfg.budget.ttt_frac)
    for i in range(task.n_test):
        start = time.time()
        window = max(0.0, d.end - start) / (task.n_test - i)
        result.tests.append(_answer_or_default(session, task, i, cfg, defaults[i], phase,
                                               search_end=start + window * search_part, select_end=start + window))
    result.end = time.time()
    return result


def frame(session, task: Task, cfg, phase: Phases) -> tuple[dict, Task]:
    """The symmetry of the inputs alone that the model finds likeliest (``pretransform.py``), and the
    task in that frame (its outputs, so its answers, as they are)."""
    from arcttt.pretransform import choose_frame, reframe

    with phase("frame"):
        session.reset()  # the base model's view of the task, not the previous task's adapter
        chosen = choose_frame(session.model, task, session.token_map, cfg.data.max_len)
    return chosen.to_json(), reframe(task, chosen.symmetry)


def adapt(session, task: Task, cfg, deadline: float, phase: Phases) -> TTTResult:
    """The task's TTT data, then the LoRA reset (the previous task's adapter back to its initial
    state) and trained on it until ``deadline``; the training's record."""
    from arcttt.ttt import train_task
    from arcttt.ttt_data import training_sequences

    with phase("data"):
        data = training_sequences(task, session.token_map, cfg.data)
    session.reset()
    if not data.sequences:
        return TTTResult(skipped=data.skipped, sequences=0)
    with phase("ttt"):
        trained = train_task(session, data.sequences, cfg.ttt, deadline=deadline)
    trained.sequences, trained.skipped = len(data.sequences), trained.skipped or data.skipped
    return trained


def default_test(defaults) -> TestResult:
    """A test input answered by its cheap guesses alone."""
    return TestResult(attempts=[grid_to_list(g) for g in defaults])


def _answer_or_default(session, task: Task, i: int, cfg, defaults, phase: Phases, *, search_end: float,
                       select_end: float) -> TestResult:
    """:func:`answer_test_input`, or the cheap guesses when it runs out of GPU memory (the task's
    other test inputs go on)."""
    import torch

    try:
        return answer_test_input(session, task, i, cfg, defaults, phase, search_end=search_end, select_end=select_end)
    except torch.OutOfMemoryError as e:
        torch.cuda.empty_cache()
        test = default_test(defaults)
        test.error = f"out of memory: {first_line(e, 200)}"
        log.warning("task %s test %d: %s", show_id(task.id), i, test.error)
        return test


@dataclass
class Searched:
    """What the search of one test input leaves for the scoring."""

    candidates: list
    stats: object  # search.SearchStats
    score_views: list  # the scoring's prompts (ttt_data.test_prompts)
    keep: object  # kvcache.PromptCaches: the scoring prompts' caches the search prefilled


def answer_test_input(session, task: Task, i: int, cfg, defaults, phase: Phases, *,
                      search_end: float, select_end: float) -> TestResult:
    """Search, score and choose the two attempts for test input ``i``."""
    searched = search_views(session, task, i, cfg, phase, deadline=search_end)
    scored, attempts, error = choose(session, task, i, searched, cfg, defaults, phase, deadline=select_end)
    s = searched.stats
    return TestResult(attempts=[grid_to_list(a) for a in attempts],
                      candidates=[c.to_json() for c in scored[:cfg.select.keep_candidates]],
                      search={"views": s.views, "forwards": s.forwards, "completions": s.completions,
                              "timed_out": s.timed_out, "oom": s.oom},
                      error=error)


def search_views(session, task: Task, i: int, cfg, phase: Phases, *, deadline: float) -> Searched:
    """The search of test input ``i`` under ``cfg.search.n_augmentations`` views, until ``deadline``."""
    from arcttt.kvcache import PromptCaches
    from arcttt.augment import view_augmentations
    from arcttt.search import SearchStats, search_session
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
        candidates = search_session(session, task, i, views, cfg.search, deadline=deadline, stats=stats, keep=keep)
    return Searched(candidates, stats, score_views, keep)


def choose(session, task: Task, i: int, searched: Searched, cfg, defaults, phase: Phases, *,
           deadline: float) -> tuple[list, list, str | None]:
    """The search's candidates scored under the scoring's views until ``deadline``, and two attempts
    chosen (the cheap guesses ``defaults`` fill in); (scored candidates, attempts, error or None).
    Out of GPU memory in the scoring, the candidates are ranked by the search alone."""
    import torch

    from arcttt.select import choose_attempts, score_session

    error = None
    with phase("select"):
        try:
            scored = score_session(session, task, i, searched.candidates, searched.score_views, cfg.select,
                                   deadline=deadline, prompt_caches=searched.keep)
        except torch.OutOfMemoryError as e:
            # the search's candidates survive: ranked by their hits and search logprob, no views scored
            searched.keep.clear()
            torch.cuda.empty_cache()
            error = f"out of memory in scoring: {first_line(e, 200)}"
            log.warning("task %s test %d: %s; ranking by the search alone", task.id, i, error)
            scored = score_session(session, task, i, searched.candidates, [], cfg.select, deadline=deadline)
        attempts = choose_attempts(scored, *defaults)
    return scored, attempts, error
