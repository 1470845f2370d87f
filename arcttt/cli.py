"""The ``arcttt`` command line: every command is a typed function below (its signature is the CLI,
its docstring the help), mapped to a name in :func:`commands`. Positional parameters become
positional arguments, keyword-only ones ``--options`` (required when they have no default); a
``list[str]`` option may be repeated; a ``bool`` option is a ``--flag``/``--no-flag``. Heavy modules
are imported inside the commands so that ``arcttt --help`` stays fast. A command returns its exit
code; argument errors exit 2.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import types
import typing
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from arcttt.data import DataFileError, one_line
    from arcttt.errors import first_line

    parser = build_parser(commands())
    args = vars(parser.parse_args(argv))
    func = args.pop("_func", None)
    if func is None:
        parser.print_help()
        sys.exit(2)
    try:
        rc = func(**args)
    except DataFileError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        rc = 2
    except KeyboardInterrupt:  # Ctrl-C outside a run (a run stops by itself and says so)
        print("stopped by SIGINT", file=sys.stderr)
        rc = 130
    except BrokenPipeError:  # e.g. `arcttt ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        rc = 0
    except BaseException as e:  # noqa: BLE001 - the Rust panic of a tokenizer is a BaseException
        if type(e).__name__ != "PanicException":
            raise
        print(f"error: a tokenizer failed (its own code panicked): {first_line(one_line(e))}", file=sys.stderr)
        rc = 2
    sys.exit(rc or 0)


def build_parser(table: dict, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one sub-command per entry of ``table`` (nested dicts nest)."""
    parser = parser or argparse.ArgumentParser(
        prog="arcttt", description="ARC Prize test-time-training pipeline. `arcttt COMMAND --help` for details.")
    subs = parser.add_subparsers(metavar="COMMAND")
    for name, target in table.items():
        if isinstance(target, dict):
            build_parser(target, subs.add_parser(name, help=f"{name} commands"))
            continue
        summary, arg_help = _docstring(target)
        sub = subs.add_parser(name, help=" ".join(summary.split("\n\n")[0].split()), description=summary,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        hints = typing.get_type_hints(target)
        for param in inspect.signature(target).parameters.values():
            _add_argument(sub, param, hints.get(param.name, str), arg_help.get(param.name, ""))
        sub.set_defaults(_func=target)
    return parser


def _add_argument(parser: argparse.ArgumentParser, param: inspect.Parameter, tp, help_text: str) -> None:
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType)
    if optional:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    kwargs: dict = {"help": help_text}
    if typing.get_origin(tp) is typing.Literal:
        kwargs["choices"] = typing.get_args(tp)
    elif typing.get_origin(tp) is list and param.kind is not inspect.Parameter.KEYWORD_ONLY:
        kwargs.update(nargs="+", type=typing.get_args(tp)[0])  # a positional list: one or more values
    elif typing.get_origin(tp) is list:
        kwargs.update(action="append", type=typing.get_args(tp)[0])
    elif tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif tp in (int, float, str, Path):
        kwargs["type"] = tp
    if param.kind is inspect.Parameter.KEYWORD_ONLY:
        flag = "--" + param.name.replace("_", "-")
        if param.default is inspect.Parameter.empty:
            kwargs["required"] = True
        else:
            kwargs["default"] = list(param.default) if isinstance(param.default, tuple) else param.default
            if param.default not in (None, (), False):
                kwargs["help"] += f" (default: {param.default})"
        parser.add_argument(flag, dest=param.name, **kwargs)
    else:
        if param.default is not inspect.Parameter.empty:
            kwargs.update(nargs="?", default=param.default)
        parser.add_argument(param.name, metavar=param.name.upper(), **kwargs)


def _docstring(func) -> tuple[str, dict[str, str]]:
    """(summary text, {argument: help}) from a Google-style docstring."""
    doc = inspect.getdoc(func) or ""
    summary, _, args_block = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    current = None
    for line in args_block.splitlines():
        match = re.match(r"\s{2,}(\w+):\s*(.*)", line)
        if match and len(line) - len(line.lstrip()) <= 4:
            current = match.group(1)
            helps[current] = match.group(2)
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return summary.strip(), helps


def commands() -> dict:
    """Command name -> function (nested dicts are sub-commands)."""
    return {
        "data": {"export": data_export, "stats": data_stats},
        "run": run,
        "dry-run": dry_run,
        "merge": merge,
        "validate": validate,
        "score": score,
        "report": report,
        "show": show,
        "show-prompt": show_prompt,
        "profile": profile,
        "shrink-vocab": shrink_vocab,
        "prepare-weights": prepare_weights,
        "make-tiny-model": make_tiny_model,
        "adopt-model": adopt_model,
        "convert-weights": convert_weights,
        "finetune": finetune,
    }


