"""The Kaggle notebook, executed headless on CPU (nbclient, python3 kernel) against a fake
``/kaggle/input`` built from bundled tasks and the tiny model: once in the flat 2024-2025 layout as
an interactive run (self-check + submission), once in the nested 2026 layout as the competition's
rerun (submission only). Each leaves a valid submission.json for the test challenges.

The placeholder test file holds training tasks (as on Kaggle); the evaluation files come from the
bundled ARC-AGI-2 evaluation split.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from arcttt.data import bundled_split, export_split, load_challenges
from arcttt.submission import load_submission, validate_submission

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "arcttt-submit.ipynb"
TEST_TASKS = 2


def fake_input_tree(root: Path, layout: str, model_src: Path) -> dict[str, Path]:
    if layout == "flat":
        comp, model = root / "arc-prize-2025", root / "arcttt-tiny"
    else:
        comp = root / "competitions" / "arc-prize-2025"
        model = root / "models" / "someone" / "arcttt-tiny" / "transformers" / "compact" / "1"
    comp.mkdir(parents=True)
    challenges, _ = bundled_split("arc-agi-1-train")
    keep = sorted(challenges)[:TEST_TASKS]
    (comp / "arc-agi_test_challenges.json").write_text(json.dumps({t: challenges[t] for t in keep}))
    export_split("arc-agi-2-eval", comp, limit=3)
    shutil.copytree(model_src, model)
    return {"challenges": comp / "arc-agi_test_challenges.json", "model": model}


def kernelspec(monkeypatch, tmp_path: Path) -> None:
    """A python3 kernelspec for this very interpreter, first on the Jupyter path: the notebook must
    run where arcttt is importable, whatever kernelspecs the machine has installed."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (arcttt tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


def execute(monkeypatch, tmp_path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    kernelspec(monkeypatch, tmp_path)
    for key in ("KAGGLE_IS_COMPETITION_RERUN", "ARCTTT_MODEL", "ARCTTT_TIME_BUDGET"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"OMP_NUM_THREADS": "1", "ARCTTT_PRESET": "cpu-smoke", **env}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> str:
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") or json.dumps(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def assert_valid_submission(working: Path, challenges: Path) -> dict:
    submission = load_submission(working / "submission.json")
    assert validate_submission(submission, load_challenges(challenges).test_counts()) == []
    assert len(submission) == TEST_TASKS
    return submission


def test_notebook_interactive_run_flat_layout(tmp_path, monkeypatch, tiny_model_dir):
    where = fake_input_tree(tmp_path / "input", "flat", tiny_model_dir)
    working = tmp_path / "working"
    nb = execute(monkeypatch, tmp_path, {
        "ARCTTT_KAGGLE_INPUT": str(tmp_path / "input"), "ARCTTT_KAGGLE_WORKING": str(working),
        "ARCTTT_TIME_BUDGET": "90", "ARCTTT_SELFCHECK_TASKS": "1", "ARCTTT_SELFCHECK_BUDGET": "60"})
    text = outputs(nb)
    assert "arcttt is already importable: no install" in text
    assert f"({sys.executable})" in text  # the kernel ran this interpreter
    assert "preset: cpu-smoke" in text and "interactive / placeholder run" in text
    assert "self-check score:" in text and "SELF-CHECK FAILED" not in text
    assert f"model: {where['model']}" in text
    assert_valid_submission(working, where["challenges"])
    score = json.loads((working / "selfcheck" / "score.json").read_text())
    assert score["tasks"] == 1
    assert (working / "selfcheck" / "report.html").is_file()
    results = sorted((working / "arcttt-run" / "tasks").glob("*.json"))
    assert len(results) == TEST_TASKS


def test_notebook_rerun_nested_layout(tmp_path, monkeypatch, tiny_model_dir):
    where = fake_input_tree(tmp_path / "input", "nested", tiny_model_dir)
    working = tmp_path / "working"
    nb = execute(monkeypatch, tmp_path, {
        "ARCTTT_KAGGLE_INPUT": str(tmp_path / "input"), "ARCTTT_KAGGLE_WORKING": str(working),
        "ARCTTT_TIME_BUDGET": "90", "KAGGLE_IS_COMPETITION_RERUN": "True"})
    text = outputs(nb)
    assert "competition rerun (hidden test set)" in text
    assert "self-check" not in text and not (working / "selfcheck").exists()
    assert f"model: {where['model']}" in text
    assert "with a budget of 90 s" in text
    assert_valid_submission(working, where["challenges"])
    run = json.loads((working / "arcttt-run" / "run.json").read_text())
    assert run["challenges"] == str(where["challenges"])
