"""Build the GPU kit: what a GPU machine with torch but none of our pins needs to run
scripts/gpu_check.py, in one folder under 64 MiB (what a lent machine carries).

The kit holds the committed rrt as a wheel (``pip wheel --no-deps`` of ``git archive HEAD``), the
wheels of every distribution the checks import apart from torch and what comes with it, at this
environment's versions (transformers 5.23 and the huggingface_hub, tokenizers, safetensors,
accelerate and jsonschema it runs with, and their own requirements), built for the GPU machine's
Python (3.12, manylinux), the committed scripts/gpu_check.py, and ``run.sh``, the one step to run
there from the folder holding the kit:

    bash .gpu-kit/run.sh OUT [gpu_check.py options]

run.sh installs the wheels into a fresh folder in /tmp (no index, no dependencies), puts it first
on PYTHONPATH and runs the checks with their log in OUT/log.txt. Commit first: the kit is HEAD.
numpy and psutil are the machine's own (binary, and there beside its torch).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path

from packaging.requirements import Requirement

from rrt.errors import UserError
from rrt.io import atomic_path, check_output, overwriting

# What the checks import (rrt.config needs jsonschema); each with its own requirements.
ROOTS = ("transformers", "tokenizers", "safetensors", "accelerate", "huggingface_hub",
         "jsonschema", "pyyaml", "tqdm")  # fmt: skip
# The GPU machine's own: torch with what it brings, and numpy and psutil beside it.
THEIRS = {"torch", "numpy", "psutil", "triton", "sympy", "mpmath", "networkx", "jinja2",
          "markupsafe", "setuptools"}  # fmt: skip
LIMIT_MIB = 64
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")

RUN_SH = """#!/usr/bin/env bash
# The GPU kit in one step, from the folder holding it: bash {kit}/run.sh OUT [gpu_check.py options]
# (built by scripts/gpu_bundle.py from commit {commit}).
set -euo pipefail
kit=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
out=${{1:?usage: bash run.sh OUT [gpu_check.py options]}}; shift
site=$(mktemp -d /tmp/gpu-kit-site.XXXXXX)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" \\
  "$kit"/wheels/*.whl
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
python3 "$kit/gpu_check.py" --out "$out" "$@" 2>&1 | tee "$out/log.txt"
"""


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def requirements(python_version: str) -> dict[str, str]:
    """The distributions the checks need that the GPU machine may lack, at this environment's
    versions: the roots and their requirements (markers evaluated for that machine)."""
    marker_env = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "extra": "",
    }
    wanted: dict[str, str] = {}
    todo = [_name(root) for root in ROOTS]
    while todo:
        name = todo.pop()
        if name in wanted or name in THEIRS:
            continue
        wanted[name] = metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(marker_env):
                todo.append(_name(requirement.name))
    return dict(sorted(wanted.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(".gpu-kit"), help="the kit's folder")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    p.add_argument(
        "--overwrite", action="store_true", help="replace --out even if rrt did not write it"
    )
    args = p.parse_args(argv)
    root = Path(subprocess.check_output(["git", "rev-parse", "--show-toplevel"], text=True).strip())
    commit = subprocess.check_output(["git", "-C", root, "rev-parse", "HEAD"], text=True).strip()
    kit = args.out if args.out.is_absolute() else root / args.out
    try:  # an --out of someone else's files is refused before any work, never deleted
        check_output(kit, overwrite=args.overwrite)
    except UserError as err:
        print(f"gpu_bundle: error: {err}", file=sys.stderr)
        return 2
    if kit.resolve().parent == root.resolve():  # keep it out of git's view, as .device/ is
        git_path = ["git", "-C", root, "rev-parse", "--git-path", "info/exclude"]
        exclude = root / subprocess.check_output(git_path, text=True).strip()
        exclude.parent.mkdir(parents=True, exist_ok=True)
        line = f"/{kit.name}/"
        if not exclude.is_file() or line not in exclude.read_text().splitlines():
            with open(exclude, "a") as f:
                f.write(line + "\n")
    with overwriting(kit) if args.overwrite else nullcontext(), atomic_path(kit) as tmp_kit:
        _build(tmp_kit, root, commit, args.python_version, kit.name)
    size = sum(f.stat().st_size for f in kit.rglob("*") if f.is_file())
    count = len(list((kit / "wheels").glob("*.whl")))
    print(f"{kit}: {count} wheels, {size / 2**20:.1f} MiB (commit {commit[:10]})")
    if size > LIMIT_MIB * 2**20:
        print(f"the kit is over {LIMIT_MIB} MiB: a lent machine carries no more", file=sys.stderr)
        return 1
    return 0


def _build(kit: Path, root: Path, commit: str, python_version: str, name: str) -> None:
    """The kit's files in ``kit`` (a fresh folder that becomes the kit, named ``name``)."""
    wheels = kit / "wheels"
    wheels.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", root, "archive", "HEAD"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, tmp],
                       check=True)  # fmt: skip
        shutil.copy(Path(tmp) / "scripts" / "gpu_check.py", kit / "gpu_check.py")
    specs = [f"{dist}=={version}" for dist, version in requirements(python_version).items()]
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", python_version, *platforms, "-d", wheels, *specs],
        check=True,
    )  # fmt: skip
    (kit / "run.sh").write_text(RUN_SH.format(kit=name, commit=commit))
    (kit / "COMMIT").write_text(commit + "\n")


if __name__ == "__main__":
    sys.exit(main())
