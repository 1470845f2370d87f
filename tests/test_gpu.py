"""The CUDA paths, on a small random Qwen3 (the production model's family): for each backend and
precision (hf bf16, hf bnb 4-bit, unsloth 16-bit, unsloth 4-bit):

- load: on the GPU, at the asked dtype, the base layers 4-bit where asked;
- TTT: a few steps with 8-bit AdamW (bitsandbytes) under bf16 autocast, the loss going down;
- reset: the adapter bit for bit at its snapshot, the logits back to what they were before TTT
  (no stale copy of the trained adapter anywhere, e.g. unsloth's cast LoRA weights);
- search: greedy (one-token decode on a cache) and a depth-first search with backtracking (cache
  crops), views one by one and, on hf, in lock-step: each completion's log-probability equal to
  that of one full forward pass over prompt + completion, without a cache;
- scoring: ``answer_logprobs`` (a prompt's cache expanded across candidates) equal to full passes;
- ``solve.solve_task`` end to end, with attempts and TTT steps.

Skipped without CUDA (``pytest -m gpu``; ``bench/gpu_check.sh`` runs them on a GPU machine). Each
backend runs in a child interpreter, as in test_unsloth.py (unsloth patches transformers
process-wide); the four children run at once, each with its own unsloth compile folder.
``ARCTTT_GPU_TEST_MODEL=DIR`` runs them on a prepared model instead of the random
one; ``ARCTTT_GPU_OUT=DIR`` also writes each child's figures there as JSON, and keeps each child's
folder (its stdout, stderr and unsloth cache) there rather than in pytest's temporary folder.
``ARCTTT_GPU_REHEARSE=1`` runs them without CUDA too (``bench/gpu_check.sh --rehearse``): every
check but the CUDA-only ones (weights on the GPU, 8-bit AdamW, autocast), on the backends and
precisions ``ARCTTT_GPU_BACKENDS`` names (e.g. ``"hf-16 unsloth-16"``; default all).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

CUDA = torch.cuda.is_available()
REHEARSE = os.environ.get("ARCTTT_GPU_REHEARSE") == "1"
BACKENDS = [("hf", 16), ("hf", 4), ("unsloth", 16), ("unsloth", 4)]
if os.environ.get("ARCTTT_GPU_BACKENDS"):
    BACKENDS = [b for b in BACKENDS if f"{b[0]}-{b[1]}" in os.environ["ARCTTT_GPU_BACKENDS"].split()]
TASK = "0d3d703e"  # arc-agi-1-train: 4 small pairs, one test input
# a cached pass and a full one differ in bf16 rounding: allow that much on a sum of log-probs
REL_TOL, ABS_TOL = 5e-3, 0.05


def small_qwen3(out: Path) -> Path:
    """``make_tiny_model``'s tokenizer and ``arcttt.json``, with a random Qwen3 (hidden 128, 2 layers,
    4 heads of 32, 2 key/value heads, q/k norms) in place of its Llama."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from arcttt.model import make_tiny_model

    make_tiny_model(out)
    llama = json.loads((out / "config.json").read_text())
    config = Qwen3Config(vocab_size=llama["vocab_size"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, intermediate_size=256, max_position_embeddings=16384,
                         tie_word_embeddings=False, bos_token_id=llama["bos_token_id"],
                         eos_token_id=llama["eos_token_id"], pad_token_id=llama["pad_token_id"])
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(out)
    return out


def solve_task_figures(record) -> dict:
    """What the parent checks of ``solve.solve_task``'s ``TaskResult``."""
    return {"status": record.status, "error": record.error, "ttt_steps": record.ttt.steps if record.ttt else 0,
            "attempts": [len(t.attempts) for t in record.tests], "test_errors": [t.error for t in record.tests]}


def child(model_dir: str, backend: str, bits: int) -> dict:
    """Runs in the child interpreter: every check of one backend and precision; returns the figures."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first, as unsloth asks)
    import time
    import traceback

    import numpy as np
    import torch

    import arcttt.ttt as ttt
    from arcttt.budget import TaskDeadlines
    from arcttt.config import load_config
    from arcttt.data import load_split
    from arcttt.formats import answer_ids
    from arcttt.model import LoraConfig, ModelConfig, load_model
    from arcttt.solve import solve_task
    from arcttt.backends import backend_of
    from arcttt.augment import view_augmentations
    from arcttt.forward import inference
    from arcttt.search import search_prompts
    from arcttt.select import answer_logprobs
    from arcttt.ttt_data import DataConfig, test_prompts, training_sequences

    out: dict = {"backend": backend, "bits": bits}
    s = load_model(model_dir, ModelConfig(backend=backend, load_in_4bit=bits == 4, dtype="bf16", max_seq_len=4096,
                                          lora=LoraConfig(rank=64, alpha=16)))  # 8-bit states need >= 4096 values
    base = s.model.get_base_model()
    out |= {"loaded_backend": s.backend, "device": str(s.device), "dtype": str(s.dtype),
            "base_layer": type(base.model.layers[0].self_attn.q_proj.base_layer).__name__,
            "weights_on_cuda": all(p.device.type == "cuda" for p in s.model.parameters())}
    task = next(t for t in load_split("arc-agi-1-train") if t.id == TASK)
    tm = s.token_map
    augs = view_augmentations(task, 0, 4, keep_background=True, seed=0)
    prompts = [v.prompt for v in test_prompts(task, 0, tm, augs, 4096)]
    probe = torch.as_tensor(prompts[0], device=s.device)[None]

    def logits():
        s.eval_mode()
        with inference(s.model):
            return s.model(input_ids=probe).logits.float().clone()

    def full_logprob(prompt, ids) -> float:
        with inference(s.model):
            seq = torch.as_tensor(np.concatenate([prompt, ids]), device=s.device)[None]
            lg = s.model(input_ids=seq).logits[0, len(prompt) - 1:-1].float()
            return float(torch.log_softmax(lg, -1).gather(-1, seq[0, len(prompt):, None]).sum())

    def worst(pairs) -> float:  # the largest |got - full| beyond the tolerance (<= 0 when all agree)
        return max((abs(a - b) - (REL_TOL * abs(b) + ABS_TOL) for a, b in pairs), default=-1.0)

    def section(name: str, check) -> None:  # one failing check must not hide the others' figures
        try:
            check()
        except Exception as e:  # noqa: BLE001  (reported to the parent, which fails the test)
            out["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"

    out["errors"] = {}

    # --- TTT with 8-bit AdamW under autocast, then reset --------------------------------------------
    def ttt_and_reset():
        seqs = training_sequences(task, tm, DataConfig(n_sequences=8, colours=False)).sequences
        before, loss0 = logits(), ttt.mean_loss(s, seqs)
        seen: dict = {"optimizers": [], "autocast": []}
        make = ttt.make_optimizer

        def recording_optimizer(*a, **k):
            opt = make(*a, **k)
            seen["optimizers"].append(opt)
            return opt

        hook = base.model.layers[0].register_forward_hook(
            lambda m, i, o: seen["autocast"].append(torch.is_autocast_enabled("cuda")) if s.model.training else None)
        ttt.make_optimizer = recording_optimizer
        try:
            result = ttt.train_task(s, seqs, ttt.TTTConfig(steps=6, lr=1e-3, batch_tokens=2048, optimizer="auto"))
        finally:
            ttt.make_optimizer = make
            hook.remove()
        opt = seen["optimizers"][0]
        trained, loss1 = logits(), ttt.mean_loss(s, seqs)
        s.reset()
        after_reset = logits()
        out.update({
            "ttt_steps": result.steps, "ttt_stopped": result.stopped, "loss0": loss0, "loss1": loss1,
            "optimizer": type(opt).__module__ + "." + type(opt).__name__,
            "optimizer_state_dtypes": sorted({str(v.dtype) for st in opt.state.values() for v in st.values()
                                              if torch.is_tensor(v)}),
            "autocast_in_training": sorted(set(seen["autocast"])),
            "trained_logit_change": float((trained - before).abs().max()),
            "reset_params_exact": all(torch.equal(p, s.snapshot[n]) for n, p in s.trainable_parameters().items()),
            "reset_logit_diff": float((after_reset - before).abs().max()),
            "training_after_reset": s.model.training})

    section("ttt_and_reset", ttt_and_reset)

    # --- search and scoring against full forward passes ---------------------------------------------
    s.reset()
    checks = out["search_vs_full"] = {}

    def search_check(name: str, **kw):
        def check():
            # the cache the pipeline uses on this library (backends.py): ours on hf, unsloth's own
            got = search_prompts(s.model, prompts, tm, preallocate=backend_of(s).preallocate, **kw)
            pairs = [(c.logprob, full_logprob(p, c.ids)) for p, cs in zip(prompts, got) for c in cs]
            checks[name] = {"completions": len(pairs), "worst": worst(pairs)}
        section(name, check)

    for batch in ([False, True] if backend == "hf" else [False]):
        kind = "batch" if batch else "seq"
        search_check(f"greedy_{kind}", threshold=1.0, greedy=True, batch=batch)
        # no grammar: the end may come at any step, so a low threshold gives many short completions
        # and the search backtracks (crops the cache) between them
        search_check(f"dfs_{kind}", threshold=2e-3, grammar=False, batch=batch)

    def score():
        truth = task.test_outputs[0]
        grids = [truth] + [(truth + k) % 10 for k in (1, 2, 3, 4)]
        pairs = []
        for aug, prompt in zip(augs, prompts):
            answers = [answer_ids(aug.grid(g), tm) for g in grids]
            scored = answer_logprobs(s.model, prompt, answers, batch_size=3, device=s.device,
                                     preallocate=backend_of(s).preallocate)
            pairs += [(float(a), full_logprob(prompt, ids)) for a, ids in zip(scored, answers)]
        checks["score"] = {"completions": len(pairs), "worst": worst(pairs)}

    section("score", score)

    # --- one whole task -----------------------------------------------------------------------------
    def whole_task():
        cfg = load_config("cpu-smoke", [f"model.backend={backend}", "ttt.steps=4", "search.n_augmentations=4",
                                        "select.n_views=4"])
        now = time.time()
        record = solve_task(s, task, cfg, TaskDeadlines(start=now, ttt=now + 60, search=now + 120, end=now + 180))
        out["solve_task"] = solve_task_figures(record)

    section("solve_task", whole_task)
    out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    return out


@pytest.fixture(scope="module")
def gpu_model_dir(tmp_path_factory):
    given = os.environ.get("ARCTTT_GPU_TEST_MODEL")
    return Path(given) if given else small_qwen3(tmp_path_factory.mktemp("qwen3-small") / "model")


@pytest.fixture(scope="module")
def children(gpu_model_dir, tmp_path_factory):
    """One child interpreter per backend and precision, all started at once: (process, its folder)."""
    procs = {}
    for backend, bits in BACKENDS:
        if backend == "unsloth" and importlib.util.find_spec("unsloth") is None:
            continue
        if os.environ.get("ARCTTT_GPU_OUT"):  # kept with the check's other logs
            cwd = Path(os.environ["ARCTTT_GPU_OUT"], f"test_gpu-{backend}-{bits}bit")
            cwd.mkdir(parents=True, exist_ok=True)
        else:
            cwd = tmp_path_factory.mktemp(f"{backend}-{bits}bit")
        env = os.environ | {"PYTHONUNBUFFERED": "1", "UNSLOTH_COMPILE_LOCATION": str(cwd / "unsloth_compiled_cache")}
        code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); from test_gpu import child; "
                f"print('RESULT', json.dumps(child({str(gpu_model_dir)!r}, {backend!r}, {bits})))")
        with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:  # files: no pipe fills up
            procs[backend, bits] = (subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, env=env,
                                                     cwd=cwd), cwd)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()


@pytest.mark.skipif(not CUDA and not REHEARSE, reason="needs a CUDA GPU (ARCTTT_GPU_REHEARSE=1: on CPU)")
@pytest.mark.parametrize("backend,bits", BACKENDS, ids=[f"{b}-{n}bit" for b, n in BACKENDS])
def test_gpu_backend(children, backend, bits):
    if (backend, bits) not in children:
        pytest.skip("unsloth is not installed")
    proc, cwd = children[backend, bits]
    proc.wait(timeout=900)
    stdout, stderr = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, stdout[-4000:] + stderr[-4000:]
    r = json.loads(lines[0].removeprefix("RESULT "))
    if os.environ.get("ARCTTT_GPU_OUT"):
        Path(os.environ["ARCTTT_GPU_OUT"], f"test_gpu-{backend}-{bits}bit.json").write_text(json.dumps(r, indent=1))
    check_figures(r, backend, bits, cuda=CUDA)


def check_figures(r: dict, backend: str, bits: int, cuda: bool = True) -> None:
    """The child's figures against what each check expects; ``cuda=False`` (a rehearsal on CPU)
    leaves out what only CUDA gives: weights on the GPU, 8-bit AdamW, bf16 autocast."""
    assert r["errors"] == {}, "\n\n".join(f"{k}: {v}" for k, v in r["errors"].items())
    # load
    assert r["loaded_backend"] == backend, r
    assert (r["device"].startswith("cuda") and r["weights_on_cuda"]) if cuda else r["device"] == "cpu", r
    assert r["dtype"] == "torch.bfloat16", r
    assert r["base_layer"] == ("Linear4bit" if bits == 4 else "Linear"), r
    # TTT: 8-bit AdamW (its moments stored as uint8), bf16 autocast in every training forward
    assert r["ttt_steps"] == 6 and r["ttt_stopped"] == "done" and r["loss1"] < r["loss0"], r
    if cuda:
        assert r["optimizer"].startswith("bitsandbytes.") and "AdamW8bit" in r["optimizer"], r
        assert "torch.uint8" in r["optimizer_state_dtypes"], r
        assert r["autocast_in_training"] == [True], r
    # reset: exact parameters, and the logits of before TTT again (nothing stale)
    assert r["trained_logit_change"] > 1e-2, r
    assert r["reset_params_exact"] and not r["training_after_reset"], r
    assert r["reset_logit_diff"] <= 1e-3 * max(1.0, r["trained_logit_change"]), r
    # search and scoring: what they report is what one full pass over the same tokens gives
    for name, c in r["search_vs_full"].items():
        assert c["completions"] > 0 and c["worst"] <= 0, (name, c, r)
    # a whole task
    t = r["solve_task"]
    assert t["status"] == "ok" and t["ttt_steps"] > 0 and t["attempts"] == [2] and t["test_errors"] == [None], r
