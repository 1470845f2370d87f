"""Build the two Kaggle datasets and the kernel folder the notebook is pushed from.

    python kaggle/build.py --owner KAGGLE_USERNAME [--out dist/kaggle] [--python 3.11 3.12]
                           [--only code|wheelhouse|kernel] [--competition arc-prize-2026-arc-agi-2]
                           [--model-source OWNER/MODEL/FRAMEWORK/VARIATION/VERSION]

Writes under ``--out``:

- ``code-dataset/``: the arcttt wheel (``pip wheel --no-deps .``), its install list and
  ``dataset-metadata.json`` (upload: ``kaggle datasets create -p OUT/code-dataset``);
- ``wheelhouse/``: every package of ``kaggle/pins.txt`` at its pinned version, for each ``--python``
  on manylinux x86_64 (``pip download --no-deps --only-binary=:all:``), its install list and
  ``dataset-metadata.json``; then it checks the downloaded wheels' requirements against the pins
  and prints what is left to Kaggle's image;
- ``kernel/``: the notebook and ``kernel-metadata.json`` with the owner filled in
  (``kaggle kernels push -p OUT/kernel``).

The install list (``arcttt-install.txt``) is what the notebook passes to
``pip install --no-index --no-deps --find-links <folder> -r arcttt-install.txt``: exactly the pinned
versions, nothing resolved on Kaggle. Needs only the standard library, pip and ``packaging``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import HeaderParser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
INSTALL_LIST = "arcttt-install.txt"  # the same name as arcttt.kaggle.INSTALL_LIST
PYTHONS = ("3.11", "3.12")
# Kaggle's image (Ubuntu 22.04, glibc 2.35) runs any of these; pip needs each tag named when it
# downloads for another platform.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_12_x86_64",
             "manylinux2010_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")
# Requirements the wheelhouse leaves to Kaggle's image (canonical names). torch & co must match the
# image's CUDA driver; the rest are everyday packages the image has, which the notebook must not
# downgrade or upgrade under the image's other packages.
FROM_IMAGE = frozenset(canonicalize_name(n) for n in (
    "torch", "torchvision", "torchaudio", "triton", "numpy", "tqdm", "matplotlib", "pandas", "pyarrow",
    "pillow", "protobuf", "psutil", "pyyaml", "regex", "requests", "urllib3", "idna", "charset-normalizer",
    "packaging", "filelock", "fsspec", "typing-extensions", "pydantic", "pydantic-core", "rich", "click",
    "networkx", "sympy", "jinja2", "aiohttp", "httpx", "dill", "multiprocess", "xxhash", "einops", "wheel",
    "nest-asyncio", "pygments", "importlib-metadata", "importlib-resources", "scipy", "setuptools",
    "xformers",  # optional for unsloth; its wheels pin one exact torch, so it is not shipped
))
TARGET_ENV = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
              "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines (``#`` comments, blank lines) -> {canonical name: version}."""
    pins: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"{path} line {n}: {line!r} is not a requirement ({e})") from None
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.marker or req.extras:
            raise ValueError(f"{path} line {n}: {line!r} is not an exact pin (name==version)")
        try:
            Version(specs[0].version)
        except InvalidVersion:
            raise ValueError(f"{path} line {n}: {specs[0].version!r} is not a version") from None
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"{path} line {n}: {req.name} pinned twice")
        pins[name] = specs[0].version
    return pins


def _applies(req: Requirement, python: str) -> bool:
    return req.marker is None or req.marker.evaluate(
        {**TARGET_ENV, "python_version": python, "python_full_version": f"{python}.0", "extra": ""})


def inconsistencies(pins: dict[str, str], requires: dict[str, list[str]], python: str) -> list[str]:
    """Each requirement of a pinned package on another pinned package that the pin does not meet.

    Args:
        pins: canonical name -> pinned version.
        requires: canonical name -> its Requires-Dist strings.
        python: The target Python ("3.12"), for environment markers.
    """
    faults = []
    for name, reqs in requires.items():
        for text in reqs:
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            met = dep not in pins or req.specifier.contains(Version(pins[dep]), prereleases=True)
            if not met and _applies(req, python):
                faults.append(f"{name} {pins[name]} needs {req.name}{req.specifier}, pinned {req.name}=={pins[dep]}")
    return faults


def left_to_image(pins: dict[str, str], requires: dict[str, list[str]], python: str) -> dict[str, set[str]]:
    """Requirements of the pinned packages that are not pinned: dependency -> who needs it."""
    out: dict[str, set[str]] = {}
    for name, reqs in requires.items():
        for text in reqs:
            req = Requirement(text)
            dep = canonicalize_name(req.name)
            if dep not in pins and _applies(req, python):
                out.setdefault(dep, set()).add(name)
    return out


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        headers = HeaderParser().parsestr(z.read(meta).decode("utf-8", "replace"))
    return headers.get_all("Requires-Dist") or []


def _fits(wheel: Path, python: str) -> bool:
    """Whether a wheel's tags fit CPython ``python`` on linux x86_64."""
    cp = "cp" + python.replace(".", "")
    for tag in parse_wheel_filename(wheel.name)[3]:
        interp_ok = tag.interpreter in ("py3", f"py{cp[2:]}", cp) or (
            tag.abi == "abi3" and tag.interpreter.startswith("cp") and int(tag.interpreter[3:]) <= int(cp[3:]))
        if interp_ok and (tag.platform == "any" or tag.platform.endswith("x86_64")):
            return True
    return False


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _can_build_in_place() -> bool:
    """Whether this interpreter can build the arcttt wheel without pip's isolated build environment
    (which fetches setuptools from the index): setuptools >= 70.1 has bdist_wheel built in; 68-70.0
    needs the wheel package (pyproject.toml asks for setuptools >= 68)."""
    try:
        import setuptools
    except ImportError:
        return False
    version = Version(setuptools.__version__)
    if version >= Version("70.1"):
        return True
    import importlib.util

    return version >= Version("68") and importlib.util.find_spec("wheel") is not None


