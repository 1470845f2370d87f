"""arcttt inside a Kaggle notebook: where the inputs are, which preset fits the GPUs, and the
notebook's one entry point :func:`notebook_main`.

Kaggle mounts attached sources read-only under ``/kaggle/input``. The layout changed over the years
(2024-2025 flat: ``/kaggle/input/arc-prize-2025/...``; 2026 nested: ``competitions/<slug>/``,
``datasets/<owner>/<slug>/``, ``models/<owner>/<model>/<framework>/<variation>/<version>/``), so
nothing here hard-codes a path: :func:`find_inputs` searches the tree for the competition's file
names, for a model directory (one holding ``arcttt.json`` and ``config.json``) and for wheel folders.

The competition reruns the notebook with the hidden test file under the public file's name and sets
``KAGGLE_IS_COMPETITION_RERUN``; then the whole 12 h (less a margin, counted from the notebook's
start) goes to the hidden tasks. Otherwise (an interactive session or the save-time run on the
public placeholder, which holds training tasks) a short self-check on evaluation tasks with known
solutions runs first and prints its score and profile, then the test file is answered on a smaller
budget. Whatever fails, ``<working>/submission.json`` is left valid.

Environment variables read by :meth:`NotebookSettings.from_env` (all optional):
``ARCTTT_KAGGLE_INPUT`` (default ``/kaggle/input``), ``ARCTTT_KAGGLE_WORKING`` (``/kaggle/working``),
``ARCTTT_TIME_BUDGET`` (seconds for the test submission), ``ARCTTT_SELFCHECK_TASKS``,
``ARCTTT_SELFCHECK_BUDGET``, ``ARCTTT_PRESET`` (skip GPU detection), ``ARCTTT_MODEL`` (a path
fragment that picks one model directory when several are attached).
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, MutableMapping, Sequence

from arcttt import offline
from arcttt.offline import offline_env  # noqa: F401 - part of this module's interface
from arcttt.hardware import Gpu, choose_preset, detect_gpus  # noqa: F401 - part of this module's interface

TEST_CHALLENGES = "arc-agi_test_challenges.json"
EVAL_CHALLENGES = "arc-agi_evaluation_challenges.json"
EVAL_SOLUTIONS = "arc-agi_evaluation_solutions.json"
MODEL_FILES = ("arcttt.json", "config.json")
INSTALL_LIST = "arcttt-install.txt"  # written by kaggle/build.py into each dataset it builds
KAGGLE_LIMIT_S = 12 * 3600.0
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
# Deep enough for models/<owner>/<model>/<framework>/<variation>/<version>/<subfolder>, shallow
# enough that a large attached dataset cannot make the search slow.
MAX_DEPTH = 8


class InputsError(FileNotFoundError):
    """An input the notebook needs is missing or ambiguous; the message says what was searched."""


@dataclass(frozen=True)
class KaggleInputs:
    """What :func:`find_inputs` found under the input root."""

    challenges: Path
    """The test challenges file (the public placeholder, or the hidden set on the rerun)."""
    evaluation_challenges: Path | None
    evaluation_solutions: Path | None
    model_dir: Path
    """A directory holding ``arcttt.json`` and ``config.json``."""
    wheel_dirs: tuple[Path, ...] = ()
    """Folders holding ``*.whl`` files (the code and wheelhouse datasets)."""


@dataclass
class _Scan:
    files: dict[str, list[Path]] = field(default_factory=dict)
    model_dirs: list[Path] = field(default_factory=list)
    hf_dirs: list[Path] = field(default_factory=list)  # config.json without arcttt.json
    wheel_dirs: list[Path] = field(default_factory=list)


def _scan(root: Path) -> _Scan:
    root = Path(root)
    if not root.is_dir():
        raise InputsError(f"input root {root} does not exist or is not a folder "
                          f"(set ARCTTT_KAGGLE_INPUT to the folder Kaggle mounts the inputs in)")
    wanted = {TEST_CHALLENGES, EVAL_CHALLENGES, EVAL_SOLUTIONS}
    scan = _Scan(files={name: [] for name in wanted})
    base_depth = len(root.parts)
    # followlinks: Kaggle may mount sources as links; MAX_DEPTH bounds any cycle.
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        if len(here.parts) - base_depth >= MAX_DEPTH:
            dirs.clear()
        dirs.sort()
        names = set(files)
        for name in wanted & names:
            scan.files[name].append(here / name)
        if all(m in names for m in MODEL_FILES):
            scan.model_dirs.append(here)
        elif "config.json" in names and any(f.endswith(".safetensors") for f in files):
            scan.hf_dirs.append(here)
        if any(f.endswith(".whl") for f in files):
            scan.wheel_dirs.append(here)
    return scan


def _rank(path: Path, root: Path) -> tuple[int, int, str]:
    """Sort key: the competition's own folder first, then the shallowest, then by name."""
    rel = path.relative_to(root).parts
    top = rel[0] if rel else ""
    in_competition = top == "competitions" or top.startswith("arc-prize")
    return (0 if in_competition else 1, len(rel), str(path))


