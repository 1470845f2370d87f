"""What bench/gpu_check.sh runs, checked on CPU where a GPU run found it broken (issue 21):

- ``bench/ttt_speed.py`` on a model in the ``nvarc`` format, whose token map has no BOS;
- unsloth imported before transformers whenever the backend is unsloth: in ``ttt_speed.py`` and in
  the pipeline's worker process (``worker.worker_main``), else unsloth patches too late;
- the GPU tests' figures judged by the same function on CPU (``test_gpu.check_figures``).

The whole rehearsal of every step is tests/test_gpu_rehearsal.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
needs_unsloth = pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is not installed")

# a sitecustomize that writes down, in order, the first import of each library unsloth patches
RECORDER = '''
import os, sys

class _FirstImports:
    def find_spec(self, name, path=None, target=None):
        if name in ("transformers", "peft", "trl", "unsloth"):
            with open(os.environ["ARCTTT_IMPORT_ORDER"], "a") as f:
                f.write(name + "\\n")
        return None

sys.meta_path.insert(0, _FirstImports())
'''


def ttt_speed():
    spec = importlib.util.spec_from_file_location("ttt_speed", REPO / "bench" / "ttt_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ttt_speed_trains_a_model_in_the_nvarc_format(tmp_path):
    """The format gpu_check.sh builds: no BOS in its token map (the old code indexed tm.bos[0])."""
    from arcttt import modeldir

    assert modeldir.token_map_from_tokenizer("nvarc", modeldir.build_tokenizer("nvarc")).bos == ()
    out = ttt_speed().main(["--shape", "qwen3-mini", "--format", "nvarc", "--keep-model", str(tmp_path / "m"),
                            "--backend", "hf", "--dtype", "fp32", "--seq-len", "48", "--steps", "2", "--warmup", "0",
                            "--rank", "8", "--train-embeddings", "--peak-tflops", "1", "--measured-tflops", "0.5",
                            "--out", str(tmp_path / "ttt.json")])
    assert json.loads((tmp_path / "m" / "arcttt.json").read_text())["format"] == "nvarc"
    assert out["steps"] == 2 and out["stopped"] == "done" and out["tokens_per_s"] > 0, out
    assert out["n_layers"] == 2 and out["hidden"] == 64, out
    # MFU against the datasheet peak and against the measured one: twice as large on half the peak
    assert out["mfu_measured_peak"] == pytest.approx(2 * out["mfu"], rel=0.02, abs=2e-4), out
    assert json.loads((tmp_path / "ttt.json").read_text()) == out


def test_synthetic_sequences_keep_a_bos_where_the_format_has_one():
    from arcttt import modeldir

    bench = ttt_speed()
    for name in ("compact", "nvarc"):
        tm = modeldir.token_map_from_tokenizer(name, modeldir.build_tokenizer(name))
        for seq in bench.synthetic_sequences(2, 16, tm):
            assert tuple(seq.ids[:len(tm.bos)]) == tuple(tm.bos)
            assert set(seq.ids[len(tm.bos):]) <= {*tm.digits, tm.newline}


def first_imports(tmp_path: Path, code: str) -> list[str]:
    """The libraries unsloth patches, in the order a fresh interpreter running ``code`` first imported them."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(RECORDER)
    order = tmp_path / "order.txt"
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(REPO)]),
                        "ARCTTT_IMPORT_ORDER": str(order), "UNSLOTH_DISABLE_STATISTICS": "1",
                        "UNSLOTH_COMPILE_LOCATION": str(tmp_path / "unsloth_compiled_cache"), "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return order.read_text().split() if order.exists() else []


@needs_unsloth
def test_ttt_speed_imports_unsloth_first(tmp_path):
    code = (f"import sys; sys.argv = ['ttt_speed.py', '--backend', 'unsloth', '--steps', '0']; "
            f"import runpy; runpy.run_path({str(REPO / 'bench' / 'ttt_speed.py')!r}, run_name='__main__')")
    order = first_imports(tmp_path, code)
    assert order and order[0] == "unsloth", order


@needs_unsloth
def test_the_pipeline_worker_imports_unsloth_first(tmp_path):
    """``worker.worker_main`` in a fresh interpreter, as a spawned worker runs it, on the tiny model: it
    loads with unsloth (on CPU, its fallback), says ready, and stops when told to."""
    from arcttt.config import load_config
    from arcttt.model import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    (tmp_path / "cfg.json").write_text(json.dumps(load_config("cpu-smoke", ["model.backend=unsloth"]).to_json()))
    (tmp_path / "run").mkdir()
    code = f"""
import json, multiprocessing as mp
from pathlib import Path
from arcttt.worker import worker_main

here, theirs = mp.Pipe()
here.send(None)  # stop as soon as the model is loaded
cfg = json.loads(Path({str(tmp_path / 'cfg.json')!r}).read_text())
worker_main(0, None, {str(model)!r}, cfg, {str(tmp_path / 'run')!r}, theirs, {{"config": "c", "model": "m"}})
msg = here.recv()
assert msg[0] == "ready", msg
"""
    order = first_imports(tmp_path, code)
    assert order and order[0] == "unsloth", order


