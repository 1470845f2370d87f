"""Model weights on disk: cutting a local Hugging Face causal LM's vocabulary down to the tokens of
an arcttt format (``arcttt shrink-vocab``), and :func:`prepare_weights` (``arcttt prepare-weights``),
which shrinks and optionally pre-quantizes to bitsandbytes 4-bit.

A shrunk model keeps the input-embedding and output-layer rows of the format's tokens
(:attr:`TokenMap.used_ids`, plus the tokenizer's bos/eos/pad), in their old order, so its logits
at the kept tokens equal the source's exactly. Its directory gets a word-level tokenizer over the
kept tokens (special tokens stay special), ``config.json`` with the new vocab size and bos/eos/pad
ids, safetensors weights, and ``arcttt.json`` with the re-indexed token map.

Everything is offline: the source is loaded with ``local_files_only=True``,
``trust_remote_code=False`` and safetensors only. transformers is imported inside the functions,
after the offline switches are set.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from arcttt.errors import first_line
from arcttt.formats import FORMATS, TEMPLATE_FORMATS, TokenMap
from arcttt.modeldir import (META_FILE, ModelLoadError, check_model_files, read_model_meta, token_map_from_tokenizer,
                             write_model_meta)
from arcttt.tokenizer import FormatError, load_tokenizer, wordlevel_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast


class WeightsError(ValueError):
    """A model directory that cannot be used: missing, not a model, not safetensors."""


def _offline() -> None:
    # before transformers is imported: nothing here may reach a model hub
    from arcttt.offline import set_offline_env

    set_offline_env()


def check_source_dir(path: str | Path) -> Path:
    """``path`` as a Path if it holds a Hugging Face model with safetensors weights and a tokenizer
    (``modeldir.check_model_files``), else :class:`WeightsError` naming the directory and what is
    missing."""
    try:
        return check_model_files(path, tokenizer=True)
    except ModelLoadError as e:
        raise WeightsError(str(e)) from None


# --- the one rule for every command that writes a model folder -----------------------------------

def written_by_arcttt(folder: Path) -> bool:
    """Whether ``folder`` holds an ``arcttt.json`` of ours (a format and a token map)."""
    import json

    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("format"), str) and isinstance(meta.get("token_map"), dict)


def check_output_dir(dst: str | Path, src: str | Path, *, overwrite: bool = False,
                     unfinished: Callable[[Path], bool] | None = None) -> Path:
    """``dst`` as a Path if a command may write the model folder made from ``src`` there, else a
    :class:`WeightsError`: DST must not be SRC, inside it, above it or a link, and must be new or
    empty, unless ``overwrite`` and DST is a model folder arcttt wrote (:func:`written_by_arcttt`),
    or ``unfinished(dst)`` says it is the command's own unfinished run (finetune's checkpoint).
    Used by finetune, shrink-vocab, prepare-weights, adopt-model and convert-weights."""
    dst, src = Path(dst), Path(src)
    if dst.is_symlink():
        raise WeightsError(f"destination {dst} is a link; give a real folder")
    if dst.exists() and not dst.is_dir():
        raise WeightsError(f"destination {dst} exists and is not a folder")
    d, s = dst.resolve(), src.resolve()
    if d == s or s in d.parents:
        raise WeightsError(f"destination {dst} is the source {src} or inside it; nothing is ever written into the source")
    if d in s.parents:
        raise WeightsError(f"destination {dst} holds the source {src}; give a folder outside it")
    if dst.exists() and any(dst.iterdir()) and not (unfinished and unfinished(dst)):
        if not overwrite:
            raise WeightsError(f"destination {dst} exists and is not an empty folder; give a new one (or --overwrite, "
                               "to replace a model folder arcttt wrote)")
        if not written_by_arcttt(dst):
            raise WeightsError(f"destination {dst} was not written by arcttt (no {META_FILE} of ours): "
                               "--overwrite replaces only arcttt's own model folders")
    return dst


def replace_dir(new: Path, dst: Path, keep: Callable[[str], bool] | None = None) -> None:
    """Put the finished folder ``new`` (a sibling of ``dst``) at ``dst``: an old ``dst`` is renamed
    aside first and removed once ``new`` is in, so ``dst`` is at every moment the old or the new.
    The old folder's entries that ``keep`` names (and ``new`` lacks) are moved into the new one."""
    import shutil
    import uuid

    if not dst.exists():
        new.rename(dst)
        return
    aside = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
    dst.rename(aside)
    new.rename(dst)
    for path in sorted(aside.iterdir()) if keep else ():
        if keep(path.name) and not (dst / path.name).exists():
            path.rename(dst / path.name)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def writing_dir(dst: Path, keep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A new temporary sibling of ``dst`` to write a model folder into: renamed to ``dst`` at the
    end (:func:`replace_dir`, which moves the entries ``keep`` names over), removed on any failure,
    so a failure leaves ``dst`` as it was."""
    import shutil
    import uuid

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.writing-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, dst, keep)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_hf_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The transformers tokenizer object of a local model directory (offline), for what only it
    does here: cutting a vocabulary and saving the cut tokenizer's files (shrink-vocab,
    prepare-weights). arcttt reads a tokenizer everywhere else with ``tokenizer.load_tokenizer``
    (the ``tokenizers`` library: ``AutoTokenizer`` rebuilds NVARC's WordLevel file as BPE)."""
    _offline()
    from transformers import AutoTokenizer

    try:  # trust_remote_code=False: a tokenizer_config.json's auto_map is refused, never asked about
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - a bad file raises whatever its parser raises
        raise WeightsError(f"{path}: cannot read its tokenizer ({type(e).__name__}: {first_line(e)})") from None


def _load_source(path: Path) -> PreTrainedModel:
    """The local causal LM ``path`` in its saved dtype, on CPU; a fault is a WeightsError naming it."""
    from arcttt.causal_lm import load_causal_lm

    try:
        return load_causal_lm(path)
    except Exception as e:  # noqa: BLE001 - corrupt weights or config.json raise what their readers raise
        raise WeightsError(f"{path}: cannot load as a causal LM ({type(e).__name__}: {first_line(e)})") from None


def kept_token_ids(tm: TokenMap, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids a shrunk vocabulary keeps, in their old order: the format's and bos/eos/pad."""
    roles = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return sorted({*tm.used_ids, *(int(i) for i in roles if i is not None)})


def remap_token_map(tm: TokenMap, new_id: dict[int, int]) -> TokenMap:
    """``tm`` with every id replaced through ``new_id`` (old id -> new id)."""
    def ids(seq):
        return tuple(new_id[i] for i in seq)

    return TokenMap(tm.format, ids(tm.digits), new_id[tm.newline], ids(tm.bos), ids(tm.input), ids(tm.output),
                    ids(tm.end), new_id[tm.pad])


def cut_vocabulary(model: PreTrainedModel, keep: list[int]) -> None:
    """Keep only rows ``keep`` of the input embedding and the output layer, in place; tied
    embeddings stay tied (one shared matrix)."""
    import torch

    old_in = model.get_input_embeddings()
    old_out = model.get_output_embeddings()
    tied = old_out is not None and old_out.weight.data_ptr() == old_in.weight.data_ptr()
    index = torch.tensor(keep, dtype=torch.long, device=old_in.weight.device)

    new_in = torch.nn.Embedding(len(keep), old_in.embedding_dim, device=old_in.weight.device,
                                dtype=old_in.weight.dtype)
    new_in.weight.data.copy_(old_in.weight.data.index_select(0, index))
    model.set_input_embeddings(new_in)
    if old_out is not None:
        new_out = torch.nn.Linear(old_out.in_features, len(keep), bias=old_out.bias is not None,
                                  device=old_out.weight.device, dtype=old_out.weight.dtype)
        if tied:
            new_out.weight = new_in.weight
        else:
            new_out.weight.data.copy_(old_out.weight.data.index_select(0, index))
        if old_out.bias is not None:
            new_out.bias.data.copy_(old_out.bias.data.index_select(0, index))
        model.set_output_embeddings(new_out)

    new_id = {old: new for new, old in enumerate(keep)}
    configs = {id(model.config): model.config}
    if hasattr(model.config, "get_text_config"):
        text = model.config.get_text_config()
        configs[id(text)] = text
    for config in configs.values():
        config.vocab_size = len(keep)
        _remap_special_ids(config, new_id)
    if getattr(model, "generation_config", None) is not None:
        _remap_special_ids(model.generation_config, new_id)


def _remap_special_ids(config, new_id: dict[int, int]) -> None:
    """bos/eos/pad ids of a config through ``new_id``; ids that were cut become None (or leave a list)."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        old = getattr(config, name, None)
        if isinstance(old, (list, tuple)):
            kept = [new_id[i] for i in old if i in new_id]
            setattr(config, name, kept if len(kept) > 1 else (kept[0] if kept else None))
        elif old is not None:
            setattr(config, name, new_id.get(int(old)))


def kept_tokenizer(tokenizer: PreTrainedTokenizerBase, keep: list[int]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the tokens ``keep`` (new id = position in ``keep``).

    Special tokens keep their spelling; other tokens are keyed by their text (what ``decode``
    gives), so a byte-level ``Ċ`` becomes ``"\\n"`` and encoding text still finds it.
    """
    special_ids = set(tokenizer.all_special_ids)
    special_ids |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    texts = []
    for i in keep:
        texts.append(tokenizer.convert_ids_to_tokens(i) if i in special_ids else tokenizer.decode([i]))
    if len(set(texts)) != len(texts):
        clashes = sorted({t for t in texts if texts.count(t) > 1})
        raise FormatError(f"tokenizer {tokenizer.name_or_path}: kept tokens share a text {clashes}; "
                          "cannot build a word-level tokenizer for them")
    special = {t for i, t in zip(keep, texts) if i in special_ids}

    def role(token_id):
        return texts[keep.index(token_id)] if token_id is not None and token_id in keep else None

    return wordlevel_tokenizer(texts, special, role(tokenizer.bos_token_id), role(tokenizer.eos_token_id),
                               role(tokenizer.pad_token_id))


def check_cuttable(format_name: str) -> None:
    """A :class:`FormatError` unless ``format_name`` is a format whose vocabulary can be cut to."""
    if format_name in TEMPLATE_FORMATS:
        raise FormatError(f"format {format_name} writes grids as text in the model's whole vocabulary: nothing to "
                          "cut; run the checkpoint as it is (`arcttt adopt-model SRC DST --format "
                          f"{format_name}`, or --format {format_name} on run)")
    if format_name not in FORMATS:
        raise FormatError(f"unknown format {format_name!r}; known: {', '.join(FORMATS)}")


def shrink_vocab(src: Path, dst: Path, format_name: str, *, overwrite: bool = False) -> Path:
    """Write to ``dst`` the model of ``src`` cut down to the tokens of ``format_name`` (see the
    module docstring); returns ``dst``. ``dst`` follows :func:`check_output_dir` and is written
    through a temporary sibling. Raises :class:`WeightsError` for a missing directory, a non-model
    or a destination that may not be written, :class:`FormatError` when the tokenizer does not
    speak the format."""
    check_cuttable(format_name)
    src = check_source_dir(src)
    dst = check_output_dir(dst, src, overwrite=overwrite)
    with writing_dir(dst) as tmp:
        _shrink_into(src, tmp, format_name)
    return dst


def _shrink_into(src: Path, dst: Path, format_name: str) -> None:
    tokenizer = load_hf_tokenizer(src)
    tm = token_map_from_tokenizer(format_name, tokenizer)
    keep = kept_token_ids(tm, tokenizer)
    model = _load_source(src)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    if keep[-1] >= vocab_rows:
        raise WeightsError(f"{src}: tokenizer id {keep[-1]} is beyond the model's {vocab_rows} embedding rows")

    cut_vocabulary(model, keep)
    new_tm = remap_token_map(tm, {old: new for new, old in enumerate(keep)})
    new_tokenizer = kept_tokenizer(tokenizer, keep)
    check = token_map_from_tokenizer(format_name, new_tokenizer)
    if check != new_tm:
        raise FormatError(f"{src}: the shrunk tokenizer encodes the {format_name} format differently "
                          f"({check} vs {new_tm}); the source tokenizer spells its tokens unusually")

    _save_model(model, dst)
    new_tokenizer.save_pretrained(dst)
    write_model_meta(dst, new_tm, source=str(src), source_vocab_size=vocab_rows, kept_source_ids=keep)


def _save_model(model: PreTrainedModel, dst: Path) -> None:
    import transformers

    # transformers 5 always writes safetensors and has no safe_serialization argument
    if int(transformers.__version__.split(".")[0]) >= 5:
        model.save_pretrained(dst)
    else:
        model.save_pretrained(dst, safe_serialization=True)
    portable_config(dst / "config.json")


def portable_config(path: Path) -> None:
    """Make a ``config.json`` written by transformers 5 read the same in 4.4x: 5 writes ``dtype``
    and ``rope_parameters``, 4.4x reads ``torch_dtype``, ``rope_theta`` and ``rope_scaling`` and
    would silently fall back to its default rope base (wrong for Qwen's 1e6) without them."""
    import json

    config = json.loads(path.read_text())
    configs = [config] + [v for v in config.values() if isinstance(v, dict) and "model_type" in v]
    for c in configs:  # the top level and nested text configs of multimodal models
        if "dtype" in c:
            c.setdefault("torch_dtype", c["dtype"])
        rope = c.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope:
            c.setdefault("rope_theta", rope["rope_theta"])
            if rope.get("rope_type", "default") != "default":
                c.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


# --- prepare-weights: shrink, optionally pre-quantize, record both in arcttt.json ---------------

QUANTIZE_CHOICES = ("none", "4bit")


def _update_model_meta(model_dir: Path, **fields) -> None:
    """Add or replace fields of ``model_dir/arcttt.json``, keeping the format and token map."""
    tm, meta = read_model_meta(model_dir)
    kept = {k: v for k, v in meta.items() if k not in ("format", "token_map")}
    write_model_meta(model_dir, tm, **{**kept, **fields})


def quantize_device(allow_cpu: bool = False) -> str:
    """``"cuda"`` when a CUDA GPU is visible, ``"cpu"`` when ``allow_cpu``, else a WeightsError
    saying what to do instead."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise WeightsError("--quantize 4bit needs bitsandbytes: pip install bitsandbytes")
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if allow_cpu:
        return "cpu"
    raise WeightsError("--quantize 4bit needs a CUDA GPU (bitsandbytes quantizes there) and none is visible. "
                       "Run prepare-weights on a GPU machine; or pass --allow-cpu-quantize (bitsandbytes 0.50 "
                       "also quantizes on CPU: slow, meant for tests and small models); or leave out --quantize "
                       "and let the loader quantize at start-up (ModelConfig.load_in_4bit).")


def quantize_4bit(src: Path, dst: Path, device: str, compute_dtype: str = "auto") -> dict:
    """Save the prepared model ``src`` to ``dst`` as bitsandbytes 4-bit nf4 safetensors (double
    quantization), copy its tokenizer and ``arcttt.json``, and record the quantization there;
    returns the record.

    ``compute_dtype`` (bf16, fp16, fp32; auto: bf16 on a GPU that has it natively, fp16 on one that
    does not, fp32 on CPU) is also the dtype of the layers left unquantized (embeddings, norms,
    lm_head). A model meant for T4s (no bf16) should be prepared with fp16.
    """
    _offline()
    import shutil

    import bitsandbytes
    from transformers import BitsAndBytesConfig

    from arcttt.causal_lm import DTYPES, load_causal_lm, resolve_dtype

    if compute_dtype not in ("auto", *DTYPES):
        raise WeightsError(f"compute dtype must be auto, bf16, fp16 or fp32, got {compute_dtype!r}")
    dtype = resolve_dtype(compute_dtype, device)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=dtype)
    try:
        model = load_causal_lm(src, dtype, quantization_config=config,
                               device_map={"": 0} if device == "cuda" else "cpu")
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise WeightsError(f"{src}: cannot quantize to 4-bit on {device} ({type(e).__name__}: {e})") from None
    dst.mkdir(parents=True, exist_ok=True)
    _save_model(model, dst)
    written = {p.name for p in dst.iterdir()}
    for path in src.iterdir():  # the tokenizer and arcttt.json; weights and configs were just written
        if path.is_file() and path.name not in written and ".safetensors" not in path.name:
            shutil.copy2(path, dst / path.name)
    record = {"method": "bitsandbytes", "bits": 4, "quant_type": "nf4", "double_quant": True,
              "compute_dtype": str(dtype).removeprefix("torch."), "quantized_on": device,
              "bitsandbytes": bitsandbytes.__version__}
    _update_model_meta(dst, quantization=record)
    return record


def prepare_weights(src: str | Path, dst: str | Path, format_name: str, *, quantize: str = "none",
                    compute_dtype: str = "auto", allow_cpu: bool = False, overwrite: bool = False) -> Path:
    """Make ``dst`` ready for the pipeline from the local Hugging Face model ``src``; returns ``dst``.

    The vocabulary is cut to ``format_name`` (:func:`shrink_vocab`); with ``quantize="4bit"`` the
    weights are saved as bitsandbytes 4-bit safetensors (:func:`quantize_4bit`): about a quarter of
    the size to attach on Kaggle, and nothing to quantize at every start. ``arcttt.json`` records the
    format, the token map, the source and ``quantization`` (None when not quantized). Quantizing
    needs a CUDA GPU unless ``allow_cpu``. ``dst`` follows :func:`check_output_dir` (new or empty,
    or ``overwrite`` of a folder arcttt wrote) and is written through a temporary sibling. Raises
    :class:`WeightsError` or :class:`FormatError` naming the fault.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise WeightsError(f"quantize must be one of {', '.join(QUANTIZE_CHOICES)}, got {quantize!r}")
    check_cuttable(format_name)  # before the long load
    src = check_source_dir(src)
    dst = check_output_dir(dst, src, overwrite=overwrite)
    device = quantize_device(allow_cpu) if quantize == "4bit" else None  # fail before the long shrink
    with writing_dir(dst) as tmp:
        if device is None:
            _shrink_into(src, tmp, format_name)
            _update_model_meta(tmp, quantization=None, prepared_by="arcttt prepare-weights")
        else:
            import tempfile

            # the shrunk full-precision copy is only a step; beside dst so that it is on the same disk
            with tempfile.TemporaryDirectory(dir=dst.parent, prefix=f".{dst.name}.shrunk.") as shrunk:
                _shrink_into(src, Path(shrunk), format_name)
                quantize_4bit(Path(shrunk), tmp, device, compute_dtype)
            _update_model_meta(tmp, prepared_by="arcttt prepare-weights")
    return dst


def adopt_model(src: str | Path, dst: str | Path, format_name: str, *, copy: bool = False,
                overwrite: bool = False) -> Path:
    """Make ``dst`` a ready model directory for an already-cut (or pre-quantized) checkpoint ``src``
    that has no ``arcttt.json``: every file of ``src`` linked (or copied) into ``dst``, as it is (no
    cutting, no quantizing), and ``arcttt.json`` written there with the format's ids in the
    checkpoint's own tokenizer (checked: every digit and marker round-trips). ``src`` is only read,
    so it may be a read-only Kaggle input. Raises :class:`WeightsError` or :class:`FormatError`.
    """
    import shutil

    src = check_source_dir(src)
    dst = check_output_dir(dst, src, overwrite=overwrite)
    tm = token_map_from_tokenizer(format_name, load_tokenizer(src))  # fails before anything is written
    with writing_dir(dst) as tmp:
        for path in sorted(src.iterdir()):
            if path.name == META_FILE or not path.is_file():
                continue
            if copy:
                shutil.copy2(path, tmp / path.name)
            else:
                (tmp / path.name).symlink_to(path.resolve())
        write_model_meta(tmp, tm, source=str(src.resolve()), adopted_by="arcttt adopt-model",
                         files="copied" if copy else "linked")
    return dst


# --- convert-weights: pickled .bin weights -> safetensors, without running any pickled code ------

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
"""Files that are pickles: never copied by convert-weights (their code is never run here)."""


def read_bin_tensors(path: Path) -> dict:
    """The tensors of one pickled ``.bin`` file, read with ``torch.load(weights_only=True)``: a file
    whose unpickling needs more than tensors (a pickled class, a function) is refused with a
    :class:`WeightsError` naming it, before anything of it runs."""
    import pickle

    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: needs more than tensors to unpickle, refused "
                           f"(weights_only: {first_line(e, 200) or type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - a file that is not torch weights (text: KeyError) raises anything
        raise WeightsError(f"{path}: cannot read as torch weights ({type(e).__name__}: {first_line(e, 200)})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def _unshared(tensors: dict) -> dict:
    """``tensors`` with every tensor owning its whole storage: safetensors refuses tensors that share
    memory (tied embeddings) or are views of a bigger one, so those are cloned."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in tensors.items():
        storage = t.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        whole = t.is_contiguous() and t.numel() * t.element_size() == storage.nbytes()
        out[name] = t if whole and key not in seen else t.contiguous().clone()
        seen.add(key)
    return out


def _bin_files(src: Path) -> dict[str, list[str]]:
    """{role: .bin file names in order} of ``src``: ``model`` (pytorch_model*.bin, as the index
    ``pytorch_model.bin.index.json`` lists them when there is one) and ``adapter`` (adapter_model.bin)."""
    import json

    from arcttt.data import shown

    index = src / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            raise WeightsError(f"{index}: cannot read its weight_map ({type(e).__name__}: {shown(str(e))})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise WeightsError(f"{index}: weight_map is not an object of tensor names to shard file names")
        model = sorted(set(weight_map.values()))
        for name in model:
            _check_shard_name(src, name, index)
        missing = [n for n in model if not (src / n).is_file()]
        if missing:
            raise WeightsError(f"{index} names shards that are not there: {', '.join(map(shown, missing))}")
    else:
        model = sorted(p.name for p in src.glob("pytorch_model*.bin"))
    adapter = ["adapter_model.bin"] if (src / "adapter_model.bin").is_file() else []
    for name in [*model, *adapter]:
        _check_shard_name(src, name, src)
    return {"model": model, "adapter": adapter}


def _check_shard_name(src: Path, name: str, where: Path) -> None:
    """A :class:`WeightsError` unless ``name`` is a plain ``.bin`` file name of a file in ``src``
    (no separator, no ``..``, not absolute, not a link out of ``src``): a shard index must not make
    convert-weights read, or write, anywhere else."""
    from arcttt.data import shown

    plain = (name and name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name
             and Path(name).name == name and name.endswith(".bin"))
    if not plain:
        raise WeightsError(f"{where}: shard {shown(name)} is not a plain .bin file name inside {src}")
    path = src / name
    if path.is_symlink() and src.resolve() not in path.resolve().parents:
        raise WeightsError(f"{where}: shard {shown(name)} is a link out of {src} (copy the folder with `cp -rL` "
                           "first if that is meant)")


def _safetensors_name(bin_name: str) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors (transformers' names)."""
    stem = bin_name.removesuffix(".bin")
    return ("model" + stem.removeprefix("pytorch_model") if stem.startswith("pytorch_model") else stem) + ".safetensors"


def convert_weights(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> dict:
    """Write to ``dst`` the model or adapter directory ``src`` with its pickled weights as safetensors.

    ``pytorch_model.bin`` becomes ``model.safetensors``; shards ``pytorch_model-0000i-of-0000n.bin``
    become ``model-0000i-of-0000n.safetensors`` (the same split) with ``model.safetensors.index.json``;
    a PEFT ``adapter_model.bin`` becomes ``adapter_model.safetensors``. Every tensor is read with
    ``torch.load(weights_only=True)`` only (:func:`read_bin_tensors`); shared tensors are cloned.
    Every other file and folder is copied as it is, except pickles (``.bin``, ``.pt``, ...), which
    are left out (those at the top level listed in the result). Shard names must be plain file names
    in ``src``. ``dst`` follows :func:`check_output_dir`; nothing is written into ``src``, and
    nothing into ``dst`` unless every file converts. Returns what was done.
    """
    import json
    import shutil

    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise WeightsError(f"source {src} is not a directory")
    dst = check_output_dir(dst, src, overwrite=overwrite)
    bins = _bin_files(src)
    if not bins["model"] and not bins["adapter"]:
        raise WeightsError(f"{src} has no pytorch_model*.bin or adapter_model.bin to convert")
    outputs = {_safetensors_name(n) for names in bins.values() for n in names}
    if bins["model"] and len(bins["model"]) > 1:
        outputs.add("model.safetensors.index.json")
    clash = sorted(n for n in outputs if (src / n).exists())
    if clash:
        raise WeightsError(f"{src} already has {', '.join(clash)}; nothing to convert")

    with writing_dir(dst) as tmp:
        weight_map: dict[str, str] = {}
        total = 0
        for name in [*bins["model"], *bins["adapter"]]:
            tensors = _unshared(read_bin_tensors(src / name))
            out_name = _safetensors_name(name)
            save_file(tensors, str(tmp / out_name), metadata={"format": "pt"})
            if name in bins["model"]:
                weight_map.update({key: out_name for key in tensors})
                total += sum(t.numel() * t.element_size() for t in tensors.values())
        if len(bins["model"]) > 1:
            (tmp / "model.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        left_out = []
        for path in sorted(src.iterdir()):
            if path.name == "pytorch_model.bin.index.json":
                continue
            if path.is_file() and path.suffix in PICKLE_SUFFIXES:
                if path.name not in bins["model"] and path.name not in bins["adapter"]:
                    left_out.append(path.name)
            elif path.is_dir():
                pickles = shutil.ignore_patterns(*(f"*{suffix}" for suffix in PICKLE_SUFFIXES))
                shutil.copytree(path, tmp / path.name, ignore=pickles)
            else:
                shutil.copy2(path, tmp / path.name)
    return {"dst": str(dst), "converted": {n: _safetensors_name(n) for names in bins.values() for n in names},
            "left_out": left_out}
