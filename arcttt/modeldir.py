"""What a model directory says: whether it is a model at all, the format it speaks and its token
map, its ``arcttt.json``, and in one line what the model is.

A model directory is a Hugging Face causal LM folder (``config.json``, ``*.safetensors`` weights, a
tokenizer) and, once arcttt has written or adopted it, ``arcttt.json`` (:data:`META_FILE`: the
format, the token map and where the model came from; :func:`write_model_meta`,
:func:`read_model_meta`). :func:`check_model_files` is the one check that a folder holds a model;
:func:`check_model_dir` adds its format (:func:`model_token_map`: ``arcttt.json``'s map, checked
against ``tokenizer.json``, else the format given or pinned down by the tokenizer), read with
``tokenizer.load_tokenizer`` (the ``tokenizers`` library, never ``AutoTokenizer``: see README
"Published checkpoints"). :func:`describe_model_dir` says what the model is.

Any format by name, token or template: :func:`token_map_from_tokenizer` (``formats.derive_token_map``
or ``templates.template_map``) and :func:`build_tokenizer` (``tokenizer.fixture_tokenizer`` or
``templates.template_tokenizer``). Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from arcttt.formats import FORMATS, FormatMap, TokenMap, check_token_map, derive_token_map, detect_format, spec
from arcttt.templates import TEMPLATES, TemplateMap, template_map, template_tokenizer
from arcttt.tokenizer import FormatError, fixture_tokenizer, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

META_FILE = "arcttt.json"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".gguf")
"""Weights that are not safetensors (named when a folder has no safetensors)."""


class ModelLoadError(RuntimeError):
    """A model directory that cannot be loaded; the message names the path and the fault."""


# --- any format by name ---------------------------------------------------------------------------

def token_map_from_tokenizer(format_name: str, tokenizer: Any) -> TokenMap | TemplateMap:
    """The ids of every piece of ``format_name`` in a tokenizer (a ``tokenizer.TextTokenizer``, a
    ``tokenizers.Tokenizer`` or a transformers fast tokenizer): a token format's
    (``formats.derive_token_map``: every digit and marker round-trips, fixed ids are its own) or a
    template format's (``templates.template_map``). Raises :class:`FormatError` naming the piece."""
    if format_name in TEMPLATES:
        return template_map(format_name, tokenizer)
    return derive_token_map(format_name, tokenizer)


def build_tokenizer(format_name: str, extra_tokens: int = 0) -> PreTrainedTokenizerFast:
    """A small local tokenizer for ``format_name`` (no download), for tiny test models: a token
    format's (``tokenizer.fixture_tokenizer``) or a template format's trained BPE
    (``templates.template_tokenizer``); ``extra_tokens`` unused filler tokens give ``shrink-vocab``
    something to cut."""
    if format_name in TEMPLATES:
        return template_tokenizer(format_name, extra_tokens)
    return fixture_tokenizer(spec(format_name).name, extra_tokens)


# --- arcttt.json ----------------------------------------------------------------------------------

def write_model_meta(model_dir: str | Path, tm: FormatMap, **extra) -> Path:
    """Record in ``model_dir/arcttt.json`` which format the model speaks and its token ids."""
    path = Path(model_dir) / META_FILE
    path.write_text(json.dumps({"format": tm.format, "token_map": tm.to_json(), **extra}, indent=2))
    return path


def read_model_meta(model_dir: str | Path) -> tuple[TokenMap | TemplateMap, dict]:
    """The token map recorded in a model directory, and the whole metadata object."""
    path = Path(model_dir) / META_FILE
    if not Path(model_dir).is_dir():
        raise FormatError(f"model directory {model_dir} does not exist")
    if not path.is_file():
        raise FormatError(f"{model_dir} has no {META_FILE}: give its format (--format, one of {', '.join(FORMATS)}), "
                          "or prepare it with `arcttt adopt-model`, `arcttt prepare-weights`, `arcttt shrink-vocab` "
                          "or `arcttt make-tiny-model`")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not JSON ({getattr(e, 'msg', e)})") from None
    except RecursionError:
        raise FormatError(f"{path}: not usable JSON (nested too deeply)") from None
    except OSError as e:
        raise FormatError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        raise FormatError(f"{path}: unknown format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
                          f"known: {', '.join(FORMATS)}")
    recorded = meta.get("token_map", {})
    if not isinstance(recorded, dict):
        raise FormatError(f"{path}: token_map is not an object (got {type(recorded).__name__})")
    if meta["format"] in TEMPLATES:  # a template format's ids come from the directory's own tokenizer
        tm = template_map(meta["format"], load_tokenizer(model_dir))
        for name, value in tm.to_json().items():
            if recorded.get(name, value) != value:
                raise FormatError(f"{name} is {recorded.get(name)} in {META_FILE} but {value} in tokenizer.json")
        return tm, meta
    try:
        return TokenMap.from_json(recorded), meta
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None


# --- is it a model, and which format does it speak ------------------------------------------------

