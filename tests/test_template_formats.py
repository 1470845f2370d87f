"""The template formats, MIT's (``mit``) and Omni-ARC's (``omni-arc``), text for text. Every golden text
below is written by hand from the facts in the peers' own code (issue #12, shared/FIELD-NOTES.md):
MIT (ekinakyurek/marc arclib/messagers.py and representers.py, torchtune's Llama-3 tokenizer) and
Omni-ARC (ironbar/arc24 scripts/arc24/encoders.py and prompting.py, output-from-examples-v1), never
produced by arcttt. Then: the grid writers' parsers and automata agree (hypothesis), the search on a
stand-in model is exact against brute-force enumeration over the whole vocabulary, and the TTT loss
masks fall on the outputs."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arcttt.data import Pair, load_split
from arcttt.formats import encode, parse_answer
from arcttt.gridtext import WRITERS
from arcttt.modeldir import build_tokenizer, token_map_from_tokenizer
from arcttt.templates import TemplateMap
from arcttt.tokenizer import FormatError, as_text_tokenizer
from helpers import grids
from test_published_formats import _show  # show-prompt --json, its exit code checked

G = lambda rows: np.array(rows, dtype=np.uint8)  # noqa: E731
TASK_IDS = ("66e6c45b", "00576224", "be03b35f", "6ea4a07e", "e345f17b")  # the last two have 2 test inputs


@pytest.fixture(scope="module")
def tasks():
    by_id = {t.id: t for t in load_split("arc-agi-1-eval")}
    return {i: by_id[i] for i in TASK_IDS}


@pytest.fixture(scope="module", params=["mit", "omni-arc"])
def tm(request) -> TemplateMap:
    return token_map_from_tokenizer(request.param, build_tokenizer(request.param))


# --- the peers' texts, by hand --------------------------------------------------------------------

MIT_INSTRUCTION = ("Figure out the underlying transformation in the following examples and apply it to the test "
                   "case. Here are some examples from this transformation, your answer must follow the format.\n"
                   "The input-output grids are provided as python arrays:\n")

# task 66e6c45b, written out by hand
MIT_66E6C45B = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Figure out the underlying transformation in the following examples and apply it to the test case. Here are "
    "some examples from this transformation, your answer must follow the format.\n"
    "The input-output grids are provided as python arrays:\n"
    "[[0 0 0 0]\n [0 3 4 0]\n [0 7 6 0]\n [0 0 0 0]] -> [[3 0 0 4]\n [0 0 0 0]\n [0 0 0 0]\n [7 0 0 6]]#\n"
    "[[0 0 0 0]\n [0 5 6 0]\n [0 8 3 0]\n [0 0 0 0]] -> [[5 0 0 6]\n [0 0 0 0]\n [0 0 0 0]\n [8 0 0 3]]#"
    "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"
    "[[0 0 0 0]\n [0 2 3 0]\n [0 4 9 0]\n [0 0 0 0]] ->"
    "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
MIT_66E6C45B_ANSWER = "[[2 0 0 3]\n [0 0 0 0]\n [0 0 0 0]\n [4 0 0 9]]#<|eot_id|>"

OMNI_66E6C45B = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.\n"
    "Below there are some input-output grid examples that define the task.\n"
    "Your job is to understand the transformation between the input and the output and apply it to the test "
    "input grid.\n"
    "The transformations are always based on the following priors: objectness, goal-directed, numbers & counting, "
    "and basic geometry & topology.\n"
    "\n## Example 1\n\n### Input\n\n```grid shape: 4x4\n1 0000\n2 0340\n3 0760\n4 0000\n```\n\n"
    "### Output\n\n```grid shape: 4x4\n1 3004\n2 0000\n3 0000\n4 7006\n```\n"
    "\n## Example 2\n\n### Input\n\n```grid shape: 4x4\n1 0000\n2 0560\n3 0830\n4 0000\n```\n\n"
    "### Output\n\n```grid shape: 4x4\n1 5006\n2 0000\n3 0000\n4 8003\n```\n"
    "\n## Test case\n\n### Input\n\n```grid shape: 4x4\n1 0000\n2 0230\n3 0490\n4 0000\n```"
    "<|im_end|>\n<|im_start|>assistant\n### Output\n\n```grid")
OMNI_66E6C45B_ANSWER = " shape: 4x4\n1 2003\n2 0000\n3 0000\n4 4009\n```<|im_end|>"


def numpy_print(grid) -> str:
    """MIT's grid text: numpy's own print of the grid."""
    return str(np.array(np.asarray(grid).tolist()))


def mit_reference(task, k: int) -> tuple[list[str], str]:
    """MIT's prompt as torchtune encodes it (each message's content stripped and encoded on its own,
    between header texts), and the answer text."""
    system = (MIT_INSTRUCTION + "".join(f"{numpy_print(p.input)} -> {numpy_print(p.output)}#\n"
                                        for p in task.train)).strip()
    user = f"{numpy_print(task.test_inputs[k])} -> ".strip()
    return ["<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n", system,
            "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n", user,
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"], f"{numpy_print(task.test_outputs[k])}#"


def arc24_grid(grid) -> str:
    """GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder())).to_text, as arc24 writes it."""
    minimal = "\n".join("".join(str(x) for x in line) for line in np.asarray(grid).tolist())
    numbered = ""
    for idx, line in enumerate(minimal.split("\n")):
        numbered += f"{idx + 1} {line}\n"
    return f"```grid shape: {len(grid)}x{len(grid[0])}\n{numbered.strip()}\n```"


def omni_reference(task, k: int) -> tuple[list[str], str]:
    """Omni-ARC's inference prompt (the chat template applied, the last <|im_end|> and what follows cut
    off, tokenized whole) and the answer text that follows ```grid."""
    user = ("Let's see if you can solve this simple Abstraction and Reasoning Challenge (ARC) task.\n"
            "Below there are some input-output grid examples that define the task.\n"
            "Your job is to understand the transformation between the input and the output and apply it to the "
            "test input grid.\n"
            "The transformations are always based on the following priors: objectness, goal-directed, numbers & "
            "counting, and basic geometry & topology.\n")
    for n, p in enumerate(task.train, 1):
        user += f"\n## Example {n}\n\n### Input\n\n{arc24_grid(p.input)}\n\n### Output\n\n{arc24_grid(p.output)}\n"
    user += f"\n## Test case\n\n### Input\n\n{arc24_grid(task.test_inputs[k])}"
    text = (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n### Output\n\n```grid")
    return [text], arc24_grid(task.test_outputs[k])[len("```grid"):]