def _best(paths: list[Path], root: Path, near: Path | None = None) -> Path | None:
    if near is not None:
        beside = [p for p in paths if p.parent == near]
        if beside:
            return beside[0]
    return min(paths, key=lambda p: _rank(p, root), default=None)


def find_challenges(root: str | Path) -> Path:
    """The test challenges file under ``root`` (the competition's copy when there are several)."""
    root = Path(root)
    found = _best(_scan(root).files[TEST_CHALLENGES], root)
    if found is None:
        raise InputsError(f"no {TEST_CHALLENGES} under {root}: attach the competition's data to the notebook")
    return found


def find_inputs(root: str | Path, *, model: str | None = None, format: str | None = None) -> KaggleInputs:
    """Search ``root`` (both the flat and the nested Kaggle layout) for everything the notebook needs.

    A model directory holds ``arcttt.json``; with none attached, a published checkpoint without it
    (``config.json`` and safetensors) is taken when ``format`` is given or its tokenizer pins the
    format down (NVARC's 16 tokens).

    Args:
        root: The input root, ``/kaggle/input`` on Kaggle.
        model: A fragment of the model directory's path, to pick one when several are attached.
        format: The format of an attached checkpoint that has no arcttt.json.

    Raises:
        InputsError: no test challenges file, no model directory, or several model directories and
            no ``model`` fragment that picks exactly one. The message names what was found.
    """
    root = Path(root)
    scan = _scan(root)
    challenges = _best(scan.files[TEST_CHALLENGES], root)
    if challenges is None:
        raise InputsError(f"no {TEST_CHALLENGES} under {root}: attach the competition's data to the notebook")
    eval_challenges = _best(scan.files[EVAL_CHALLENGES], root, near=challenges.parent)
    eval_solutions = _best(scan.files[EVAL_SOLUTIONS], root, near=(eval_challenges or challenges).parent)
    return KaggleInputs(challenges, eval_challenges, eval_solutions, _pick_model(scan, root, model, format),
                        tuple(scan.wheel_dirs))


def checkpoint_format(path: Path, given: str | None = None) -> str | None:
    """The format a model directory is run in: ``arcttt.json``'s, else ``given``, else the one its
    tokenizer pins down; None when nothing says."""
    from arcttt.formats import detect_format
    from arcttt.modeldir import read_model_meta
    from arcttt.tokenizer import FormatError, load_tokenizer

    try:
        if (path / "arcttt.json").is_file():
            return read_model_meta(path)[0].format
        return given or detect_format(load_tokenizer(path))
    except FormatError:
        return given


def _pick_model(scan: _Scan, root: Path, fragment: str | None, format: str | None = None) -> Path:
    # a published checkpoint (no arcttt.json) counts when its format is known
    candidates = scan.model_dirs or [p for p in scan.hf_dirs if checkpoint_format(p, format)]
    if not candidates:
        hint = ""
        if scan.hf_dirs:
            hint = (" Found Hugging Face model folders without arcttt.json whose format is unknown: "
                    + ", ".join(map(str, scan.hf_dirs))
                    + "; set ARCTTT_FORMAT (nvarc, architects, ...) for a published checkpoint, or run "
                    "`arcttt prepare-weights` on a base model and attach the result.")
        raise InputsError(f"no model directory (a folder with {' and '.join(MODEL_FILES)}) under {root}: attach "
                          f"a model prepared with `arcttt prepare-weights` as a Kaggle model or dataset.{hint}")
    if fragment:
        picked = [p for p in candidates if fragment in str(p.relative_to(root))]
        if len(picked) == 1:
            return picked[0]
        raise InputsError(f"model fragment {fragment!r} matches {len(picked)} of the model directories under "
                          f"{root}: {', '.join(map(str, candidates))}")
    if len(candidates) > 1:
        raise InputsError(f"{len(candidates)} model directories under {root}: {', '.join(map(str, candidates))}; "
                          "attach only one, or set ARCTTT_MODEL to a fragment of the path of the one to use")
    return candidates[0]