def check_model_files(path: str | Path, *, tokenizer: bool = False) -> Path:
    """``path`` as a Path if it holds a Hugging Face model with safetensors weights (and, with
    ``tokenizer``, tokenizer files), else a :class:`ModelLoadError` naming the folder and what is
    missing. Reads nothing but the listing."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} is not a model directory: no config.json")
    if not any(path.glob("*.safetensors")):
        found = (sorted(p.name for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
                 or sorted(p.name for p in path.iterdir())[:8])
        raise ModelLoadError(f"{path} has no *.safetensors weights (found: {', '.join(found) or 'nothing'}); "
                             "only safetensors are loaded: convert .bin weights with `arcttt convert-weights SRC DST`")
    if tokenizer and not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ModelLoadError(f"{path} has no tokenizer (tokenizer.json or tokenizer_config.json)")
    return path


def check_model_dir(path: str | Path, format: str | None = None) -> tuple[Path, TokenMap | TemplateMap, dict]:
    """The directory, its token map and metadata, or a :class:`ModelLoadError` saying what is wrong.

    The token map is ``arcttt.json``'s when there is one (``format``, if given, must agree), else the
    format's ids in the directory's tokenizer (``format`` given, or pinned down by the tokenizer:
    NVARC's 16 tokens). Either way every digit and marker is checked against ``tokenizer.json``
    (read with the ``tokenizers`` library) when the directory has one. Nothing is written here.
    """
    path = check_model_files(path)
    try:
        return (path, *model_token_map(path, format))
    except FormatError as e:
        raise ModelLoadError(f"{path}: {e}") from e


def model_token_map(path: Path, format: str | None = None) -> tuple[TokenMap | TemplateMap, dict]:
    """See :func:`check_model_dir`; raises :class:`FormatError`."""
    has_tokenizer = (path / "tokenizer.json").is_file()
    tokenizer = load_tokenizer(path) if has_tokenizer else None
    if (path / META_FILE).is_file():
        token_map, meta = read_model_meta(path)
        if format is not None and format != token_map.format:
            raise FormatError(f"format {format} was asked for, but {META_FILE} says {token_map.format}")
        if tokenizer is not None:
            check_token_map(token_map, token_map_from_tokenizer(token_map.format, tokenizer),
                            got_from=META_FILE, expected_from="tokenizer.json")
        return token_map, meta
    if tokenizer is None:
        read_model_meta(path)  # raises: no arcttt.json, and no tokenizer to read a format from
    detected = detect_format(tokenizer)
    name = format or detected
    if name is None:
        raise FormatError(f"no {META_FILE}, and its tokenizer does not pin down a format: give "
                          f"--format (one of {', '.join(FORMATS)}) or run `arcttt adopt-model`")
    token_map = token_map_from_tokenizer(name, tokenizer)
    return token_map, {"format": name, "token_map": token_map.to_json(),
                       "source": "format given" if format else "format detected from the tokenizer"}


# --- what the model is --------------------------------------------------------------------------

def describe_model_dir(path: str | Path, format: str | None = None) -> str:
    """One line saying what the model in ``path`` is: architecture, size, dtype, format and where
    it came from (``arcttt.json``'s record: a random tiny model, an ``arcttt finetune`` run and its
    data, a prepared or adopted checkpoint). Reads only config.json, arcttt.json and the safetensors
    headers; never raises (a part it cannot read is left out)."""
    path = Path(path)
    if not path.is_dir():
        return f"{path}: not found"
    parts = []
    try:
        config = json.loads((path / "config.json").read_text())
        arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
        layers, hidden = config.get("num_hidden_layers"), config.get("hidden_size")
        parts.append(f"{arch}, {layers} layers x {hidden}" if layers and hidden else arch)
    except (OSError, ValueError, AttributeError, IndexError, TypeError, RecursionError):
        config = {}
    n = _count_saved_weights(path)
    if n:
        parts.append(f"{n:,} weights")
    if prequantized(path):
        parts.append("bnb 4-bit as saved")
    elif isinstance(config, dict) and (config.get("dtype") or config.get("torch_dtype")):
        parts.append(str(config.get("dtype") or config.get("torch_dtype")))
    try:
        meta = json.loads((path / META_FILE).read_text())
        meta = meta if isinstance(meta, dict) else {}
    except (OSError, ValueError, RecursionError):
        meta = {}
    name = meta.get("format") or format
    if name:
        parts.append(f"format {name}")
    source = meta.get("source")
    if source == "make_tiny_model":
        parts.append("random weights from make_tiny_model (solves nothing: checks the mechanics)")
    elif source == "arcttt finetune":
        data = " + ".join(meta.get("data") or []) or "?"
        base = meta.get("base_source")
        origin = "from random init" if base == "make_tiny_model" else f"from {meta.get('base', '?')}"
        stages = meta.get("stages") if isinstance(meta.get("stages"), list) else []
        origin += f" in {len(stages) + 1} stages, the last" if stages else ","
        parts.append(f"trained by arcttt finetune {origin} {meta.get('steps', '?')} steps on {data}; excluded: "
                     f"{', '.join(meta.get('excluded') or []) or 'nothing'}")
    elif source:
        parts.append(str(source))
    elif not meta:
        parts.append("no arcttt.json (a published checkpoint, run in its given or detected format)")
    return f"{path}: " + ", ".join(parts)


def _count_saved_weights(path: Path) -> int:
    """Elements in the directory's safetensors files, from their headers (0 if unreadable)."""
    total = 0
    for f in sorted(path.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= min(f.stat().st_size - 8, 100 * 2 ** 20):  # not a safetensors header
                    return 0
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return 0
        if not isinstance(header, dict):
            return 0
        for key, entry in header.items():
            if key != "__metadata__" and isinstance(entry, dict):
                n = 1
                for d in entry.get("shape", []):
                    n *= int(d)
                total += n
    return total


def prequantized(path: Path) -> bool:
    """The directory's weights are saved quantized (bitsandbytes 4-bit): load them as they are."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    quant = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(quant, dict) and bool(quant.get("load_in_4bit") or quant.get("quant_method") == "bitsandbytes")