def _dataset_metadata(folder: str, owner: str) -> dict:
    meta = json.loads((HERE / folder / "dataset-metadata.json").read_text())
    meta["id"] = meta["id"].replace("OWNER/", f"{owner}/", 1)
    return meta


def build_code(out: Path, owner: str) -> Path:
    dest = out / "code-dataset"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    # setuptools stages the package in build/lib and never deletes from it: a module removed from
    # the source would still ship in the wheel
    shutil.rmtree(REPO / "build" / "lib" / "arcttt", ignore_errors=True)
    in_place = ["--no-build-isolation"] if _can_build_in_place() else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *in_place, "--wheel-dir", str(dest), str(REPO)])
    wheels = list(dest.glob("arcttt-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one arcttt wheel in {dest}, found {wheels}")
    version = parse_wheel_filename(wheels[0].name)[1]
    (dest / INSTALL_LIST).write_text(f"arcttt=={version}\n")
    (dest / "dataset-metadata.json").write_text(json.dumps(_dataset_metadata("code-dataset", owner), indent=2))
    return dest


def build_wheelhouse(out: Path, owner: str, pythons: list[str]) -> Path:
    dest = out / "wheelhouse"
    dest.mkdir(parents=True, exist_ok=True)
    pins_file = HERE / "pins.txt"
    pins = read_pins(pins_file)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    for python in pythons:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
             "--python-version", python, *platforms, "--dest", str(dest), "-r", str(pins_file)])
    failed = False
    for python in pythons:
        requires = {}
        for wheel in sorted(dest.glob("*.whl")):
            parsed = parse_wheel_filename(wheel.name)
            name, version = canonicalize_name(parsed[0]), str(parsed[1])
            if name in pins and pins[name] == version and _fits(wheel, python):
                requires[name] = wheel_requires(wheel)
        missing = sorted(set(pins) - set(requires))
        faults = inconsistencies(pins, requires, python)
        faults += [f"no wheel of {m}=={pins[m]} for Python {python}" for m in missing]
        for fault in faults:
            print(f"PIN FAULT (Python {python}): {fault}")
        failed |= bool(faults)
        left = left_to_image(pins, requires, python)
        unknown = {d: who for d, who in left.items() if d not in FROM_IMAGE}
        print(f"Python {python}: {len(requires)} pinned wheels; left to Kaggle's image: {', '.join(sorted(left))}")
        for dep, who in sorted(unknown.items()):
            print(f"WARNING (Python {python}): {dep} (needed by {', '.join(sorted(who))}) is neither pinned nor "
                  "listed in FROM_IMAGE: make sure the image has it")
    (dest / INSTALL_LIST).write_text("".join(f"{n}=={v}\n" for n, v in pins.items()))
    shutil.copy(pins_file, dest / "pins.txt")
    (dest / "dataset-metadata.json").write_text(json.dumps(_dataset_metadata("wheelhouse", owner), indent=2))
    if failed:
        raise SystemExit("the pins do not agree with each other (PIN FAULT above): fix kaggle/pins.txt")
    return dest


def build_kernel(out: Path, owner: str, competition: str | None, model_source: str | None) -> Path:
    dest = out / "kernel"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    meta = json.loads((HERE / "kernel-metadata.json").read_text())
    notebook = (HERE / meta["code_file"]).resolve()
    shutil.copy(notebook, dest / notebook.name)
    meta["code_file"] = notebook.name

    def mine(ref: str) -> str:
        return re.sub(r"^OWNER/", f"{owner}/", ref)

    meta["id"] = mine(meta["id"])
    meta["dataset_sources"] = [mine(s) for s in meta["dataset_sources"]]
    meta["model_sources"] = [mine(s) for s in ([model_source] if model_source else meta["model_sources"])]
    if competition:
        meta["competition_sources"] = [competition]
    (dest / "kernel-metadata.json").write_text(json.dumps(meta, indent=2))
    return dest


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--owner", required=True, help="your Kaggle user name (fills OWNER/ in the metadata)")
    p.add_argument("--out", type=Path, default=REPO / "dist" / "kaggle", help="output folder (default dist/kaggle)")
    p.add_argument("--python", nargs="+", default=list(PYTHONS),
                   help="Python versions of the wheelhouse (default 3.11 3.12)")
    p.add_argument("--only", choices=("code", "wheelhouse", "kernel"),
                   help="build one part (code also writes kernel)")
    p.add_argument("--competition",
                   help="competition slug for competition_sources (default from kaggle/kernel-metadata.json)")
    p.add_argument("--model-source", help="OWNER/MODEL/FRAMEWORK/VARIATION/VERSION of the attached model")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "code"):
        print(f"code dataset: {build_code(args.out, args.owner)}")
    if args.only in (None, "wheelhouse"):
        print(f"wheelhouse: {build_wheelhouse(args.out, args.owner, args.python)}")
    if args.only in (None, "code", "kernel"):
        print(f"kernel: {build_kernel(args.out, args.owner, args.competition, args.model_source)}")


if __name__ == "__main__":
    main()