def test_reference_renderings_agree_with_the_hand_written_texts(tasks):
    chunks, answer = mit_reference(tasks["66e6c45b"], 0)
    assert ("".join(chunks), answer + "<|eot_id|>") == (MIT_66E6C45B, MIT_66E6C45B_ANSWER)
    chunks, answer = omni_reference(tasks["66e6c45b"], 0)
    assert ("".join(chunks), answer + "<|im_end|>") == (OMNI_66E6C45B, OMNI_66E6C45B_ANSWER)
    assert numpy_print(G([[8, 6], [6, 4]])) == "[[8 6]\n [6 4]]"
    assert arc24_grid(G([[8, 6], [6, 4]])) == "```grid shape: 2x2\n1 86\n2 64\n```"


@pytest.fixture(scope="module")
def eval_files(tmp_path_factory, tasks):
    from arcttt.data import bundled_split

    challenges, solutions = bundled_split("arc-agi-1-eval")
    root = tmp_path_factory.mktemp("data")
    (root / "c.json").write_text(json.dumps({i: challenges[i] for i in TASK_IDS}))
    (root / "s.json").write_text(json.dumps({i: solutions[i] for i in TASK_IDS}))
    return root / "c.json", root / "s.json"


@pytest.mark.parametrize("fmt, reference, end", [("mit", mit_reference, "<|eot_id|>"),
                                                 ("omni-arc", omni_reference, "<|im_end|>")])