# --- hardware -----------------------------------------------------------------------------------

def machine_report(gpus: Sequence[Gpu]) -> str:
    """Python, torch, CPU count and GPUs, plus ``nvidia-smi`` output when it is there: what the
    notebook log shows about the machine Kaggle really gave."""
    lines = [f"python {platform.python_version()} ({sys.executable}), {os.cpu_count()} CPUs"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
                     f"cuda available: {torch.cuda.is_available()}")
    except ImportError:
        lines.append("torch: not installed")
    lines += [f"GPU {g.index}: {g.name}, compute {g.capability[0]}.{g.capability[1]}, {g.memory_gib:.1f} GiB, "
              f"bf16 {'native' if g.bf16 else 'no (fp16)'}" for g in gpus] or ["no CUDA GPU"]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi], capture_output=True, text=True, timeout=30)
            lines.append(out.stdout.rstrip() or out.stderr.rstrip())
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"nvidia-smi failed: {e}")
    return "\n".join(lines)


# --- environment ----------------------------------------------------------------------------------

def set_offline_env(environ: MutableMapping[str, str] | None = None,
                    cache_dir: str | Path | None = None) -> dict[str, str]:
    """:func:`arcttt.offline.set_offline_env`, overriding what is there (the notebook's start)."""
    return offline.set_offline_env(environ, cache_dir, override=True)


# --- the notebook ---------------------------------------------------------------------------------

@dataclass
class NotebookSettings:
    """What :func:`notebook_main` does; :meth:`from_env` fills it from the environment."""

    input_root: Path = Path("/kaggle/input")
    working_dir: Path = Path("/kaggle/working")
    rerun: bool = False
    """True on the competition's rerun with the hidden test file: no self-check, full budget."""
    time_budget_s: float | None = None
    """Seconds for answering the test file; None: the rest of the 12 h on the rerun, else ``interactive_budget_s``."""
    interactive_budget_s: float = 3600.0
    """Budget for the test file when not on the rerun (the placeholder holds training tasks; no score shown)."""
    selfcheck_tasks: int = 8
    """Evaluation tasks in the self-check; 0 skips it. Never run on the rerun."""
    selfcheck_budget_s: float = 900.0
    kaggle_limit_s: float = KAGGLE_LIMIT_S
    margin_s: float = 900.0
    """Kept free of the 12 h, counted from the notebook's start, for start-up, the final write and slack."""
    preset: str | None = None
    """A preset name to use instead of the one :func:`choose_preset` picks."""
    format: str | None = None
    """The format of an attached published checkpoint without arcttt.json (ARCTTT_FORMAT)."""
    model: str | None = None
    """A fragment of the model directory's path, when several are attached."""
    adapter: str | None = None
    """A saved PEFT adapter directory every task's TTT starts from (``model.adapter``; ARCTTT_ADAPTER),
    e.g. Omni-ARC's published LoRA."""

    def __post_init__(self):
        self.input_root, self.working_dir = Path(self.input_root), Path(self.working_dir)
        faults = []
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            faults.append(f"time_budget_s must be > 0 (got {self.time_budget_s})")
        if self.selfcheck_tasks < 0:
            faults.append(f"selfcheck_tasks must be >= 0 (got {self.selfcheck_tasks})")
        for name in ("interactive_budget_s", "selfcheck_budget_s", "kaggle_limit_s"):
            if getattr(self, name) <= 0:
                faults.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0 <= self.margin_s < self.kaggle_limit_s:
            faults.append(f"margin_s must be in [0, kaggle_limit_s) (got {self.margin_s})")
        if faults:
            raise ValueError("notebook settings: " + "; ".join(faults))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NotebookSettings:
        env = os.environ if environ is None else environ

        def number(name: str, kind=float):
            raw = env.get(name, "").strip()
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a {kind.__name__}") from None

        given = {
            "input_root": env.get("ARCTTT_KAGGLE_INPUT") or None,
            "working_dir": env.get("ARCTTT_KAGGLE_WORKING") or None,
            "time_budget_s": number("ARCTTT_TIME_BUDGET"),
            "selfcheck_tasks": number("ARCTTT_SELFCHECK_TASKS", int),
            "selfcheck_budget_s": number("ARCTTT_SELFCHECK_BUDGET"),
            "preset": env.get("ARCTTT_PRESET") or None,
            "format": env.get("ARCTTT_FORMAT") or None,
            "model": env.get("ARCTTT_MODEL") or None,
            "adapter": env.get("ARCTTT_ADAPTER") or None,
        }
        # Kaggle sets the variable on the rerun; its value has not been documented, so any
        # non-empty value counts.
        return cls(rerun=bool(env.get(RERUN_ENV, "").strip()), **{k: v for k, v in given.items() if v is not None})

    def submission_budget(self, start: float, now: float) -> float:
        """Seconds for the test file: what is asked (or the rest on the rerun), never past the 12 h
        limit less the margin, counted from ``start``; at least 30 s so defaults still get written."""
        remaining = self.kaggle_limit_s - self.margin_s - (now - start)
        wanted = self.time_budget_s if self.time_budget_s is not None else (
            remaining if self.rerun else self.interactive_budget_s)
        return max(30.0, min(wanted, remaining))