# --- data ---------------------------------------------------------------------------------------

def data_export(*, split: str, out: Path, tasks: int | None = None) -> int:
    """Write a bundled ARC split in Kaggle's file names and format (no download).

    Args:
        split: arc-agi-1-train, arc-agi-1-eval, arc-agi-2-train or arc-agi-2-eval.
        out: Folder for arc-agi_{training,evaluation}_{challenges,solutions}.json.
        tasks: Keep only the first N tasks (sorted by id).
    """
    from arcttt.data import SPLITS, export_split

    if split not in SPLITS:
        return _error(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if tasks is not None and tasks < 1:
        return _error(f"--tasks must be at least 1, got {tasks}")
    for path in export_split(split, out, limit=tasks):
        print(path)
    return 0


def data_stats(*, split: str) -> int:
    """Print tasks, test outputs, grid sizes and cell counts of a bundled split.

    Args:
        split: arc-agi-1-train, arc-agi-1-eval, arc-agi-2-train or arc-agi-2-eval.
    """
    from dataclasses import asdict

    from arcttt.data import SPLITS, load_split, split_stats

    if split not in SPLITS:
        return _error(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    for key, value in asdict(split_stats(load_split(split), split)).items():
        print(f"{key:>20}: {value}")
    return 0


def _error(message: str) -> int:
    from arcttt.data import one_line

    print(f"error: {one_line(message)}", file=sys.stderr)
    return 2


# --- submission, score --------------------------------------------------------------------------

def validate(submission: Path, *, challenges: Path) -> int:
    """Check a submission's format against a challenges file, as Kaggle would before scoring.

    Prints "valid: N tasks, M outputs" and exits 0, or one line per fault and exits 1. Every task
    of the challenges whose test count is readable is expected, malformed ones included.

    Args:
        submission: The submission.json to check.
        challenges: The challenges file it answers (arc-agi_*_challenges.json).
    """
    from arcttt.data import load_challenges
    from arcttt.submission import load_submission, validate_submission

    counts = load_challenges(challenges).test_counts()
    faults = validate_submission(load_submission(submission), counts)
    for fault in faults:
        print(fault)
    if faults:
        return 1
    print(f"valid: {len(counts)} tasks, {sum(counts.values())} outputs")
    return 0


def score(submission: Path, *, solutions: Path, json: bool = False) -> int:
    """Score a submission with the competition metric: a test output counts if either attempt equals
    the truth; score = correct outputs / all outputs of the tasks in the solutions.

    Prints a per-task table and the total; format faults are warned about on stderr (Kaggle would
    refuse such a submission), but whatever can be scored is scored.

    Args:
        submission: The submission.json to score.
        solutions: The solutions file (arc-agi_*_solutions.json).
        json: Print one JSON object instead (score, correct, total, tasks, per_task, faults).
    """
    import json as json_lib

    from arcttt.data import TaskError, load_solutions
    from arcttt.score import score_submission
    from arcttt.submission import load_submission, validate_submission

    obj = load_submission(submission)
    try:
        truth = load_solutions(solutions)
    except TaskError as e:
        return _error(f"solutions file {solutions}: {e}")
    result = score_submission(obj, truth)
    faults = validate_submission(obj, {tid: len(grids) for tid, grids in truth.items()})
    if faults:
        print(f"warning: {len(faults)} format faults (Kaggle would refuse this submission); "
              f"first: {faults[0]}", file=sys.stderr)
    if json:
        print(json_lib.dumps(result.to_json() | {"faults": faults}))
        return 0
    width = max([len(r.task_id) for r in result.per_task] + [4])
    print(f"{'task':<{width}}  correct  status")
    for r in result.per_task:
        print(f"{r.task_id:<{width}}  {r.correct:>3}/{r.total:<3}  {r.status}")
    print(f"score: {result.score:.4f} ({result.correct}/{result.total} test outputs, {len(result.per_task)} tasks)")
    return 0


# --- pipeline -----------------------------------------------------------------------------------

def run(*, challenges: Path, model: Path, out: Path, config: str = "auto", format: str | None = None,
        time_budget: float | None = None, workers: int | None = None, run_dir: Path | None = None,
        set: list[str] | None = None, resume: bool = False, quiet: bool = False, shard: str | None = None,
        engine: typing.Literal["local", "ray"] = "local", ray_address: str | None = None) -> int:
    """Answer every task of a challenges file before the deadline and write submission.json.

    The submission is valid from the first second (default answers) and rewritten atomically as
    tasks finish; each task's result goes to RUN_DIR/tasks/. A run folder holding another run's
    results is refused unless --resume, which reuses the results whose task, config and model match.
    Exit codes: 0 the run ended; 1 the model could not be loaded; 2 bad input or arguments (a bad
    challenges file, configuration or time budget, a run folder in use or holding another run);
    3 the run could not write a file; 130 / 143 stopped by SIGINT / SIGTERM. Whenever the out path is
    writable it is left a valid submission (the default answers at least).

    Args:
        challenges: Kaggle challenges file (arc-agi_test_challenges.json).
        model: Local model directory prepared for arcttt (has config.json, safetensors, arcttt.json).
        out: Where to write submission.json.
        config: A preset (kaggle-l4x4, kaggle-t4x2, nvarc-l4x4, architects-t4x2, architects-l4x4,
            cpu-smoke; auto: the one for this machine's GPUs) or a JSON/YAML config file.
        format: The format the model was trained on (compact, chat, nvarc, architects, mit, omni-arc), for a directory
            without arcttt.json (sets model.format; nvarc's tokenizer is recognised without it).
        time_budget: Seconds for the whole run from now, a positive number (overrides budget.time_budget_s).
        workers: Worker processes (default: one per visible GPU, one on CPU; capped at the tasks and CPUs).
        run_dir: Folder for per-task results, config, log and profile (default: OUT's folder/arcttt-run).
        set: Override one config field, e.g. --set ttt.lr=5e-5 --set search.n_augmentations=16.
        resume: Reuse the results already in RUN_DIR that match this run (same task, config and model).
        quiet: No progress bar.
        shard: K/N: answer only shard K of N (a stable split by task id), e.g. one per node of a Slurm
            array; join the N run folders with `arcttt merge`.
        engine: local (worker processes on this machine's GPUs) or ray (one worker actor per GPU of a
            Ray cluster, --workers actors on CPU; needs `pip install arcttt[ray]`).
        ray_address: The Ray cluster to join (e.g. auto, or ray://HEAD:10001; default: RAY_ADDRESS, else
            a local Ray instance started for the run).
    """
    from arcttt.runner import run as run_pipeline

    if (message := _budget_fault(time_budget) or _shard_fault(shard)) is not None:
        return _error(message)
    return _run_command(lambda: run_pipeline(challenges, model, out, config=config, time_budget=time_budget,
                                             workers=workers, run_dir=run_dir, overrides=_with_format(set, format),
                                             progress=not quiet, resume=resume, shard=shard,
                                             engine=_engine(engine, ray_address)), challenges, Path(out))


def dry_run(*, out: Path, split: str = "arc-agi-2-eval", tasks: int = 10, synthetic: int = 8,
            model: Path | None = None, format: str | None = None, time_budget: float | None = None,
            config: str | None = None, workers: int | None = None, set: list[str] | None = None,
            resume: bool = False, quiet: bool = False, engine: typing.Literal["local", "ray"] = "local",
            ray_address: str | None = None) -> int:
    """Run on bundled tasks with known solutions, then score and report.

    Exports the first TASKS tasks of a bundled split and SYNTHETIC held-out synthetic tasks (half of
    families arcttt's own model was trained on, half of families it never saw, where test-time
    training has to do the learning), runs the pipeline on them and writes, in OUT: submission.json,
    score.json, report.html, timeline.png and the run files; it prints the score of each group.
    With no --model it uses arcttt's own small trained model (weights/arcttt-tiny-syn, about 1 M
    weights trained on a CPU: a measurable stand-in, not a competitive model) and the cpu-tiny preset
    (the tiny random model and cpu-smoke when the folder is missing), so it ends in a few minutes on
    a CPU. It prints one line saying what the model is. Run again on the
    same OUT, it replaces the earlier dry run (so the profile and report show the new one), unless
    --resume. Exit codes as for `arcttt run`.

    Args:
        out: Output folder.
        split: arc-agi-1-train, arc-agi-1-eval, arc-agi-2-train or arc-agi-2-eval.
        tasks: How many tasks of the split (the first by id).
        synthetic: How many held-out synthetic tasks to add (0: none).
        model: A prepared model directory (default: weights/arcttt-tiny-syn, else a tiny random model).
        format: The format the model was trained on, for a directory without arcttt.json (see run).
        time_budget: Seconds for the run, a positive number (default: the preset's).
        config: A preset or config file (default: cpu-smoke for the tiny model, else auto: the preset for
            this machine's GPUs).
        workers: Worker processes (default: one per visible GPU, one on CPU).
        set: Override one config field, e.g. --set ttt.steps=16.
        resume: Reuse the earlier dry run's results in OUT that match instead of replacing them.
        quiet: No progress bar.
        engine: local or ray (see run).
        ray_address: The Ray cluster to join (see run).
    """
    from arcttt.data import SPLITS
    from arcttt.runner import dry_run as run_dry

    if split not in SPLITS:
        return _error(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if tasks < 1:
        return _error(f"--tasks must be at least 1, got {tasks}")
    if not 0 <= synthetic <= 1000:
        return _error(f"--synthetic must be in 0..1000, got {synthetic}")
    if (message := _budget_fault(time_budget)) is not None:
        return _error(message)
    rc = _run_command(lambda: run_dry(out, split=split, tasks=tasks, model=model, time_budget=time_budget,
                                      config=config, workers=workers, overrides=_with_format(set, format),
                                      progress=not quiet, resume=resume, synthetic=synthetic,
                                      engine=_engine(engine, ray_address)), None,
                      Path(out) / "submission.json")
    return rc


def _shard_fault(shard: str | None) -> str | None:
    from arcttt.shards import parse_shard

    try:
        parse_shard(shard)
    except ValueError as e:
        return str(e)
    return None


def _engine(name: str, address: str | None):
    """The engine object ``runner.run`` takes (None: the local worker processes)."""
    if name == "local":
        if address is not None:
            from arcttt.config import ConfigError

            raise ConfigError("--ray-address needs --engine ray")
        return None
    from arcttt.ray_engine import RayEngine

    return RayEngine(address)


def merge(run_dirs: list[Path], *, challenges: Path, out: Path, solutions: Path | None = None,
          run_dir: Path | None = None) -> int:
    """Join the run folders of one run split into shards (`arcttt run --shard K/N`) into one
    submission and one run folder, with a score when --solutions is given.

    Refused (exit 2, one line naming the folders) when the folders are not parts of one run: other
    configurations or models (their hashes), a record of a task not in CHALLENGES or of other
    content, or a task covered by two folders (overlapping shards). Tasks no folder covers keep the
    default answers, and a note says so (exit 0). The merged folder holds every record, run.json,
    submission.json, summary.json, report.html (and score.json), for `report` and `profile`.

    Args:
        run_dirs: The shards' run folders.
        challenges: The challenges file every shard answered part of.
        out: Where to write the merged submission.json.
        solutions: A solutions file: score the merged submission (score.json, and in the report).
        run_dir: The merged run folder (default: OUT's folder/arcttt-merged; an earlier merge there is replaced).
    """
    from arcttt.merge import MergeError, merge_runs
    from arcttt.rundir import RunDirError

    try:
        summary = merge_runs(run_dirs, challenges, out, solutions=solutions, run_dir=run_dir)
    except (MergeError, RunDirError, OSError) as e:
        return _error(str(e))
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}: {summary['tasks']} tasks from {summary['merged']} run folders, {summary['answered']} "
          f"answered, {summary['failed']} failed, {summary['missing']} missing (default answers); "
          f"run folder {summary['run_dir']}")
    if "score" in summary:
        s = summary["score"]
        print(f"score: {s['score']:.4f} ({s['correct']}/{s['total']} test outputs); report: {summary['report']}")
    return 0


def _budget_fault(seconds: float | None) -> str | None:
    from arcttt.budget import check_time_budget

    try:
        check_time_budget(seconds)
    except ValueError as e:
        return str(e)
    return None


def _run_command(call, challenges: Path | None, out: Path) -> int:
    """Run ``call`` (a run or a dry run), print its summary, and turn its faults into one line and
    the documented exit code, leaving ``out`` a valid submission where it can be written."""
    from arcttt.rundir import RunDirError
    from arcttt.runner import RunStopped, RunWriteError
    from arcttt.submission import leave_valid_submission

    def left() -> str:
        return leave_valid_submission(challenges, out) if challenges is not None else \
            (f"{out} holds a valid submission" if out.is_file() else "no submission written")

    try:
        summary = call()
    except RunStopped as e:
        print(f"stopped by {e.name}: {left()}", file=sys.stderr)
        return e.exit_code
    except RunWriteError as e:
        print(f"error: {e}; {left()}", file=sys.stderr)
        return 3
    except RunDirError as e:
        return _error(str(e))
    except Exception as e:
        from arcttt.config import ConfigError
        from arcttt.modeldir import ModelLoadError

        if isinstance(e, ModelLoadError):
            from arcttt.data import one_line

            print(f"error: {one_line(e)}; {left()}", file=sys.stderr)
            return 1
        if isinstance(e, ConfigError):
            return _error(str(e))
        raise
    if summary.get("model"):
        from arcttt.data import one_line

        print(f"model: {one_line(summary['model'])}")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    print(_summary_line(summary, out))
    if summary.get("write_errors"):
        first = summary["write_errors"][0]
        print(f"error: {len(summary['write_errors'])} writes failed (first: {first}); {out} holds the last "
              f"valid submission", file=sys.stderr)
        return 3
    if "score" in summary:
        s = summary["score"]
        print(f"score: {s['score']:.4f} ({s['correct']}/{s['total']} test outputs); "
              f"report: {summary['report']}")
        for name, g in summary.get("groups", {}).items():
            print(f"  {name}: {g['score']:.4f} ({g['correct']}/{g['total']} test outputs)")
    return 0


def _with_format(overrides: list[str] | None, format: str | None) -> list[str]:
    return [*(overrides or []), *([f"model.format={format}"] if format else [])]


def _summary_line(summary: dict, out: Path) -> str:
    redone = summary.get("redone") or {}
    why = f" ({sum(redone.values())} redone: " + ", ".join(f"{n} {k}" for k, n in redone.items()) + ")" \
        if redone else ""
    margin = round(summary["margin_s"])  # an int: never "-0"
    return (f"wrote {out}: {summary['tasks']} tasks, {summary['answered']} answered, "
            f"{summary['resumed']} resumed{why}, {summary['failed']} failed, {summary['rejected']} rejected, "
            f"{summary['unstarted']} not started; {summary['seconds']:.0f} s, "
            f"{margin} s left before the deadline")


# --- report, profiling ----------------------------------------------------------------------------

def report(run_dir: Path, *, solutions: Path | None = None) -> int:
    """Write RUN_DIR/report.html: one self-contained page showing the score, where the time went, a
    sortable table of every task and each task's grids (train pairs, test inputs, both attempts, the
    truth, the top candidates), with filters for solved / failed / defaulted tasks. Open it in any
    browser; it needs no network.

    Args:
        run_dir: A run folder written by `arcttt run` or `arcttt dry-run` (anything else: exit 2).
        solutions: Kaggle solutions file ({id: [grid, ...]}); adds the score and the truths (default: the
            one the run recorded, as a dry run does).
    """
    from arcttt.data import TaskError
    from arcttt.profiling import RunDirError
    from arcttt.report import write_report

    try:
        path = write_report(run_dir, solutions)
    except (RunDirError, TaskError) as e:
        return _error(str(e))
    print(path)
    return 0


def show(task_id: str, *, challenges: Path, solutions: Path | None = None, out: Path | None = None) -> int:
    """Draw one task to a PNG: its train pairs and test inputs, and the test outputs if solutions are
    given, in the ARC colours.

    Args:
        task_id: The task's id, e.g. 00576224.
        challenges: Kaggle challenges file holding the task.
        solutions: Kaggle solutions file, to draw the test outputs too.
        out: PNG to write (default: TASK_ID.png in the current folder).
    """
    from arcttt.data import TaskError
    from arcttt.report import draw_task, find_task

    try:
        task = find_task(challenges, task_id, solutions)
    except TaskError as e:
        return _error(str(e))
    print(draw_task(task, out or Path(f"{task_id}.png")))
    return 0


def show_prompt(task_id: str, *, challenges: Path, model: Path, format: str | None = None, test: int = 0,
                augmentation: str = "id", solutions: Path | None = None, max_len: int = 8192,
                json: bool = False) -> int:
    """Print exactly what the model sees for one test input: the prompt's token ids and text (and,
    with --solutions, the answer's), as the run builds them from MODEL's format and tokenizer. Only
    the tokenizer and arcttt.json are read (no weights), so a new checkpoint can be checked in a
    second before spending a GPU-day on it.

    Args:
        task_id: The task's id, e.g. 00576224.
        challenges: Kaggle challenges file holding the task.
        model: The model directory (its arcttt.json, or its tokenizer with --format).
        format: The format the model was trained on, for a directory without arcttt.json (compact, chat,
            nvarc, architects, or the template formats mit and omni-arc, which use the model's own vocabulary).
        test: Which test input (0-based).
        augmentation: An augmentation key as in the run's records, e.g. rot90/c0918273645/o1,0,2 (default:
            the identity).
        solutions: Kaggle solutions file, to show the answer the model should produce.
        max_len: Longest prompt plus answer in tokens (data.max_len of the run's config); longer prompts
            drop demonstrations as the run does.
        json: Print one JSON object (task_id, test, augmentation, format, demos, prompt_ids, prompt_text,
            and with --solutions answer_ids and answer_text).
    """
    import json as jsonlib

    from arcttt.augment import Augmentation
    from arcttt.data import TaskError
    from arcttt.modeldir import model_token_map
    from arcttt.report import find_task
    from arcttt.tokenizer import FormatError, load_tokenizer
    from arcttt.ttt_data import prompt_record

    try:
        task = find_task(challenges, task_id, solutions)
        aug = Augmentation.from_key(augmentation)
        if not Path(model).is_dir():
            raise FormatError(f"model directory {model} does not exist")
        tm, _ = model_token_map(Path(model), format)
        tokenizer = load_tokenizer(model) if (Path(model) / "tokenizer.json").is_file() else None
        record = prompt_record(task, test, tm, aug, max_len, tokenizer)
    except (TaskError, FormatError, ValueError) as e:
        return _error(str(e))
    if json:
        print(jsonlib.dumps(record, ensure_ascii=False))
        return 0
    print(f"task {task_id}, test {test}, augmentation {record['augmentation']}, format {tm.format}, "
          f"demonstrations {record['demos']}")
    for name in ("prompt", "answer"):
        if f"{name}_ids" in record:
            print(f"\n--- {name}: {len(record[name + '_ids'])} tokens ---")
            print(record[f"{name}_text"] if record[f"{name}_text"] is not None else "(no tokenizer.json to decode)")
            print(f"ids: {record[name + '_ids']}")
    return 0


def profile(run_dir: Path | None = None, *, plan: bool = False, challenges: Path | None = None,
            config: str = "kaggle-l4x4", calibration: Path | None = None, model: Path | None = None) -> int:
    """Where a run's time went: per-phase totals (seconds and share of the budget), per-task rows,
    idle time per worker and the margin left at the deadline; saves RUN_DIR/timeline.png.
    With --plan, estimate instead from measured per-token costs whether a full run fits the budget.

    Args:
        run_dir: A run directory written by `arcttt run` or `arcttt dry-run` (not with --plan).
        plan: Estimate a run of CHALLENGES under CONFIG instead of reading a run directory.
        challenges: With --plan: the challenges file to plan for.
        config: With --plan: the preset or config file to plan for.
        calibration: With --plan: a finished run directory whose measured per-token costs to plan with
            (default: assumed costs of a 4B 4-bit model on one L4).
        model: With --plan: a model directory whose config.json gives the shape for the peak-memory
            estimate (default: Qwen3-4B with a 16-token vocabulary).
    """
    if plan:
        if challenges is None:
            return _error("--plan needs --challenges FILE")
        from arcttt.config import ConfigError
        from arcttt.plan import plan_report
        from arcttt.rundir import RunDirError

        try:
            print(plan_report(challenges, config, calibration))
        except ConfigError as e:
            return _error(str(e))
        except BrokenPipeError:  # `arcttt profile --plan ... | head`: main() handles it
            raise
        except (RunDirError, OSError, KeyError, ValueError) as e:  # a calibration folder that is not a finished run
            return _error(f"calibration run {calibration}: {type(e).__name__}: {e}")
        from arcttt.memory import plan_memory_report  # peak GPU memory per preset, L4 and T4

        try:
            print("\n" + plan_memory_report(config, model))
        except (OSError, KeyError, ValueError) as e:  # no config.json, or one without a decoder's shape
            return _error(f"model {model}: cannot read its shape: {type(e).__name__}: {e}")
        return 0
    if run_dir is None:
        return _error("give a RUN_DIR to profile, or --plan --challenges FILE")
    from arcttt.profiling import RunDirError, load_run, summary, timeline_figure

    try:
        run = load_run(run_dir)
    except RunDirError as e:
        return _error(str(e))
    print(summary(run))
    print(f"\ntimeline: {timeline_figure(run, Path(run_dir) / 'timeline.png')}")
    return 0


# --- weights ------------------------------------------------------------------------------------

def shrink_vocab(src: Path, dst: Path, *, format: typing.Literal["compact", "chat"], overwrite: bool = False) -> int:
    """Cut a local Hugging Face causal LM's vocabulary down to the tokens of an arcttt format.

    Keeps only the input-embedding and output-layer rows of the format's tokens (plus bos/eos/pad),
    so the model's logits at those tokens are unchanged, and writes to DST: safetensors weights,
    config.json with the new vocab size and token ids, a matching tokenizer and arcttt.json (the
    format's token ids). Offline: SRC must hold config.json, *.safetensors and a tokenizer.

    Args:
        src: The source model directory.
        dst: Where to write the shrunk model (a new or empty folder outside SRC).
        format: compact (a vocabulary holding the 16 compact tokens) or chat (ChatML special tokens,
            as in Qwen).
        overwrite: Replace DST when it is a model folder arcttt wrote (it holds arcttt.json); without
            it DST must be new or empty. DST is written beside itself and renamed in at the end.
    """
    from arcttt.tokenizer import FormatError
    from arcttt.weights import WeightsError, shrink_vocab as shrink

    try:
        out = shrink(src, dst, format, overwrite=overwrite)
    except (WeightsError, FormatError, OSError) as e:
        return _error(str(e))
    print(out)
    return 0


# --- kaggle (prepare-weights) --------------------------------------------------------------------

def prepare_weights(src: Path, dst: Path, *, format: typing.Literal["compact", "chat"],
                    quantize: typing.Literal["none", "4bit"] = "none",
                    compute_dtype: typing.Literal["auto", "bf16", "fp16", "fp32"] = "auto",
                    allow_cpu_quantize: bool = False, overwrite: bool = False) -> int:
    """Make a local Hugging Face model ready to attach on Kaggle: shrink its vocabulary to FORMAT
    (as shrink-vocab), optionally save it pre-quantized to bitsandbytes 4-bit (nf4, double
    quantization) safetensors, and write arcttt.json (format, token ids, source, quantization).

    Quantizing needs a CUDA GPU; without one it stops with an error unless --allow-cpu-quantize
    (bitsandbytes 0.50 quantizes on CPU too: slow, meant for tests and small models). Offline: SRC
    must hold config.json, *.safetensors and a tokenizer. See weights/README.md.

    Args:
        src: The source model directory.
        dst: Where to write the prepared model (a new or empty folder).
        format: compact (a vocabulary holding the 16 compact tokens) or chat (ChatML special tokens, as in Qwen).
        quantize: none, or 4bit (bitsandbytes nf4).
        compute_dtype: Compute dtype stored with 4-bit weights (auto: bf16 on a GPU that has it, fp16 on one
            that does not, fp32 on CPU); use fp16 for a model meant for T4s.
        allow_cpu_quantize: Quantize on the CPU when no GPU is visible.
        overwrite: Replace DST when it is a model folder arcttt wrote (it holds arcttt.json); without
            it DST must be new or empty. DST is written beside itself and renamed in at the end.
    """
    from arcttt.tokenizer import FormatError
    from arcttt.weights import WeightsError, prepare_weights as prepare

    try:
        out = prepare(src, dst, format, quantize=quantize, compute_dtype=compute_dtype, allow_cpu=allow_cpu_quantize,
                      overwrite=overwrite)
    except (WeightsError, FormatError, OSError) as e:
        return _error(str(e))
    print(out)
    return 0


# --- model --------------------------------------------------------------------------------------

def make_tiny_model(out: Path, *, format: typing.Literal["compact", "chat", "nvarc", "architects", "mit",
                                                         "omni-arc"] = "compact",
                    hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int = 128,
                    extra_tokens: int = 0, seed: int = 0, arch: typing.Literal["llama", "qwen3", "mistral"] = "llama",
                    meta: bool = True) -> int:
    """Build a small random-initialised causal LM with a matching local tokenizer and arcttt.json in OUT
    (no download): a stand-in for real weights in tests, dry runs and benchmarks. It solves nothing.

    Args:
        out: Folder to write (config.json, model.safetensors, tokenizer files, arcttt.json).
        format: Token format the model speaks: compact (16 tokens), chat (ChatML markers), nvarc (NVARC's
            16-token vocabulary), architects (the ARChitects' single characters), or the template formats
            mit (a byte-level BPE with Llama 3's split and special tokens) and omni-arc (Qwen's split, ChatML).
        arch: Architecture: llama, qwen3 (NVARC's base) or mistral (the ARChitects').
        meta: Write arcttt.json (--no-meta: like a published checkpoint, which has none).
        hidden: Hidden size (a multiple of HEADS with an even head size).
        layers: Decoder layers.
        heads: Attention heads (key/value heads: half of them).
        intermediate: MLP inner size.
        extra_tokens: Unused filler tokens added to the vocabulary (for shrink-vocab to cut).
        seed: Seed of the random weights.
    """
    from arcttt.model import make_tiny_model as make

    try:
        path = make(out, format, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                    extra_tokens=extra_tokens, seed=seed, arch=arch, meta=meta)
    except ValueError as e:
        return _error(str(e))
    print(path)
    return 0


def adopt_model(src: Path, dst: Path, *, format: typing.Literal["compact", "chat", "nvarc", "architects", "mit",
                                                                "omni-arc"],
                copy: bool = False, overwrite: bool = False) -> int:
    """Make a ready model directory for a published checkpoint that is already cut (and maybe saved in
    bnb 4-bit) and has no arcttt.json: DST gets every file of SRC linked (or copied) as it is, and
    arcttt.json with the format's token ids in the checkpoint's own tokenizer (every digit and marker
    checked to round-trip). Nothing is cut, quantized or written into SRC (a Kaggle input is
    read-only). `run --format NAME` takes SRC directly too; this is for those who prefer a directory
    that says its format.

    Args:
        src: The checkpoint's directory (config.json, *.safetensors, tokenizer.json).
        dst: The new directory (must not exist, or be empty).
        format: The format the checkpoint was trained on: nvarc, architects, compact or chat.
        copy: Copy the files instead of linking them.
        overwrite: Replace DST when it is a model folder arcttt wrote (it holds arcttt.json); without
            it DST must be new or empty. DST is written beside itself and renamed in at the end.
    """
    from arcttt.tokenizer import FormatError
    from arcttt.weights import WeightsError, adopt_model as adopt

    try:
        out = adopt(src, dst, format, copy=copy, overwrite=overwrite)
    except (WeightsError, FormatError, OSError) as e:
        return _error(str(e))
    print(out)
    return 0


def convert_weights(src: Path, dst: Path, *, overwrite: bool = False) -> int:
    """Convert a model or PEFT adapter directory with pickled weights (pytorch_model.bin, sharded
    pytorch_model-*.bin with their index, adapter_model.bin) to safetensors, which is all that
    arcttt loads. Tensors are read with torch.load(weights_only=True) only: a file that needs more
    than tensors to unpickle (a pickled class or function) is refused, and no pickled code ever
    runs. Shards keep their split (model-0000i-of-0000n.safetensors + model.safetensors.index.json);
    every other file (config, tokenizer, generation config, ...) is copied, other pickles
    (training_args.bin, optimizer.pt) are left out. Nothing is written into SRC.

    Args:
        src: The directory with .bin weights.
        dst: The new directory (must not exist, or be empty).
        overwrite: Replace DST when it is a model folder arcttt wrote (it holds arcttt.json); without
            it DST must be new or empty. DST is written beside itself and renamed in at the end.
    """
    from arcttt.weights import WeightsError, convert_weights as convert

    try:
        done = convert(src, dst, overwrite=overwrite)
    except (WeightsError, OSError) as e:
        return _error(str(e))
    for old, new in done["converted"].items():
        print(f"{old} -> {new}")
    for name in done["left_out"]:
        print(f"{name}: a pickle, not copied")
    print(done["dst"])
    return 0


# --- finetune -----------------------------------------------------------------------------------

def finetune(*, model: Path, out: Path, format: str | None = None, data: list[str] | None = None,
             exclude: list[str] | None = None, eval: list[str] | None = None, config: str | None = None,
             set: list[str] | None = None, resume: bool = False, overwrite: bool = False,
             quiet: bool = False) -> int:
    """Fine-tune a model on many ARC tasks before test-time training, and write a ready model
    directory to OUT (LoRA merged, safetensors, tokenizer, arcttt.json) that `run` and
    `dry-run --model OUT` take as it is.

    Every sample is a task under a random symmetry, colour permutation and pair order, packed with
    others into rows of seq_len tokens; loss on the outputs; warmup + cosine; a checkpoint in
    OUT/checkpoint every save_every steps. The bundled evaluation splits are always excluded.
    On several GPUs (or CPU processes) run the same command under torchrun:
    `torchrun --nproc_per_node 4 -m arcttt finetune ...` (DDP; --set distributed=fsdp to shard).

    Args:
        model: The base model directory (config.json, *.safetensors, tokenizer; arcttt.json or --format).
        out: The output model directory (also holds finetune.log and the checkpoint).
        format: Token format to train in (default: the one the base model's arcttt.json records).
        data: A training source, repeatable: a bundled split (arc-agi-1-train, ...), a Kaggle
            challenges file (its *_solutions.json neighbour is read), a JSONL of tasks, a folder of task
            JSON files, or synthetic:N[:SEED[:FAMILY+FAMILY...]] (default: arc-agi-1-train).
        exclude: Drop every task whose id or content (or a test input) appears in this source;
            repeatable, same kinds as --data; arc-agi-1-eval and arc-agi-2-eval are always excluded.
        eval: Held-out tasks (same kinds as --data, repeatable; excluded from training too) scored
            teacher-forced every eval_every steps (--set eval_every=N): loss, cells and answers right.
        config: A finetune preset (cpu-tiny, gpu-lora, gpu-full; default: gpu-lora with a GPU, else
            cpu-tiny) or a JSON/YAML file.
        set: Override one config field, e.g. --set steps=200 --set lora.rank=32 --set mode=lora.
        resume: Continue from OUT/checkpoint (same configuration; losses as if never stopped).
        overwrite: Replace OUT when it is a model folder arcttt wrote (it holds arcttt.json); without it
            OUT must be new, empty or (with --resume) this command's unfinished run. The model is
            written beside OUT and renamed in at the end.
        quiet: No progress bar.
    """
    from arcttt.config import ConfigError
    from arcttt.data import DataFileError
    from arcttt.finetune import finetune as run_finetune, load_finetune_config

    try:
        cfg = load_finetune_config(config, set or [])
        summary = run_finetune(model, out, format=format, data=data or [], exclude=exclude or [],
                               eval=eval or [], cfg=cfg, resume=resume, overwrite=overwrite, progress=not quiet)
    except (ConfigError, ValueError, OSError, DataFileError) as e:
        return _error(str(e))
    if not summary["finished"]:
        print(f"stopped at step {summary['steps']}; continue with --resume")
    return 0


if __name__ == "__main__":
    main()