def test_show_prompt_gives_the_peers_texts(fmt, reference, end, tasks, eval_files, mit_model_dir, omni_model_dir,
                                           capsys):
    """Five real tasks, two with two test inputs: show-prompt's text is the peers' text, its ids are
    the raw tokenizer's ids of the peers' chunks, and decoding the ids gives the text back."""
    from tokenizers import Tokenizer

    model = mit_model_dir if fmt == "mit" else omni_model_dir
    raw = Tokenizer.from_file(str(model / "tokenizer.json"))
    challenges, solutions = eval_files
    for task_id, task in tasks.items():
        for k in range(task.n_test):
            got = _show(capsys, task_id, "--challenges", challenges, "--model", model, "--solutions", solutions,
                        "--test", k, "--max-len", 100_000, "--format", fmt)
            chunks, answer = reference(task, k)
            assert got["prompt_text"] == "".join(chunks)
            assert got["answer_text"] == answer + end
            assert got["prompt_ids"] == [i for c in chunks for i in raw.encode(c, add_special_tokens=False).ids]
            assert got["answer_ids"] == [*raw.encode(answer, add_special_tokens=False).ids, raw.token_to_id(end)]
            assert raw.decode(got["prompt_ids"], skip_special_tokens=False) == got["prompt_text"]
            assert raw.decode(got["answer_ids"], skip_special_tokens=False) == got["answer_text"]
            assert (got["task_id"], got["test"], got["format"], got["demos"]) == (task_id, k, fmt,
                                                                                  list(range(len(task.train))))
    assert sum(t.n_test for t in tasks.values()) == 7


def test_the_fixture_tokenizers_split_digits_like_the_real_ones():
    """Llama 3 groups up to 3 digits a token, Qwen one: the grammars see multi-character tokens."""
    mit = as_text_tokenizer(build_tokenizer("mit"))
    omni = as_text_tokenizer(build_tokenizer("omni-arc"))
    assert [mit.decode([i]) for i in mit.encode("12345")] == ["123", "45"]
    assert [omni.decode([i]) for i in omni.encode("12345")] == list("12345")
    assert any(len(t) > 1 for t in token_map_from_tokenizer("mit", mit).grammar().texts)


def test_a_tokenizer_without_the_template_tokens_is_refused():
    with pytest.raises(FormatError, match=r"has no '<\|begin_of_text\|>' token, which the mit format needs as its bos"):
        token_map_from_tokenizer("mit", build_tokenizer("omni-arc"))


# --- writers: parse(write(g)) == g, and the automaton accepts exactly what the parser does ----------

@settings(max_examples=150, deadline=None)
@given(grids(), st.sampled_from(sorted(WRITERS)))
def test_every_writer_round_trips_and_its_automaton_accepts_it(g, name):
    w = WRITERS[name]
    assert np.array_equal(w.parse(w.write(g)), g)
    text = w.answer_text(g)
    assert np.array_equal(w.parse_answer(text), g)
    state = w.start
    for n, ch in enumerate(text):
        assert not w.accepting(state), f"accepts the prefix {text[:n]!r}"
        state = w.step(state, ch)
        assert state is not None, f"rejects {ch!r} after {text[:n]!r}"
    assert w.accepting(state)
    if name == "numpy":
        assert w.write(g) == numpy_print(g.astype(int))  # numpy's own print, as MIT writes it
    else:
        assert w.write(g) == arc24_grid(g)


@settings(max_examples=300, deadline=None)
@given(grids(max_side=4), st.sampled_from(sorted(WRITERS)), st.data())
def test_the_automaton_and_the_strict_parser_agree_on_near_misses(g, name, data):
    """One character deleted, inserted or replaced: the automaton accepts the text exactly when the
    parser gives a grid (so the search never finishes a text the parser rejects, nor misses one)."""
    w = WRITERS[name]
    text = w.answer_text(g)
    at = data.draw(st.integers(0, len(text) - 1))
    ch = data.draw(st.sampled_from(sorted(w.alphabet)))
    edit = data.draw(st.sampled_from(["delete", "insert", "replace"]))
    changed = {"delete": text[:at] + text[at + 1:], "insert": text[:at] + ch + text[at:],
               "replace": text[:at] + ch + text[at + 1:]}[edit]
    state = w.run(w.start, changed)
    accepted = state is not None and w.accepting(state)
    assert accepted == isinstance(w.parse_answer(changed), np.ndarray), repr(changed)