def test_the_gpu_tests_read_solve_task_as_a_task_result():
    """test_gpu's whole-task check reads the record ``solve_task`` returns (it indexed it like a dict)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_gpu import solve_task_figures

    from arcttt.records import TaskResult, TestResult, TTTResult

    record = TaskResult("t", ttt=TTTResult(steps=3), tests=[TestResult(attempts=[[[1]], [[2]]]), TestResult(error="x")])
    assert solve_task_figures(record) == {"status": "ok", "error": None, "ttt_steps": 3, "attempts": [2, 0],
                                          "test_errors": [None, "x"]}


def test_gpu_wheels_builds_arcttt_offline_and_checks_what_it_leaves(tmp_path):
    """``gpu_wheels.sh --own`` builds arcttt's wheel with this interpreter (no PyPI), and its checks
    pass, a trial install as for CPython 3.12 too; ``--check`` then fails on a wheel for another
    Python or platform, an empty one, and a second version of one project, and so does the trial."""
    env = os.environ | {"PYTHON": sys.executable}
    script = str(REPO / "bench" / "gpu_wheels.sh")
    built = subprocess.run(["bash", script, "--own", str(tmp_path / "whl")], env=env, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "checked 1 wheels: 0 faults" in built.stdout, built.stdout
    assert "trial install of every wheel as for CPython 3.12 on manylinux x86_64: ok" in built.stdout, built.stdout
    (own,) = (tmp_path / "whl" / "hf").glob("arcttt-*.whl")
    hf = own.parent
    (hf / "other-1.0-cp311-cp311-linux_x86_64.whl").write_bytes(own.read_bytes())
    (hf / "empty-1.0-py3-none-any.whl").write_bytes(b"")
    (hf / "arcttt-9.9-py3-none-any.whl").write_bytes(own.read_bytes())
    checked = subprocess.run(["bash", script, "--check", str(tmp_path / "whl")], env=env, capture_output=True,
                             text=True, timeout=600)
    assert checked.returncode == 1, checked.stdout[-3000:] + checked.stderr[-3000:]
    bad = [line for line in checked.stdout.splitlines() if line.startswith("BAD WHEEL")]
    assert any("other-1.0" in line and "CPython 3.12" in line for line in bad), bad
    assert any("other-1.0" in line and "manylinux" in line for line in bad), bad
    assert any("empty-1.0" in line and "empty" in line for line in bad), bad
    assert any("arcttt in 2 versions" in line for line in bad), bad
    assert len(bad) == 4, bad
    assert "TRIAL INSTALL FAILED" in checked.stdout, checked.stdout


def gpu_check(tmp_path, *args, **env_vars) -> subprocess.CompletedProcess:
    (tmp_path / "whl" / "hf").mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out"),
                        "WHL": str(tmp_path / "whl"), "SITE": str(tmp_path / "site"), "MODEL": str(tmp_path / "m")}
    env.pop("STEPS", None)
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), *args], cwd=REPO, env=env | env_vars,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("call,limit", [("1", 400), ("2", 200)])
def test_each_calls_expected_time_fits_its_limit(tmp_path, call, limit):
    proc = gpu_check(tmp_path, "--dry", CALL=call)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (total,) = [line for line in proc.stdout.splitlines() if line.startswith("expected ")]
    expected = int(total.split()[1])
    assert f"of the {limit} s limit" in total and 0 < expected <= limit, proc.stdout
    listed = {line.split()[0] for line in proc.stdout.splitlines()[1:] if " <= " in line}
    calls = {"1": {"install", "env", "model", "gpu-tests", "ttt-hf-bf16-r256", "ttt-hf-4bit-r64"},
             "2": {"install", "model", "search", "kvcache", "plan", "run-hf", "score-hf", "profile-hf"}}
    assert calls[call] <= listed, listed
    assert not calls[{"1": "2", "2": "1"}[call]] - {"install", "model"} & listed, listed


def test_steps_that_do_not_fit_are_skipped_with_a_line(tmp_path):
    """Out of time from the start: every step of call 2 says it is skipped, and the files still come back."""
    proc = gpu_check(tmp_path, CALL="2", CHECK_LIMIT_S="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for name in ("install", "model", "search", "kvcache", "challenges", "plan", "run-hf"):
        assert f"{name} skipped: " in summary, summary
    assert " rc=" not in summary, summary
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"summary.txt", "figures.json", "logs.tar.gz"}
