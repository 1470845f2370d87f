"""A test-only stand-in model that knows the answers: it reads the query grid of a prompt (in any
format), finds which of its known test inputs that is and under which symmetry and colour
permutation (checked against the prompt's demonstrations), and puts nearly all probability on the
true answer under that same augmentation, token by token. With ``noise``, that fraction of views
(chosen by a hash of the prompt) prefer a plausible wrong answer (the truth with one cell
recoloured) and give the truth only ``truth_p_noisy``; ``wrong_p_clean`` gives the wrong answer
some probability in the other views too.

It speaks the Hugging Face causal-LM call (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values``, ``use_cache``, ``logits_to_keep`` -> ``.logits``, ``.past_key_values``) with a
legacy tuple cache that holds the ids seen so far, and has one trainable bias so that TTT really
steps an optimizer. Used by tests/test_oracle.py and bench/selection_noise.py.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from arcttt.augment import D8_NAMES, Augmentation
from arcttt.data import Task
from arcttt.formats import TokenMap, answer_ids, parse_answer
from arcttt.templates import TemplateMap

CONFIDENT = 25.0  # logit of the expected next token; every other token has 0


def _grid(ids: list[int], tm: TokenMap) -> np.ndarray | None:
    g = parse_answer([*ids, tm.end[0]], tm, require_end=True)
    return g if isinstance(g, np.ndarray) else None


def _colour_map(src: np.ndarray, dst: np.ndarray, mapping: dict[int, int]) -> dict[int, int] | None:
    """``mapping`` extended so that it takes ``src`` to ``dst`` cell by cell (one to one), or None."""
    if src.shape != dst.shape:
        return None
    m = dict(mapping)
    inv = {v: k for k, v in m.items()}
    for a, b in np.unique(np.stack([src.ravel(), dst.ravel()], 1), axis=0):
        a, b = int(a), int(b)
        if m.get(a, b) != b or inv.get(b, a) != a:
            return None
        m[a], inv[b] = b, a
    return m


def _apply(grid: np.ndarray, symmetry: str, mapping: dict[int, int]) -> np.ndarray:
    g = Augmentation(symmetry).grid(grid)
    free = iter(c for c in range(10) if c not in mapping.values())
    full = {**mapping, **{c: next(free) for c in range(10) if c not in mapping}}
    return np.vectorize(full.__getitem__, otypes=[np.uint8])(g) if g.size else g


@dataclass
class _Parsed:
    demos: list[tuple[np.ndarray, np.ndarray]]
    query: np.ndarray


def _starts(ids: list[int], at: int, marker: tuple[int, ...]) -> bool:
    return tuple(ids[at:at + len(marker)]) == marker


def parse_template_prompt(ids: list[int], tm: TemplateMap) -> _Parsed | None:
    """A template format's prompt read as text: every grid its writer wrote, in order (demonstration
    input, output, ..., query), each parsed strictly; None unless it ends with the cue."""
    text = tm.tokenizer.decode(ids)
    if not text.endswith(tm.spec.cue):
        return None
    grids = [tm.writer.parse(m.group()) for m in tm.writer.pattern.finditer(text)]
    if not grids or len(grids) % 2 == 0 or not all(isinstance(g, np.ndarray) for g in grids):
        return None
    return _Parsed(list(zip(grids[:-1:2], grids[1:-1:2])), grids[-1])


def parse_prompt(ids: list[int], tm: TokenMap | TemplateMap) -> _Parsed | None:
    """Demonstrations and query of a prompt (ending with the output marker), or None."""
    if isinstance(tm, TemplateMap):
        return parse_template_prompt(ids, tm)
    grid_tokens = {*tm.digits, tm.newline}

    def read_grid(at: int) -> tuple[np.ndarray | None, int]:
        stop = at
        while stop < len(ids) and ids[stop] in grid_tokens:
            stop += 1
        return _grid(ids[at:stop], tm), stop

    if not _starts(ids, 0, tm.bos):
        return None
    at, demos = len(tm.bos), []
    while True:
        if not _starts(ids, at, tm.input):
            return None
        grid_in, at = read_grid(at + len(tm.input))
        if grid_in is None or not _starts(ids, at, tm.output):
            return None
        at += len(tm.output)
        if at == len(ids):
            return _Parsed(demos, grid_in)
        grid_out, at = read_grid(at)
        if grid_out is None or not _starts(ids, at, tm.end):
            return None
        demos.append((grid_in, grid_out))
        at += len(tm.end)


class Oracle(torch.nn.Module):
    """See the module docstring. ``tasks`` must hold their test outputs."""

    def __init__(self, tasks: list[Task], tm: TokenMap, vocab_size: int, *, noise: float = 0.0,
                 truth_p_noisy: float = 0.3, wrong_p_clean: float = 0.0, seed: int = 0):
        super().__init__()
        self.tasks, self.tm, self.vocab_size = tasks, tm, vocab_size
        self.noise, self.truth_p_noisy, self.wrong_p_clean, self.seed = noise, truth_p_noisy, wrong_p_clean, seed
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size))
        self.config = SimpleNamespace(use_cache=True, vocab_size=vocab_size)
        self._answers: dict[bytes, list[tuple[np.ndarray, float]]] = {}

    # -- what the oracle believes -----------------------------------------------------------------
    def answers(self, prompt: list[int]) -> list[tuple[np.ndarray, float]]:
        """(answer ids, log-probability) of the answers it believes in for a prompt, best first."""
        key = np.asarray(prompt, np.int64).tobytes()
        if key not in self._answers:
            self._answers[key] = self._believe(prompt)
        return self._answers[key]

    def _believe(self, prompt: list[int]) -> list[tuple[np.ndarray, float]]:
        parsed = parse_prompt(prompt, self.tm)
        if parsed is None:
            return []
        for task in self.tasks:
            for k, (inp, out) in enumerate(zip(task.test_inputs, task.test_outputs)):
                for sym in D8_NAMES:
                    m = _colour_map(Augmentation(sym).grid(inp), parsed.query, {})
                    if m is None or not self._demos_agree(task, sym, m, parsed):
                        continue
                    truth = answer_ids(_apply(out, sym, m), self.tm)
                    wrong = np.array(out, copy=True)  # the same wrong grid (in the task's frame) in every view
                    wrong[0, 0] = (wrong[0, 0] + 1) % 10
                    wrong = answer_ids(_apply(wrong, sym, m), self.tm)
                    p_truth = self.truth_p_noisy if self._noisy(prompt) else 1.0 - self.wrong_p_clean
                    beliefs = [(truth, float(np.log(p_truth)))]
                    if p_truth < 1.0:
                        beliefs.append((wrong, float(np.log1p(-p_truth))))
                    return sorted(beliefs, key=lambda b: -b[1])
        return []

    def _demos_agree(self, task: Task, sym: str, m: dict[int, int], parsed: _Parsed) -> bool:
        for d_in, d_out in parsed.demos:
            for pair in task.train:
                m2 = _colour_map(Augmentation(sym).grid(pair.input), d_in, m)
                m2 = m2 and _colour_map(Augmentation(sym).grid(pair.output), d_out, m2)
                if m2:
                    m.update(m2)
                    break
            else:
                return False
        return True

    def _noisy(self, prompt: list[int]) -> bool:
        h = zlib.crc32(np.asarray(prompt, np.int64).tobytes() + bytes([self.seed]))
        return self.noise > 0 and (h % 10_000) / 10_000 < self.noise

    # -- the causal-LM call ----------------------------------------------------------------------
    def _next_logits(self, ids: list[int], t: int, answer_start: int, beliefs) -> torch.Tensor:
        out = torch.zeros(self.vocab_size)
        if t + 1 < answer_start or not beliefs:
            return out
        done = ids[answer_start:t + 1]
        alive = [(a, lp) for a, lp in beliefs if len(a) > len(done) and list(a[:len(done)]) == done]
        total = np.logaddexp.reduce([lp for _, lp in alive]) if alive else None
        for a, lp in alive:  # the conditional probability of each next token, given the answer so far
            out[int(a[len(done)])] = max(float(out[int(a[len(done)])]), CONFIDENT + (lp - total))
        return out

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, logits_to_keep=0, **_):
        past = None if past_key_values is None else past_key_values[0][0][:, 0, :, 0].long()
        full = input_ids if past is None else torch.cat([past, input_ids.to(past.device)], 1)
        n_new = input_ids.shape[1]
        keep = n_new if not logits_to_keep else min(int(logits_to_keep), n_new)
        rows = []
        k = len(self.tm.output)
        for row in full.tolist():
            # the end of the last output marker: scanning back from the end (the answer is short)
            last_out = next((i + k for i in range(len(row) - k, -1, -1) if tuple(row[i:i + k]) == self.tm.output),
                            None)
            beliefs = self.answers(row[:last_out]) if last_out is not None else []
            start = last_out if last_out is not None else len(row) + 1
            rows.append(torch.stack([self._next_logits(row, t, start, beliefs)
                                     for t in range(len(row) - keep, len(row))]))
        logits = torch.stack(rows) + self.bias
        cache = None
        if use_cache:
            stored = full.float()[:, None, :, None]
            cache = ((stored, stored),)
        return SimpleNamespace(logits=logits, past_key_values=cache)


def oracle_session(tasks: list[Task], tm: TokenMap, vocab_size: int, **kwargs):
    """A ``model.ModelSession`` around an :class:`Oracle` (CPU, fp32, hf backend)."""
    from arcttt.model import ModelConfig, ModelSession

    model = Oracle(tasks, tm, vocab_size, **kwargs)
    trainable = {n: p for n, p in model.named_parameters()}
    return ModelSession(model=model, token_map=tm, device=torch.device("cpu"), dtype=torch.float32, backend="hf",
                        cfg=ModelConfig(backend="hf", dtype="fp32"), path=Path("oracle"), n_params=vocab_size,
                        n_layers=1, hidden_size=1, attn_dim=1, n_trainable=vocab_size,
                        snapshot={n: p.detach().clone() for n, p in trainable.items()})