@settings(max_examples=40, deadline=None)
@given(grids(max_side=12))
def test_the_grammar_accepts_the_canonical_tokens_one_by_one(g):
    for name in ("mit", "omni-arc"):
        tm = token_map_from_tokenizer(name, build_tokenizer(name))
        gram = tm.grammar()
        index = {t: k for k, t in enumerate(gram.symbols)}
        state = gram.start
        ids = tm.answer_ids(g).tolist()
        for n, t in enumerate(ids):
            assert t in index and index[t] in gram.allowed(state), (name, n, as_text_tokenizer(tm.tokenizer).decode([t]))
            if n < len(ids) - 1:
                assert not gram.is_end(index[t])
                state = gram.advance(state, index[t])
        assert gram.is_end(index[ids[-1]])
        assert np.array_equal(parse_answer(ids, tm, require_end=True), g)


# --- the search: exact against brute force over the whole vocabulary ------------------------------

TARGETS = {"mit": [G([[7]]), G([[7], [8]]), G([[1, 2]])], "omni-arc": [G([[7]]), G([[3, 4]])]}


def steering_fn(tm: TemplateMap, seed: int, prompt_len: int):
    """Next-token logits of a stand-in: a random draw from a hash of the visible prefix, plus a bonus
    for every token (whatever its spelling) that continues one of a few answer texts, and for the
    end token after a whole one. Tokens of other texts keep some probability."""
    tok = tm.tokenizer
    vocab = len(tok.vocab())
    texts = [tm.writer.answer_text(g) for g in TARGETS[tm.format]]
    spelled = [tok.decode([i]) for i in range(vocab)]

    def fn(seen: tuple) -> np.ndarray:
        rng = np.random.default_rng([seed, zlib.crc32(np.asarray(seen, np.int64).tobytes())])
        logits = rng.normal(size=vocab) * 1.5
        done = tok.decode(list(seen[prompt_len:]))
        for i, s in enumerate(spelled):
            if s and any(t.startswith(done + s) for t in texts):
                logits[i] += 10.0
        if done in texts:
            logits[tm.end[0]] += 10.0
        return logits

    return fn


def brute_force(tm: TemplateMap, fn, prompt, max_new: int, threshold: float) -> dict:
    """Every token sequence ending in the end token (of at most ``max_new`` tokens) whose text the
    strict parser reads as a grid, with its exact logprob; any token of the vocabulary but the end
    and the other special tokens may come before the end."""
    special = {*tm.bos, *tm.end, tm.pad, *(i for t, i in tm.tokenizer.vocab().items() if t in tm.spec.special)}
    out = {}
    floor = math.log(threshold)

    def expand(seq: tuple, lp: float):
        logits = np.asarray(fn(tuple(int(t) for t in prompt) + seq), dtype=np.float64)
        logp = logits - np.logaddexp.reduce(logits)
        end = seq + (tm.end[0],)
        if lp + logp[tm.end[0]] >= floor and isinstance(parse_answer(end, tm, require_end=True), np.ndarray):
            out[end] = lp + logp[tm.end[0]]
        if len(seq) + 2 <= max_new:
            for t in np.flatnonzero(lp + logp >= floor):
                if int(t) not in special:
                    expand(seq + (int(t),), lp + logp[t])

    expand((), 0.0)
    return out


