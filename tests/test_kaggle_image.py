"""Kaggle's 2026 image, replicated where we can: a fresh virtual environment holding what that image
has that conflicts with arcttt's stack (transformers 5.0.0 and torchao 0.10, whose presence makes
current peft raise "incompatible version of torchao"), beside our CPU torch; then the notebook's own
install cell, run against the wheelhouse and code datasets that ``kaggle/build.py`` builds; then
peft, transformers and arcttt import, and ``arcttt run`` answers one task with the tiny model.
Whatever the image has that breaks us must be replaced or removed by the install cell, not found on
the competition's rerun.

Differences from the real image, which this test cannot replicate: Python 3.11 (the CPU torch on
this machine's disk is for 3.11; the wheelhouse is built for it too) where Kaggle has 3.12, torch
2.13 CPU where Kaggle has 2.10+cu128, and only the image's conflicting packages, not its hundreds
of others. Slow (a few minutes: it downloads the wheelhouse from PyPI and installs torch into the
venv); skipped when PyPI cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arcttt.data import bundled_split
from arcttt.submission import load_submission, validate_submission

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "arcttt-submit.ipynb"
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk (pip finds it there)
IMAGE = ["transformers==5.0.0", "torchao==0.10.0",  # as in Kaggle's 2026 image
         "matplotlib", "pyyaml", "psutil", "rich", "tqdm"]  # everyday packages the image has (build.FROM_IMAGE)


def sh(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would let the venv import arcttt from the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return env | {"OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"} | extra


def install_cells() -> str:
    """The notebook's code cells before the one that calls ``notebook_main``: its set-up and install."""
    nb = json.loads(NOTEBOOK.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    upto = next(i for i, c in enumerate(cells) if "notebook_main" in c)
    return "\n\n".join(cells[:upto])


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The code and wheelhouse datasets, built for this machine's Python (the input root holds both)."""
    root = tmp_path_factory.mktemp("kaggle-input")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = sh([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", root / "probe",
                "torchao==0.10.0"], timeout=180)
    if probe.returncode != 0:
        pytest.skip(f"PyPI cannot be reached: {probe.stderr.strip().splitlines()[-1:]}")
    built = sh([sys.executable, REPO / "kaggle" / "build.py", "--owner", "tester", "--out", root / "datasets",
                "--python", python], timeout=900, cwd=REPO)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return root / "datasets"


def test_2026_image_install_cell_then_one_task(datasets, tmp_path, tiny_model_dir):
    venv = tmp_path / "image"
    py = venv / "bin" / "python"
    assert sh([sys.executable, "-m", "venv", venv], timeout=300).returncode == 0
    for reqs in ([TORCH], IMAGE):
        got = sh([py, "-m", "pip", "install", "-q", *reqs], timeout=900, env=clean_env())
        assert got.returncode == 0, got.stderr[-3000:]
    before = sh([py, "-c", "import transformers, torchao; print(transformers.__version__, torchao.__version__)"],
                timeout=300, env=clean_env(), cwd=tmp_path)
    assert before.stdout.split()[:2] == ["5.0.0", "0.10.0"], before.stdout + before.stderr[-2000:]

    # the notebook's install cell, on the built datasets
    cell = sh([py, "-c", install_cells()], timeout=900, cwd=tmp_path,
              env=clean_env(ARCTTT_KAGGLE_INPUT=str(datasets), ARCTTT_KAGGLE_WORKING=str(tmp_path / "working")))
    assert cell.returncode == 0, cell.stdout[-3000:] + cell.stderr[-3000:]
    assert "no install" not in cell.stdout, cell.stdout  # it did install (arcttt was not importable)

    after = sh([py, "-c", "import json, importlib.metadata as m, peft, transformers, arcttt; "
                "print(json.dumps({n: m.version(n) for n in ('transformers', 'peft', 'arcttt', 'torch', 'torchao')}))"],
               timeout=300, env=clean_env(), cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    versions = json.loads(after.stdout.strip().splitlines()[-1])
    assert versions["transformers"] == "5.17.0" and versions["peft"] == "0.21.2", versions
    assert versions["torch"].startswith("2.13.0"), versions  # the image's torch is never replaced

    # one task, end to end, with the installed arcttt and the tiny model
    challenges, _ = bundled_split("arc-agi-1-train")
    task_id = sorted(challenges)[0]
    (tmp_path / "one.json").write_text(json.dumps({task_id: challenges[task_id]}))
    out = tmp_path / "working" / "submission.json"
    run = sh([py, "-m", "arcttt", "run", "--challenges", tmp_path / "one.json", "--model", tiny_model_dir, "--out", out,
              "--config", "cpu-smoke", "--time-budget", "150", "--workers", "1", "--quiet"],
             timeout=400, env=clean_env(), cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 answered" in run.stdout, run.stdout
    submission = load_submission(out)
    assert validate_submission(submission, {task_id: len(challenges[task_id]["test"])}) == []