def _ensure_valid(challenges: Path, out: Path) -> bool:
    """``submission.ensure_valid_submission``, saying so when the file was replaced; True then."""
    from arcttt.submission import ensure_valid_submission

    faults = ensure_valid_submission(challenges, out)
    if faults:
        print(f"submission {out} is not valid ({faults[0]}{' ...' if len(faults) > 1 else ''}): wrote the defaults")
    return bool(faults)


def _profile(run_dir: Path) -> str:
    from arcttt.profiling import load_run, summary

    try:
        return summary(load_run(run_dir))
    except Exception as e:  # the profile is information only; never let it stop the notebook
        return f"(no profile for {run_dir}: {e})"


def subset_tasks(challenges: Path, solutions: Path, n: int, out_dir: Path) -> tuple[Path, Path]:
    """The first ``n`` tasks (by id) that have solutions, written as a challenges/solutions pair
    in ``out_dir``: the self-check answers a few tasks, not the whole evaluation set."""
    import json

    from arcttt.data import read_json

    ch, sol = read_json(challenges, "challenges"), read_json(solutions, "solutions")
    if not isinstance(ch, dict) or not isinstance(sol, dict):
        raise InputsError(f"{challenges} / {solutions}: not JSON objects of tasks")
    ids = sorted(set(ch) & set(sol))[:n]
    if not ids:
        raise InputsError(f"{challenges} and {solutions} have no task id in common")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / EVAL_CHALLENGES, out_dir / EVAL_SOLUTIONS
    for path, obj in zip(paths, (ch, sol)):
        path.write_text(json.dumps({tid: obj[tid] for tid in ids}, separators=(",", ":")))
    return paths


# A published checkpoint runs with its team's recipe on the GPUs its preset was written for.
# omni-arc (Qwen2.5-0.5B, bf16) on L4s only: a T4 has no native bf16. mit (Llama 3 8B in bf16, as
# published) does not fit an L4; it is not mapped.
FORMAT_PRESETS = {("kaggle-l4x4", "nvarc"): "nvarc-l4x4", ("kaggle-l4x4", "architects"): "architects-l4x4",
                  ("kaggle-t4x2", "architects"): "architects-t4x2", ("kaggle-l4x4", "omni-arc"): "omni-arc"}


def preset_for_format(preset: str, fmt: str | None) -> str:
    """The preset for this machine (:func:`choose_preset`), or the published recipe of the model's
    format where one is written for these GPUs."""
    return FORMAT_PRESETS.get((preset, fmt), preset)


def format_overrides(settings: NotebookSettings) -> list[str]:
    return ([f"model.format={settings.format}"] if settings.format else []) + \
        ([f"model.adapter={settings.adapter}"] if settings.adapter else [])


def self_check(inputs: KaggleInputs, settings: NotebookSettings, preset: str) -> dict:
    """Answer a few evaluation tasks with known solutions and print the score and the profile.

    Uses the competition's evaluation files when attached, else the bundled ARC-AGI-2 evaluation
    split; writes ``<working>/selfcheck/`` (submission, score.json, report.html, run files).
    """
    from arcttt.runner import dry_run

    out = settings.working_dir / "selfcheck"
    n = settings.selfcheck_tasks
    if inputs.evaluation_challenges is not None and inputs.evaluation_solutions is not None:
        source = str(inputs.evaluation_challenges)
        challenges, solutions = subset_tasks(inputs.evaluation_challenges, inputs.evaluation_solutions, n,
                                             out / "data")
    else:
        source, challenges, solutions = "the bundled arc-agi-2-eval split", None, None
    print(f"self-check: {n} tasks of {source}, budget {settings.selfcheck_budget_s:.0f} s")
    result = dry_run(out, split="arc-agi-2-eval", tasks=n, model=inputs.model_dir,
                     time_budget=settings.selfcheck_budget_s, config=preset,
                     challenges=challenges, solutions=solutions, overrides=format_overrides(settings))
    score = result.get("score") or {}
    print(f"self-check score: {score.get('score', 0.0):.3f} "
          f"({score.get('correct')}/{score.get('total')} test outputs); "
          f"report: {result.get('report', out / 'report.html')}")
    print(_profile(out))
    return result