@pytest.mark.parametrize("fmt, max_new", [("mit", 7), ("omni-arc", 16)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_is_exact_against_brute_force(fmt, max_new, seed):
    from test_search import TableLM, assert_same

    from arcttt.search import dfs, search_prompts

    tm = token_map_from_tokenizer(fmt, build_tokenizer(fmt))
    prompt = encode([Pair(G([[1]]), G([[2]]))], G([[3]]), tm).ids
    fn = steering_fn(tm, seed, len(prompt))
    threshold = 0.002
    expected = brute_force(tm, fn, prompt, max_new, threshold)
    model = TableLM(fn, vocab=len(tm.tokenizer.vocab()))
    got = dfs(model, prompt, tm, threshold=threshold, max_new_tokens=max_new)
    assert_same(got, expected, threshold)
    assert len(expected) >= 2  # more than one answer (or spelling) was within reach
    assert all(isinstance(parse_answer(c.ids, tm, require_end=True), np.ndarray) for c in got)
    # the lock-step batch of views finds the same as one view at a time
    batched = search_prompts(model, [prompt, prompt[1:]], tm, threshold=threshold, max_new_tokens=max_new, batch=True)
    single = search_prompts(model, [prompt, prompt[1:]], tm, threshold=threshold, max_new_tokens=max_new, batch=False)
    assert [[(c.ids, round(c.logprob, 5)) for c in v] for v in batched] == \
        [[(c.ids, round(c.logprob, 5)) for c in v] for v in single]


def test_a_grid_found_in_two_spellings_is_one_find_with_both_probabilities():
    """mit: ``[[7]]#`` as ``[[ 7 ]]#`` and as ``[ [ 7 ]]#`` are one candidate of the view, its
    probability the sum of both spellings'."""
    from test_search import TableLM

    from arcttt.augment import Augmentation
    from arcttt.data import Task
    from arcttt.search import SearchConfig, search_test_input

    tm = token_map_from_tokenizer("mit", build_tokenizer("mit"))
    tok = tm.tokenizer
    spellings = [tok.encode("[[") + tok.encode("7") + tok.encode("]]#"),
                 tok.encode("[") + tok.encode("[") + tok.encode("7") + tok.encode("]]#")]
    assert all(len(s) == n for s, n in zip(spellings, (3, 4)))
    task = Task("t", (Pair(G([[1]]), G([[2]])),), (G([[3]]),), None)
    prompt = encode(task.train, task.test_inputs[0], tm).ids
    vocab = len(tok.vocab())

    def fn(seen):
        done = list(seen[len(prompt):])
        logits = np.full(vocab, -30.0)
        for s in spellings:
            if done == s:
                logits[tm.end[0]] = 0.0
            elif done == s[:len(done)]:
                logits[s[len(done)]] = 0.0
        return logits

    cands = search_test_input(TableLM(fn, vocab=vocab), task, 0, tm, [(Augmentation("id"), prompt)],
                              SearchConfig(n_augmentations=1, threshold=0.1, batch_views=False))
    assert len(cands) == 1 and np.array_equal(cands[0].grid, G([[7]])) and cands[0].hits == 1
    assert cands[0].search_logprob == pytest.approx(0.0, abs=1e-6)  # 1/2 + 1/2


def test_a_views_candidate_cap_counts_grids_not_spellings():
    """Two spellings of [[7]] (0.4 and 0.36) and [[8]] (0.24): with room for 2 candidates a view,
    both grids are kept (the spellings of one grid take one place)."""
    from test_search import TableLM

    from arcttt.augment import Augmentation
    from arcttt.data import Task
    from arcttt.search import SearchConfig, search_test_input

    tm = token_map_from_tokenizer("mit", build_tokenizer("mit"))
    tok = tm.tokenizer
    two, one, seven, eight, close = (tok.encode(t) for t in ("[[", "[", "7", "8", "]]#"))
    assert all(len(t) == 1 for t in (two, one, seven, eight, close))
    end = tm.end[0]
    table = {(): {two[0]: 0.6, one[0]: 0.4}, (one[0],): {one[0]: 1.0}, (one[0], one[0]): {seven[0]: 1.0},
             (two[0],): {seven[0]: 0.6, eight[0]: 0.4}}
    for path in ((two[0], seven[0]), (two[0], eight[0]), (one[0], one[0], seven[0])):
        table[path] = {close[0]: 1.0}
        table[(*path, close[0])] = {end: 1.0}
    task = Task("t", (Pair(G([[1]]), G([[2]])),), (G([[3]]),), None)
    prompt = encode(task.train, task.test_inputs[0], tm).ids
    vocab = len(tok.vocab())

    def fn(seen):
        logits = np.full(vocab, -30.0)
        for t, p in table.get(tuple(seen[len(prompt):]), {}).items():
            logits[t] = np.log(p)
        return logits

    cands = search_test_input(TableLM(fn, vocab=vocab), task, 0, tm, [(Augmentation("id"), prompt)],
                              SearchConfig(n_augmentations=1, threshold=0.1, batch_views=False,
                                           max_candidates_per_view=2))
    assert [c.grid.tolist() for c in cands] == [[[7]], [[8]]]
    assert [round(float(np.exp(c.search_logprob)), 4) for c in cands] == [0.76, 0.24]


# --- TTT sequences: loss on the answer, and on the demonstration outputs after the first -----------

def _loss_runs(enc, tm) -> list[str]:
    tok, runs, run = tm.tokenizer, [], []
    for t, m in zip(enc.ids.tolist(), enc.loss_mask.tolist()):
        if m:
            run.append(t)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs + ([tok.decode(run)] if run else [])


def test_ttt_loss_masks(tasks, tm):
    task = tasks["be03b35f"]
    demos, held = list(task.train[:-1]), task.train[-1]
    w = tm.writer
    plain = encode(demos, held.input, tm, held.output)
    assert _loss_runs(plain, tm) == [w.answer_text(held.output) + tm.tokenizer.decode(list(tm.end))]
    assert plain.loss_mask[plain.prompt_len:].all() and not plain.loss_mask[:plain.prompt_len].any()
    more = encode(demos, held.input, tm, held.output, loss_on_demo_outputs=True)
    every = encode(demos, held.input, tm, held.output, loss_on_demo_outputs=True, loss_on_first_output=True)
    assert np.array_equal(plain.ids, more.ids) and np.array_equal(plain.ids, every.ids)
    mark = "#" if tm.format == "mit" else ""
    outputs = [w.write(p.output) + mark for p in demos]
    assert [r.strip() for r in _loss_runs(more, tm)[:-1]] == outputs[1:]
    assert [r.strip() for r in _loss_runs(every, tm)[:-1]] == outputs


def test_prompts_fit_max_len_with_the_answer_reserved(tasks, tm):
    from arcttt.augment import Augmentation
    from arcttt.ttt_data import max_answer_len, test_prompts

    task = tasks["e345f17b"]
    full = len(encode(task.train, task.test_inputs[0], tm))
    # lengths are upper bounds (characters) for the template formats: a prompt one token short of
    # the whole task must drop a demonstration
    max_len = full + max_answer_len(tm) - 1
    views = test_prompts(task, 0, tm, [Augmentation("id"), Augmentation("rot90")], max_len)
    for v in views:
        assert len(v.prompt) + max_answer_len(tm) <= max_len and 0 < v.n_demos < len(task.train)
    assert max_answer_len(tm) >= len(tm.answer_ids(np.zeros((30, 30), np.uint8)))


def test_presets_name_their_formats():
    from arcttt.config import load_config

    mit, omni = load_config("mit"), load_config("omni-arc")
    assert (mit.model.format, omni.model.format) == ("mit", "omni-arc")
    assert (mit.model.lora.rank, mit.ttt.lr, mit.select.method) == (128, 1e-4, "vote")
    assert (omni.ttt.lr, omni.data.loss_on_demo_outputs) == (8e-5, False)


def test_a_template_models_arcttt_json_is_read_back_and_checked(mit_model_dir, tmp_path):
    """adopt-model records a template format; loading re-derives its ids from the directory's own
    tokenizer and refuses a record that disagrees, naming the piece."""
    from arcttt.modeldir import model_token_map
    from arcttt.weights import adopt_model

    out = adopt_model(mit_model_dir, tmp_path / "adopted", "mit", copy=True)
    tm, meta = model_token_map(out)
    assert isinstance(tm, TemplateMap) and meta["format"] == "mit"
    assert tm.to_json() == token_map_from_tokenizer("mit", build_tokenizer("mit")).to_json()
    meta["token_map"]["end"] = [tm.pad]
    (out / "arcttt.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match=rf"end is \[{tm.pad}\] in arcttt.json but \[{tm.end[0]}\] in tokenizer.json"):
        model_token_map(out)
