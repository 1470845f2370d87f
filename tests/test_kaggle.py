"""Kaggle packaging: finding the inputs in both mount layouts, the preset choice, the notebook's
settings and budget, the metadata files, and the wheelhouse pins against pyproject."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from arcttt import kaggle
from arcttt.kaggle import Gpu, InputsError, NotebookSettings, choose_preset, find_challenges, find_inputs
from arcttt.submission import submission_faults

REPO = Path(__file__).resolve().parents[1]
KAGGLE_DIR = REPO / "kaggle"


def touch(path: Path, text: str = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def competition_files(folder: Path) -> None:
    for name in (kaggle.TEST_CHALLENGES, kaggle.EVAL_CHALLENGES, kaggle.EVAL_SOLUTIONS, "sample_submission.json"):
        touch(folder / name)


def model_files(folder: Path) -> None:
    for name in (*kaggle.MODEL_FILES, "model.safetensors"):
        touch(folder / name)


def flat_tree(root: Path) -> dict[str, Path]:
    """The 2024-2025 layout: every source directly under the root."""
    comp, model = root / "arc-prize-2025", root / "arcttt-tiny-model"
    competition_files(comp)
    model_files(model)
    touch(root / "arcttt-code" / "arcttt-0.1.0-py3-none-any.whl", "")
    touch(root / "arcttt-wheelhouse" / "peft-0.21.2-py3-none-any.whl", "")
    return {"competition": comp, "model": model, "code": root / "arcttt-code", "wheels": root / "arcttt-wheelhouse"}


def nested_tree(root: Path) -> dict[str, Path]:
    """The 2026 layout: competitions/<slug>, datasets/<owner>/<slug>, models/<owner>/<model>/<fw>/<var>/<ver>."""
    comp = root / "competitions" / "arc-prize-2026"
    model = root / "models" / "someone" / "arcttt-tiny" / "transformers" / "compact" / "1"
    competition_files(comp)
    model_files(model)
    touch(root / "datasets" / "someone" / "arcttt-code" / "arcttt-0.1.0-py3-none-any.whl", "")
    touch(root / "datasets" / "someone" / "arcttt-wheelhouse" / "peft-0.21.2-py3-none-any.whl", "")
    return {"competition": comp, "model": model, "code": root / "datasets" / "someone" / "arcttt-code",
            "wheels": root / "datasets" / "someone" / "arcttt-wheelhouse"}


@pytest.mark.parametrize("layout", [flat_tree, nested_tree])
def test_find_inputs_in_both_layouts(tmp_path, layout):
    where = layout(tmp_path)
    found = find_inputs(tmp_path)
    assert found.challenges == where["competition"] / kaggle.TEST_CHALLENGES
    assert found.evaluation_challenges == where["competition"] / kaggle.EVAL_CHALLENGES
    assert found.evaluation_solutions == where["competition"] / kaggle.EVAL_SOLUTIONS
    assert found.model_dir == where["model"]
    assert set(found.wheel_dirs) == {where["code"], where["wheels"]}
    assert find_challenges(tmp_path) == found.challenges


@pytest.mark.parametrize("layout", [flat_tree, nested_tree])
def test_the_competition_copy_wins_over_a_dataset_copy(tmp_path, layout):
    where = layout(tmp_path)
    # a dataset attached for other reasons that also holds (public) copies of the competition files,
    # shallower than the nested competition folder and sorted before it
    decoy = tmp_path / "a-arc-data"
    competition_files(decoy)
    found = find_inputs(tmp_path)
    assert found.challenges.parent == where["competition"]
    assert found.evaluation_solutions.parent == where["competition"]


def test_evaluation_files_are_optional_and_found_elsewhere(tmp_path):
    touch(tmp_path / "arc-prize-2025" / kaggle.TEST_CHALLENGES)
    model_files(tmp_path / "m")
    assert find_inputs(tmp_path).evaluation_challenges is None
    competition_files(tmp_path / "datasets" / "o" / "arc-eval")
    found = find_inputs(tmp_path)
    assert found.challenges.parent == tmp_path / "arc-prize-2025"
    assert found.evaluation_challenges.parent == tmp_path / "datasets" / "o" / "arc-eval"


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(InputsError, match="ARCTTT_KAGGLE_INPUT"):
        find_inputs(tmp_path / "nowhere")


def test_missing_challenges_is_a_clear_error(tmp_path):
    model_files(tmp_path / "m")
    with pytest.raises(InputsError, match=r"no arc-agi_test_challenges\.json .*attach the competition"):
        find_inputs(tmp_path)
    with pytest.raises(InputsError, match="arc-agi_test_challenges.json"):
        find_challenges(tmp_path)


def test_missing_model_is_a_clear_error_and_names_unprepared_models(tmp_path):
    competition_files(tmp_path / "arc-prize-2025")
    with pytest.raises(InputsError, match="prepare-weights") as e:
        find_inputs(tmp_path)
    assert "without arcttt.json" not in str(e.value)
    hf = tmp_path / "qwen3-4b"
    touch(hf / "config.json")
    touch(hf / "model.safetensors", "")
    with pytest.raises(InputsError, match="without arcttt.json.*qwen3-4b"):
        find_inputs(tmp_path)


def test_several_models_need_a_fragment(tmp_path):
    competition_files(tmp_path / "arc-prize-2025")
    model_files(tmp_path / "models" / "o" / "small" / "transformers" / "a" / "1")
    model_files(tmp_path / "models" / "o" / "large" / "transformers" / "a" / "1")
    with pytest.raises(InputsError, match="2 model directories.*ARCTTT_MODEL"):
        find_inputs(tmp_path)
    assert find_inputs(tmp_path, model="large").model_dir.parts[-4] == "large"
    with pytest.raises(InputsError, match="matches 0"):
        find_inputs(tmp_path, model="medium")
    with pytest.raises(InputsError, match="matches 2"):
        find_inputs(tmp_path, model="transformers")


def test_search_depth_is_bounded(tmp_path):
    competition_files(tmp_path / "arc-prize-2025")
    deep = tmp_path.joinpath(*["d"] * (kaggle.MAX_DEPTH + 2))
    model_files(deep)
    with pytest.raises(InputsError, match="no model directory"):
        find_inputs(tmp_path)


T4 = Gpu(0, "Tesla T4", (7, 5), 15.0)
L4 = Gpu(0, "NVIDIA L4", (8, 9), 22.0)


@pytest.mark.parametrize("gpus, preset", [
    ([], "cpu-smoke"),
    ([L4, L4, L4, L4], "kaggle-l4x4"),
    ([L4], "kaggle-l4x4"),
    ([T4, T4], "kaggle-t4x2"),
    ([L4, T4], "kaggle-t4x2"),
    ([Gpu(0, "Tesla P100-PCIE-16GB", (6, 0), 16.0)], "kaggle-t4x2"),
])
def test_choose_preset(gpus, preset):
    assert choose_preset(gpus) == preset


def test_choose_preset_on_this_machine_names_a_real_preset():
    from arcttt.config import PRESETS

    assert choose_preset() in PRESETS


def test_machine_report_lists_the_gpus():
    text = kaggle.machine_report([L4, T4])
    assert "NVIDIA L4" in text and "bf16 native" in text and "Tesla T4" in text and "fp16" in text
    assert "python" in kaggle.machine_report([])


def test_set_offline_env(tmp_path):
    env = {"HF_HUB_OFFLINE": "0"}
    kaggle.set_offline_env(env, tmp_path / "cache")
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == env["UNSLOTH_DISABLE_STATISTICS"] == "1"
    assert Path(env["UNSLOTH_COMPILE_LOCATION"]).is_dir()


def test_settings_from_env():
    s = NotebookSettings.from_env({})
    assert s.input_root == Path("/kaggle/input") and s.working_dir == Path("/kaggle/working")
    assert not s.rerun and s.time_budget_s is None
    s = NotebookSettings.from_env({"ARCTTT_KAGGLE_INPUT": "/x", "ARCTTT_KAGGLE_WORKING": "/y",
                                   "KAGGLE_IS_COMPETITION_RERUN": "True", "ARCTTT_TIME_BUDGET": "60",
                                   "ARCTTT_SELFCHECK_TASKS": "0", "ARCTTT_PRESET": "kaggle-t4x2"})
    assert (s.input_root, s.working_dir, s.rerun, s.time_budget_s, s.selfcheck_tasks, s.preset) == (
        Path("/x"), Path("/y"), True, 60.0, 0, "kaggle-t4x2")
    with pytest.raises(ValueError, match="ARCTTT_TIME_BUDGET='soon'"):
        NotebookSettings.from_env({"ARCTTT_TIME_BUDGET": "soon"})
    with pytest.raises(ValueError, match="time_budget_s must be > 0"):
        NotebookSettings(time_budget_s=-1)


def test_submission_budget_counts_from_the_notebook_start():
    limit = kaggle.KAGGLE_LIMIT_S
    rerun = NotebookSettings(rerun=True, margin_s=900)
    assert rerun.submission_budget(start=0, now=100) == limit - 900 - 100
    assert rerun.submission_budget(start=0, now=limit) == 30.0  # late: still long enough for defaults
    asked = NotebookSettings(rerun=True, time_budget_s=600)
    assert asked.submission_budget(start=0, now=100) == 600
    assert NotebookSettings(time_budget_s=10 * limit).submission_budget(0, 0) == limit - 900
    assert NotebookSettings().submission_budget(0, 0) == NotebookSettings().interactive_budget_s


# --- metadata files and the wheelhouse ------------------------------------------------------------

KERNEL_FIELDS = {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
                 "enable_internet", "dataset_sources", "competition_sources", "model_sources",
                 "kernel_sources", "machine_shape"}


def load_build():
    spec = importlib.util.spec_from_file_location("kaggle_build", KAGGLE_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_metadata():
    meta = json.loads((KAGGLE_DIR / "kernel-metadata.json").read_text())
    assert KERNEL_FIELDS <= set(meta)
    assert meta["enable_internet"] is False  # the CLI leaves it to the server when absent
    assert meta["enable_gpu"] is True
    assert meta["machine_shape"] == "NvidiaL4"
    assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
    assert (KAGGLE_DIR / meta["code_file"]).resolve() == (REPO / "notebooks" / "arcttt-submit.ipynb").resolve()
    assert meta["competition_sources"] == ["arc-prize-2026-arc-agi-2"]  # the 2026 ARC-AGI-2 competition
    slugs = {s.split("/")[1] for s in meta["dataset_sources"]}
    assert slugs == {"arcttt-code", "arcttt-wheelhouse"}
    for folder in ("code-dataset", "wheelhouse"):
        ds = json.loads((KAGGLE_DIR / folder / "dataset-metadata.json").read_text())
        assert ds["id"] in meta["dataset_sources"]
        assert 6 <= len(ds["title"]) <= 50 and len(ds["licenses"]) == 1
    assert len(meta["model_sources"]) == 1 and len(meta["model_sources"][0].split("/")) == 5


def test_every_pin_satisfies_pyproject():
    build = load_build()
    pins = build.read_pins(KAGGLE_DIR / "pins.txt")
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]]
    for name in ("unsloth", "unsloth_zoo", "bitsandbytes", "peft", "transformers", "accelerate"):
        assert canonicalize_name(name) in pins, f"{name} is not pinned"
    for req in reqs:
        name = canonicalize_name(req.name)
        if name in pins:
            ok = req.specifier.contains(Version(pins[name]), prereleases=True)
            assert ok, f"{name}=={pins[name]} violates {req}"
        else:
            assert name in build.FROM_IMAGE, f"{req.name} is neither pinned nor provided by the Kaggle image"


def test_read_pins_refuses_loose_lines(tmp_path):
    build = load_build()
    with pytest.raises(ValueError, match="line 2.*exact"):
        build.read_pins(touch(tmp_path / "p.txt", "a==1\nb>=2\n"))
    with pytest.raises(ValueError, match="twice"):
        build.read_pins(touch(tmp_path / "p.txt", "a==1\nA==2\n"))


def test_pin_consistency_check(tmp_path):
    build = load_build()
    requires = {"unsloth": ["peft>=0.18", "trl<=1.15.0", "xformers; platform_system == 'Windows'"],
                "peft": ["torch>=2"]}
    pins = {"unsloth": "1", "peft": "0.21.2", "trl": "1.16.0"}
    faults = build.inconsistencies(pins, requires, python="3.12")
    assert faults == ["unsloth 1 needs trl<=1.15.0, pinned trl==1.16.0"]


def test_code_dataset_build_installs_offline(tmp_path):
    """Build the code dataset (the arcttt wheel + install list) and let pip resolve the install the
    notebook runs, offline, against it."""
    out = tmp_path / "dist"
    subprocess.run([sys.executable, str(KAGGLE_DIR / "build.py"), "--owner", "tester", "--out", str(out),
                    "--only", "code"], check=True, cwd=REPO, capture_output=True, timeout=300)
    code = out / "code-dataset"
    assert json.loads((code / "dataset-metadata.json").read_text())["id"] == "tester/arcttt-code"
    assert list(code.glob("arcttt-*.whl"))
    kernel = json.loads((out / "kernel" / "kernel-metadata.json").read_text())
    assert kernel["id"].startswith("tester/") and all(s.startswith("tester/") for s in kernel["dataset_sources"])
    assert (out / "kernel" / kernel["code_file"]).is_file()
    dry = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-deps",
                          "--ignore-installed", "--find-links", str(code), "-r", str(code / kaggle.INSTALL_LIST)],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "arcttt" in dry.stdout


# --- prepare-weights ----------------------------------------------------------------------------

def test_prepare_weights_without_quantization(tiny_model_dir, tmp_path):
    from arcttt.modeldir import read_model_meta
    from arcttt.weights import prepare_weights

    dst = prepare_weights(tiny_model_dir, tmp_path / "prepared", "compact")
    tm, meta = read_model_meta(dst)
    assert meta["quantization"] is None and meta["prepared_by"] == "arcttt prepare-weights"
    assert meta["source"] == str(tiny_model_dir) and tm.format == "compact"
    assert "quantization_config" not in json.loads((dst / "config.json").read_text())


def test_prepare_weights_refuses_a_used_destination(tiny_model_dir, tmp_path):
    from arcttt.weights import WeightsError, prepare_weights

    touch(tmp_path / "dst" / "old.txt")
    with pytest.raises(WeightsError, match="not an empty folder"):
        prepare_weights(tiny_model_dir, tmp_path / "dst", "compact")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_prepare_weights_4bit_needs_a_gpu_or_the_cpu_flag(tiny_model_dir, tmp_path, capsys):
    import torch

    from arcttt.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the no-GPU error cannot happen here")
    with pytest.raises(SystemExit) as e:
        main(["prepare-weights", str(tiny_model_dir), str(tmp_path / "q"), "--format", "compact",
              "--quantize", "4bit"])
    assert e.value.code != 0
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--allow-cpu-quantize" in err
    assert not (tmp_path / "q").exists()  # refused before any work


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_prepare_weights_4bit_on_cpu_loads_back_quantized(tiny_model_dir, tmp_path):
    """bitsandbytes 0.50 quantizes on CPU: the saved 4-bit directory loads through the pipeline's
    loader (with and without load_in_4bit) and stays close to the full-precision model."""
    import torch

    from arcttt.cli import main
    from arcttt.data import load_split
    from arcttt.formats import encode
    from arcttt.model import ModelConfig, load_model
    from arcttt.modeldir import read_model_meta

    dst = tmp_path / "q4"
    with pytest.raises(SystemExit) as e:
        main(["prepare-weights", str(tiny_model_dir), str(dst), "--format", "compact", "--quantize", "4bit",
              "--allow-cpu-quantize"])
    assert e.value.code == 0
    config = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["load_in_4bit"]
    assert config["bnb_4bit_quant_type"] == "nf4"
    _, meta = read_model_meta(dst)
    assert meta["quantization"]["bits"] == 4 and meta["quantization"]["quantized_on"] == "cpu"
    assert not list(tmp_path.glob(".q4.*"))  # the intermediate copy is gone

    task = load_split("arc-agi-1-eval")[0]
    full = load_model(tiny_model_dir, ModelConfig(backend="hf", dtype="fp32"))
    ids = torch.as_tensor(encode(task.train[:1], task.test_inputs[0], full.token_map).ids)[None, :256]
    logits = {}
    for load_in_4bit in (True, False):
        q = load_model(dst, ModelConfig(backend="hf", dtype="fp32", load_in_4bit=load_in_4bit))
        layer = q.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
        assert type(layer).__name__ == "Linear4bit"
        with torch.no_grad():
            logits[load_in_4bit] = q.model(input_ids=ids).logits
    with torch.no_grad():
        ref = full.model(input_ids=ids).logits
    assert torch.equal(logits[True], logits[False])
    err = (logits[True] - ref).abs().max().item()
    assert 0 < err < 0.25 * ref.abs().max().item()


# --- notebook_main's failure paths (the full notebook runs in test_notebook.py) ---------------------

def challenges_tree(root: Path, with_model: bool = True) -> Path:
    from arcttt.data import bundled_split

    challenges, _ = bundled_split("arc-agi-1-train")
    keep = sorted(challenges)[:3]
    path = touch(root / "competitions" / "arc-prize-2025" / kaggle.TEST_CHALLENGES,
                 json.dumps({t: challenges[t] for t in keep}))
    if with_model:
        model_files(root / "datasets" / "o" / "m")
    return path


def quiet_settings(monkeypatch, root: Path, working: Path) -> NotebookSettings:
    # notebook_main sets these in os.environ; registering them here restores them after the test
    for key in kaggle.offline_env("x"):
        monkeypatch.setenv(key, "")
    return NotebookSettings(input_root=root, working_dir=working, selfcheck_tasks=0, preset="cpu-smoke")


def submission_is_valid(challenges: Path, working: Path) -> bool:
    return submission_faults(challenges, working / "submission.json") == []


def test_notebook_main_without_a_model_writes_defaults_and_raises(tmp_path, monkeypatch):
    challenges = challenges_tree(tmp_path / "in", with_model=False)
    settings = quiet_settings(monkeypatch, tmp_path / "in", tmp_path / "work")
    with pytest.raises(InputsError, match="no model directory"):
        kaggle.notebook_main(settings=settings)
    assert submission_is_valid(challenges, tmp_path / "work")


def test_notebook_main_without_challenges_raises_clearly(tmp_path, monkeypatch):
    settings = quiet_settings(monkeypatch, tmp_path, tmp_path / "work")
    with pytest.raises(InputsError, match="arc-agi_test_challenges.json"):
        kaggle.notebook_main(settings=settings)
    assert not (tmp_path / "work" / "submission.json").exists()


def test_notebook_main_replaces_a_broken_submission_when_the_run_fails(tmp_path, monkeypatch):
    import arcttt.runner

    challenges = challenges_tree(tmp_path / "in")
    settings = quiet_settings(monkeypatch, tmp_path / "in", tmp_path / "work")

    def crashing_run(challenges, model, out, **kwargs):
        Path(out).write_text('{"half a file": [')
        raise RuntimeError("worker died")

    monkeypatch.setattr(arcttt.runner, "run", crashing_run)
    with pytest.raises(RuntimeError, match="worker died"):
        kaggle.notebook_main(settings=settings)
    assert submission_is_valid(challenges, tmp_path / "work")


def test_notebook_main_keeps_a_valid_partial_submission(tmp_path, monkeypatch):
    import arcttt.runner
    from arcttt.data import load_challenges
    from arcttt.submission import SubmissionWriter

    challenges = challenges_tree(tmp_path / "in")
    settings = quiet_settings(monkeypatch, tmp_path / "in", tmp_path / "work")
    first = load_challenges(challenges).ids[0]

    def partial_run(challenges, model, out, **kwargs):
        writer = SubmissionWriter.for_challenges(out, load_challenges(challenges), fallback="zeros")
        writer.set(first, [([[7]], [[8]])])
        raise TimeoutError("deadline")

    monkeypatch.setattr(arcttt.runner, "run", partial_run)
    with pytest.raises(TimeoutError):
        kaggle.notebook_main(settings=settings, start_time=0.0)
    saved = json.loads((tmp_path / "work" / "submission.json").read_text())
    assert saved[first] == [{"attempt_1": [[7]], "attempt_2": [[8]]}]
    assert submission_is_valid(challenges, tmp_path / "work")


def test_notebook_main_resumes_its_own_run_folder(tmp_path, monkeypatch):
    """A notebook restarted in the same session reuses its run folder (matching results only)."""
    import arcttt.runner
    from arcttt.data import load_challenges
    from arcttt.submission import SubmissionWriter

    challenges_tree(tmp_path / "in")
    settings = quiet_settings(monkeypatch, tmp_path / "in", tmp_path / "work")
    seen = {}

    def fake_run(challenges, model, out, **kwargs):
        seen.update(kwargs)
        SubmissionWriter.for_challenges(out, load_challenges(challenges))
        return {}

    monkeypatch.setattr(arcttt.runner, "run", fake_run)
    kaggle.notebook_main(settings=settings, start_time=0.0)
    assert seen["resume"] is True and seen["run_dir"] == tmp_path / "work" / "arcttt-run"


def test_subset_tasks_takes_the_first_tasks_with_solutions(tmp_path):
    from arcttt.data import export_split

    ch, sol = export_split("arc-agi-2-eval", tmp_path / "eval", limit=5)
    sub_ch, sub_sol = kaggle.subset_tasks(ch, sol, 2, tmp_path / "sub")
    picked = json.loads(sub_ch.read_text())
    assert list(picked) == sorted(json.loads(ch.read_text()))[:2]
    assert set(json.loads(sub_sol.read_text())) == set(picked)
    touch(tmp_path / "other.json", json.dumps({"zzz": []}))
    with pytest.raises(InputsError, match="no task id in common"):
        kaggle.subset_tasks(ch, tmp_path / "other.json", 2, tmp_path / "sub2")


def test_notebook_main_on_the_rerun_keeps_the_valid_file_instead_of_raising(tmp_path, monkeypatch, capsys):
    import arcttt.runner

    challenges = challenges_tree(tmp_path / "in")
    settings = quiet_settings(monkeypatch, tmp_path / "in", tmp_path / "work")
    settings.rerun = True

    def crashing_run(challenges, model, out, **kwargs):
        Path(out).write_text('{"half a file": [')
        raise RuntimeError("worker died")

    monkeypatch.setattr(arcttt.runner, "run", crashing_run)
    summary = kaggle.notebook_main(settings=settings, start_time=0.0)  # no exception on the rerun
    assert "worker died" in summary["run_error"] and "RUN FAILED" in capsys.readouterr().out
    assert submission_is_valid(challenges, tmp_path / "work")


def test_a_published_checkpoint_is_found_and_runs_with_its_recipe(tmp_path, nvarc_model_dir, architects_model_dir):
    """No arcttt.json (Kaggle inputs are read-only, nothing is written there): NVARC's checkpoint is
    recognised by its tokenizer and gets its own preset on 4 x L4; another needs ARCTTT_FORMAT."""
    import shutil

    root = tmp_path / "input"
    competition_files(root / "competitions" / "arc-prize-2026-arc-agi-2")
    nvarc = root / "models" / "nvarc" / "qwen3_4b_grids15_sft139" / "transformers" / "default" / "1"
    shutil.copytree(nvarc_model_dir, nvarc)
    assert find_inputs(root).model_dir == nvarc
    assert kaggle.checkpoint_format(nvarc) == "nvarc"
    assert kaggle.preset_for_format(choose_preset([Gpu(i, "NVIDIA L4", (8, 9), 22.5) for i in range(4)]), "nvarc") == "nvarc-l4x4"
    assert kaggle.preset_for_format("kaggle-t4x2", "nvarc") == "kaggle-t4x2"  # NVARC's recipe is bf16, L4s only

    other = tmp_path / "input2"
    competition_files(other / "competitions" / "arc-prize-2026-arc-agi-2")
    shutil.copytree(architects_model_dir, other / "datasets" / "me" / "architects-8b")
    with pytest.raises(InputsError, match="ARCTTT_FORMAT"):
        find_inputs(other)
    settings = NotebookSettings.from_env({"ARCTTT_FORMAT": "architects"})
    picked = find_inputs(other, format=settings.format).model_dir
    assert picked == other / "datasets" / "me" / "architects-8b"
    assert kaggle.checkpoint_format(picked, settings.format) == "architects"
    assert kaggle.format_overrides(settings) == ["model.format=architects"]
    assert kaggle.preset_for_format("kaggle-t4x2", "architects") == "architects-t4x2"
    # Omni-ARC: its recipe on L4s (bf16), and the published adapter passed through to model.adapter
    omni = NotebookSettings.from_env({"ARCTTT_FORMAT": "omni-arc", "ARCTTT_ADAPTER": "/kaggle/input/arc24/lora"})
    assert kaggle.format_overrides(omni) == ["model.format=omni-arc", "model.adapter=/kaggle/input/arc24/lora"]
    assert kaggle.preset_for_format("kaggle-l4x4", "omni-arc") == "omni-arc"
    assert kaggle.preset_for_format("kaggle-t4x2", "omni-arc") == "kaggle-t4x2"
    assert kaggle.preset_for_format("kaggle-l4x4", "mit") == "kaggle-l4x4"  # 8B in bf16 does not fit an L4