def notebook_main(input_root: str | Path | None = None, working_dir: str | Path | None = None, *,
                  start_time: float | None = None, settings: NotebookSettings | None = None) -> dict:
    """Everything the Kaggle notebook does after installing arcttt; returns a summary.

    Args:
        input_root: Where Kaggle mounts the inputs (default from the settings / environment).
        working_dir: Where ``submission.json`` goes (default from the settings / environment).
        start_time: When the notebook started (``time.time()``); the 12 h count from here.
        settings: Defaults to :meth:`NotebookSettings.from_env`.

    Always leaves a valid ``<working_dir>/submission.json`` when the test challenges file can be
    found. An error is re-raised after the default submission is written, except a failure of the
    run itself on the competition rerun: that is printed, and the valid file it left is kept (a
    notebook that ends in an exception may not be scored).
    """
    start = time.time() if start_time is None else start_time
    s = settings or NotebookSettings.from_env()
    if input_root is not None:
        s.input_root = Path(input_root)
    if working_dir is not None:
        s.working_dir = Path(working_dir)
    s.working_dir.mkdir(parents=True, exist_ok=True)
    out = s.working_dir / "submission.json"
    set_offline_env()

    gpus = detect_gpus()
    print(machine_report(gpus))
    try:
        inputs = find_inputs(s.input_root, model=s.model, format=s.format)
    except InputsError:
        # Without a model there is nothing to run, but the challenges may still be there.
        with contextlib.suppress(InputsError):
            from arcttt.submission import write_default_submission

            write_default_submission(find_challenges(s.input_root), out)
            print(f"wrote the default submission {out}")
        raise
    print(f"challenges: {inputs.challenges}\nmodel: {inputs.model_dir}\n"
          f"evaluation: {inputs.evaluation_challenges}, {inputs.evaluation_solutions}")
    fmt = checkpoint_format(inputs.model_dir, s.format)
    preset = s.preset or preset_for_format(choose_preset(gpus), fmt)
    print(f"format: {fmt}; preset: {preset}{' (from ARCTTT_PRESET)' if s.preset else ''}; "
          f"{'competition rerun (hidden test set)' if s.rerun else 'interactive / placeholder run'}")

    summary: dict = {"preset": preset, "rerun": s.rerun, "challenges": str(inputs.challenges),
                     "model": str(inputs.model_dir), "submission": str(out)}
    if not s.rerun and s.selfcheck_tasks > 0:
        try:
            score = self_check(inputs, s, preset).get("score") or {}
            summary["selfcheck"] = {k: score.get(k) for k in ("score", "correct", "total", "tasks")}
        except Exception as e:  # the submission below matters more than the check; say so loudly
            traceback.print_exc()
            print(f"SELF-CHECK FAILED: {type(e).__name__}: {e}")
            summary["selfcheck_error"] = f"{type(e).__name__}: {e}"

    budget = s.submission_budget(start, time.time())
    print(f"answering {inputs.challenges} with a budget of {budget:.0f} s")
    from arcttt.runner import run

    run_dir = s.working_dir / "arcttt-run"
    try:
        # resume: a notebook restarted in the same session keeps what it answered (matching records only)
        summary["run"] = run(inputs.challenges, inputs.model_dir, out, config=preset, time_budget=budget,
                             run_dir=run_dir, resume=True, overrides=format_overrides(s))
    except Exception as e:
        _ensure_valid(inputs.challenges, out)
        if not s.rerun:
            raise
        # on the rerun a notebook that raises may go unscored: keep the valid file it has written
        traceback.print_exc()
        print(f"RUN FAILED on the rerun: {type(e).__name__}: {e}; keeping the valid {out}")
        summary["run_error"] = f"{type(e).__name__}: {e}"
    except BaseException:
        _ensure_valid(inputs.challenges, out)
        raise
    finally:
        print(_profile(run_dir))
    summary["replaced_invalid"] = _ensure_valid(inputs.challenges, out)
    summary["seconds"] = time.time() - start
    print(f"submission: {out} (valid), {summary['seconds']:.0f} s since the notebook started")
    return summary


def main() -> None:
    """``python -m arcttt.kaggle``: :func:`notebook_main` with settings from the environment."""
    notebook_main()


if __name__ == "__main__":
    main()
