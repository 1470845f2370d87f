"""shrink-vocab on tiny Llama models built here: the shrunk model's logits on a formatted real task
equal the source's at the kept tokens, for both formats, tied or not, and a byte-level BPE
tokenizer; the CLI writes the files; bad directories give clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from arcttt.formats import encode  # noqa: E402
from arcttt.modeldir import build_tokenizer, read_model_meta, token_map_from_tokenizer  # noqa: E402
from arcttt.tokenizer import FormatError  # noqa: E402
from arcttt.weights import WeightsError, kept_token_ids, prepare_weights, shrink_vocab  # noqa: E402


def _tiny_llama(tokenizer, path, *, tie: bool = False, seed: int = 0):
    """A 2-layer, 32-wide random Llama over ``tokenizer``'s vocabulary, saved with it at ``path``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if not tie:  # a distinct output layer, so that cutting the wrong rows of it would show
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def task(arc1_eval):
    # a short real task, so the forward passes stay quick
    return min(arc1_eval[:50], key=lambda t: t.cells())


def _check_shrunk(src_model, src_tokenizer, dst, fmt, task):
    old_tm = token_map_from_tokenizer(fmt, src_tokenizer)
    new_tm, meta = read_model_meta(dst)
    keep = kept_token_ids(old_tm, src_tokenizer)
    assert meta["kept_source_ids"] == keep and meta["format"] == fmt
    assert sorted(os.listdir(dst)) == ["arcttt.json", "config.json", "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]
    # config.json reads the same in transformers 4.4x (rope base and dtype under their old names too)
    config = json.loads((dst / "config.json").read_text())
    assert config["rope_theta"] == 1e6 and config["torch_dtype"] == "float32"
    if "rope_parameters" in config:
        assert config["rope_parameters"]["rope_theta"] == 1e6
    model, tokenizer = _load(dst)
    # the vocabulary is exactly the kept tokens, and the tokenizer agrees with arcttt.json
    assert model.config.vocab_size == len(keep) == len(tokenizer) < len(src_tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == len(keep)
    assert token_map_from_tokenizer(fmt, tokenizer) == new_tm
    new_id = {old: new for new, old in enumerate(keep)}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(model.config, name) == new_id[getattr(src_model.config, name)]
        assert getattr(tokenizer, name) == new_id[getattr(src_tokenizer, name)]

    old = encode(task.train, task.test_inputs[0], old_tm, task.test_outputs[0])
    new = encode(task.train, task.test_inputs[0], new_tm, task.test_outputs[0])
    assert new.ids.tolist() == [new_id[i] for i in old.ids.tolist()]
    with torch.no_grad():
        want = src_model(torch.from_numpy(old.ids)[None]).logits[0][:, keep]
        got = model(torch.from_numpy(new.ids)[None]).logits[0]
    assert got.shape == want.shape and want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return model


@pytest.mark.parametrize("fmt, tie", [("compact", False), ("chat", False), ("chat", True), ("compact", True)])
def test_shrunk_logits_equal_the_source_at_kept_tokens(fmt, tie, task, tmp_path):
    tokenizer = build_tokenizer(fmt, extra_tokens=50)
    src_model = _tiny_llama(tokenizer, tmp_path / "src", tie=tie)
    dst = shrink_vocab(tmp_path / "src", tmp_path / "dst", fmt)
    assert dst == tmp_path / "dst"
    model = _check_shrunk(src_model, tokenizer, dst, fmt, task)
    shared = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert shared == tie and bool(model.config.tie_word_embeddings) == tie
    if fmt == "chat":  # "system" and the fillers are cut; the format's tokens re-indexed
        assert "system" not in tokenizer.convert_ids_to_tokens(read_model_meta(dst)[1]["kept_source_ids"])
    else:  # the compact tokens come first, so the shrunk map is the compact map itself
        from arcttt.formats import compact_token_map

        assert read_model_meta(dst)[0] == compact_token_map()


def test_shrink_a_byte_level_bpe_chat_model(bpe_chat_tokenizer, task, tmp_path):
    src_model = _tiny_llama(bpe_chat_tokenizer, tmp_path / "src", tie=True)
    dst = shrink_vocab(tmp_path / "src", tmp_path / "dst", "chat")
    _check_shrunk(src_model, bpe_chat_tokenizer, dst, "chat", task)
    _, tokenizer = _load(dst)
    tm, _ = read_model_meta(dst)
    # the byte-level newline "Ċ" is the text "\n" in the shrunk word-level tokenizer
    assert tokenizer.encode("<|im_start|>user\n", add_special_tokens=False) == list(tm.input)
    assert tokenizer.decode(list(tm.output)) == "<|im_end|>\n<|im_start|>assistant\n"


def test_cli_shrink_vocab_writes_the_model(task, tmp_path, capsys):
    from arcttt.cli import main

    tokenizer = build_tokenizer("chat", extra_tokens=20)
    _tiny_llama(tokenizer, tmp_path / "src")
    with pytest.raises(SystemExit) as e:
        main(["shrink-vocab", str(tmp_path / "src"), str(tmp_path / "dst"), "--format", "chat"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dst")
    config = json.loads((tmp_path / "dst" / "config.json").read_text())
    assert config["vocab_size"] == 16
    assert read_model_meta(tmp_path / "dst")[0].format == "chat"
    # a bad source is a clear one-line error and exit 2
    with pytest.raises(SystemExit) as e:
        main(["shrink-vocab", str(tmp_path / "nowhere"), str(tmp_path / "dst2"), "--format", "chat"])
    assert e.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        shrink_vocab(tmp_path / "missing", tmp_path / "dst", "chat")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightsError, match="not a directory"):
        shrink_vocab(tmp_path / "file", tmp_path / "dst", "chat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="no config.json"):
        shrink_vocab(tmp_path / "empty", tmp_path / "dst", "chat")
    (tmp_path / "empty" / "config.json").write_text("{}")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(WeightsError, match="no \\*.safetensors.*pytorch_model.bin"):
        shrink_vocab(tmp_path / "empty", tmp_path / "dst", "chat")
    with pytest.raises(FormatError, match="unknown format"):
        shrink_vocab(tmp_path / "empty", tmp_path / "dst", "bytes")
    for name in ("mit", "omni-arc"):  # the whole vocabulary: refused before anything is loaded
        with pytest.raises(FormatError, match=f"format {name} writes grids as text in the model's whole "
                                              f"vocabulary: nothing to cut; run the checkpoint as it is"):
            shrink_vocab(tmp_path / "empty", tmp_path / "dst", name)
        with pytest.raises(FormatError, match=f"format {name} writes grids as text"):
            prepare_weights(tmp_path / "empty", tmp_path / "dst2", name)
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst2").exists()


def test_format_mismatch_and_same_destination(tmp_path):
    tokenizer = build_tokenizer("compact", extra_tokens=5)
    _tiny_llama(tokenizer, tmp_path / "src")
    with pytest.raises(FormatError, match="im_start"):
        shrink_vocab(tmp_path / "src", tmp_path / "dst", "chat")
    with pytest.raises(WeightsError, match="is the source .* nothing is ever written into the source"):
        shrink_vocab(tmp_path / "src", tmp_path / "src", "compact")
    # a config.json without a loadable model behind it
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "no-such-model"}))
    with pytest.raises(WeightsError, match="cannot load"):
        shrink_vocab(tmp_path / "src", tmp_path / "dst", "compact")
    assert not (tmp_path / "dst").exists()


def test_kept_ids_include_bos_eos_pad():
    tokenizer = build_tokenizer("chat", extra_tokens=10)
    tm = token_map_from_tokenizer("chat", tokenizer)
    keep = kept_token_ids(tm, tokenizer)
    assert set(tm.used_ids) <= set(keep) and keep == sorted(keep)
    assert {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id} <= set(keep)
    assert np.all(np.diff(keep) > 0)


def test_portable_config_writes_the_old_names_too(tmp_path):
    from arcttt.weights import portable_config

    rope = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "x", "dtype": "bfloat16", "rope_parameters": rope,
                                "text_config": {"model_type": "y", "rope_parameters": {"rope_theta": 1e6}},
                                "rope_theta": 500000.0}))
    portable_config(path)
    config = json.loads(path.read_text())
    assert config["torch_dtype"] == "bfloat16" and config["rope_theta"] == 500000.0
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0}
    assert config["text_config"]["rope_theta"] == 1e6 and "rope_scaling" not in config["text_config"]
    assert config["rope_parameters"] == rope  # what transformers 5 reads is left as it was
