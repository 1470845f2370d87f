"""The GPU check's rehearsal on CPU (``bash bench/gpu_check.sh --rehearse``, issue 21): every step
of the check a lent GPU machine runs, on its real code path with shrunk shapes and budgets, so that
a crash shows here and not in the 15 minutes a GPU is lent for. The script fails when a step
fails or is skipped; this asserts that, and what each step left: the files the device tool
returns, every step's figures, the GPU tests' children's logs in the check's own folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# what call 1 and call 2 of the check run, here all in one
STEPS = ["wheels", "install", "env", "model", "gpu-tests", "ttt-hf-bf16-r256", "ttt-hf-4bit-r64", "search", "kvcache",
         "challenges", "plan", "run-hf", "score-hf", "profile-hf"]
UNSLOTH_STEPS = ["ttt-unsloth-bf16-r256", "ttt-unsloth-4bit-r64", "run-unsloth", "score-unsloth", "profile-unsloth"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    env = os.environ | {"PYTHON": sys.executable, "WORK": str(tmp / "work"), "OUT": str(tmp / "out"),
                        "OMP_NUM_THREADS": "1"}
    for key in ("CALL", "STEPS", "CHECK_LIMIT_S", "SITE", "MODEL", "WHL"):
        env.pop(key, None)
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--rehearse"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1500)
    return proc, tmp / "work", tmp / "out"


def test_every_step_runs_on_cpu(rehearsal):
    proc, work, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    unsloth = json.loads((work / "env.json").read_text())["unsloth"] is not None
    for name in STEPS + (UNSLOTH_STEPS if unsloth else []):
        assert f"\n{name} rc=0 " in summary, (name, summary)
    assert "skipped" not in summary and "FAILED" not in summary, summary
    assert sorted(p.name for p in out.iterdir()) == ["figures.json", "logs.tar.gz", "summary.txt"]


def test_the_rehearsal_leaves_every_steps_figures(rehearsal):
    proc, work, out = rehearsal
    assert proc.returncode == 0, proc.stdout[-6000:]
    figures = json.loads((out / "figures.json").read_text())
    assert figures["env"]["matmul_bf16_tflops"] > 0
    for name in [k for k in figures if k.startswith("ttt-")]:
        ttt = figures[name]
        assert ttt["steps"] == 1 and ttt["stopped"] == "done" and ttt["tokens_per_s"] > 0, (name, ttt)
        assert ttt["mfu"] is not None and ttt["mfu_measured_peak"] is not None, (name, ttt)
    assert {"ttt-hf-bf16-r256", "ttt-hf-4bit-r64"} <= set(figures)
    assert figures["search"] and figures["kvcache"], figures.keys()
    # the GPU tests' children, without CUDA: their figures and logs in the check's folder
    children = [k for k in figures if k.startswith("test_gpu-")]
    assert children and all(figures[k]["errors"] == {} for k in children), children
    for k in children:
        assert (work / "gpu-tests" / k / "stdout.txt").is_file(), k
    # a whole run answered its task and was scored
    assert figures["run-hf-summary"], figures.keys()
    assert "score-hf" in figures and isinstance(figures["score-hf"], dict), figures.get("score-hf")
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "./gpu-tests.log" in names and "./run-hf/arcttt-run/log.txt" in names, names[:50]
    assert not any(n.endswith(".safetensors") for n in names)
