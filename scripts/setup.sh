#!/usr/bin/env bash
# Set up arcttt in ./.venv (created, or reused if present). Safe to run again.
#
#   bash scripts/setup.sh          # the package and its runtime dependencies
#   bash scripts/setup.sh --dev    # plus the test tools (pytest, hypothesis, ...) and ray (the Ray engine's tests)
#   bash scripts/setup.sh --unsloth  # plus unsloth (with --dev too, for tests/test_unsloth.py):
#                                    # about 1.6 GB more, torch and transformers kept as they are
#
# Environment:
#   PYTHON           interpreter that creates the venv (default: python3, must be 3.10+)
#   TORCH_INDEX_URL  index for the torch wheel on machines without a CUDA GPU, where pip's own
#                    index serves the CUDA build (PyPI on Linux): https://download.pytorch.org/whl/cpu
#                    (default: pip's configured indexes)
set -euo pipefail

TORCH_VERSION=2.13.0
dev=0
unsloth=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        --unsloth) unsloth=1 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "setup.sh: $python is missing or older than Python 3.10" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
py=.venv/bin/python
pip=("$py" -m pip --disable-pip-version-check)

echo "setup.sh: pip"
"${pip[@]}" install --quiet --upgrade pip

# Without a CUDA GPU, install the CPU torch before anything that depends on torch, so that pip
# resolves "torch" to it instead of pulling the default wheel with its CUDA libraries (GBs).
if ! command -v nvidia-smi >/dev/null 2>&1; then
    if "$py" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
        echo "setup.sh: torch $TORCH_VERSION already installed"
    else
        echo "setup.sh: torch $TORCH_VERSION (CPU)"
        "${pip[@]}" install --quiet "torch==$TORCH_VERSION" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    fi
fi

if [ "$dev" = 1 ]; then
    echo "setup.sh: arcttt with dev extras (and ray, for the Ray engine's tests)"
    "${pip[@]}" install --quiet -e ".[dev,ray]"

    # --- extra dev steps (add below, each optional and idempotent) ---------------------------------
    # Headless chromium for the report's browser test (tests/test_report.py, marker `browser`; it
    # skips without it). Debian packages only, as root; about 120 MB download, 500 MB installed.
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
        echo "setup.sh: chromium already installed"
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup.sh: chromium (apt-get, for the report's browser test)"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
               && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
            echo "setup.sh: chromium could not be installed; the browser test will be skipped" >&2
        fi
    else
        echo "setup.sh: no chromium (needs root and apt-get); the browser test will be skipped"
    fi
    # ------------------------------------------------------------------------------------------------
else
    echo "setup.sh: arcttt"
    "${pip[@]}" install --quiet -e .
fi

# unsloth, pinned (its releases change behaviour), installed so that it cannot replace the torch
# above (a plain install pulls the CUDA build, about 6 GB) or move transformers/peft: a constraints
# file pins what is installed now. torchvision comes along as a dependency but is unused, and on a
# CPU torch it does not match; remove it unless it was there before.
UNSLOTH_VERSION=2026.10.9
if [ "$unsloth" = 1 ]; then
    if "$py" -c "import importlib.metadata as m, sys; sys.exit(m.version('unsloth') != '$UNSLOTH_VERSION')" 2>/dev/null; then
        echo "setup.sh: unsloth $UNSLOTH_VERSION already installed"
    else
        echo "setup.sh: unsloth $UNSLOTH_VERSION"
        had_torchvision=$("$py" -c "import importlib.util as u; print(int(u.find_spec('torchvision') is not None))")
        constraints=$(mktemp)
        "$py" - > "$constraints" <<'PY'
import importlib.metadata as m
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "safetensors"):
    try:
        print(f"{name}=={m.version(name).split('+')[0]}")
    except m.PackageNotFoundError:
        pass
PY
        "${pip[@]}" install --quiet -c "$constraints" "unsloth==$UNSLOTH_VERSION" "unsloth_zoo==$UNSLOTH_VERSION"
        rm -f "$constraints"
        if [ "$had_torchvision" = 0 ]; then
            "${pip[@]}" uninstall --quiet -y torchvision 2>/dev/null || true
        fi
    fi
fi

echo "setup.sh: done ($("$py" -c 'import arcttt, torch; print(f"arcttt {arcttt.__version__}, torch {torch.__version__}")'))"
