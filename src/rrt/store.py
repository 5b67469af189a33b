"""Loading and saving model directories, with provenance written beside every artifact."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from contextlib import suppress
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rrt import config as schema
from rrt.errors import UserError
from rrt.io import atomic_path, read_json, write_json
from rrt.model.families import supported

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# torch and transformers are imported where a model or tokenizer is loaded: provenance and the
# folder checks here also serve commands whose environment has neither (the report, the data).

PROVENANCE = "provenance.json"
_LIBRARIES = ("rrt", "torch", "transformers", "tokenizers", "lm_eval", "accelerate", "numpy")


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, with '+dirty' for local changes."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("+dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = metadata.version(lib.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(step: str, params: dict[str, Any]) -> dict[str, Any]:
    """What produced an artifact: the step, its resolved parameters, code and library versions."""
    return {
        "step": step,
        "params": params,
        "argv": sys.argv,
        "git_commit": git_commit(),
        "versions": versions(),
        "host": platform.node(),
        "hardware": hardware(),
    }


def hardware() -> dict[str, Any]:
    """The machine a job ran on: CPU model and cores, memory, and the GPUs torch sees."""
    cpu = platform.processor() or platform.machine()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count()}
    with suppress(ValueError, OSError, AttributeError):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    try:
        import torch
    except ImportError:  # an environment without torch (the report's) uses no GPU
        return info

    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def model_dir(path: str | os.PathLike[str]) -> Path:
    """Check that ``path`` holds a saved model, or fail with one clear line."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"no model directory at {str(path)!r}")
    if not (path / "config.json").is_file():
        raise UserError(f"{str(path)!r} holds no model: config.json not found")
    return path


def load_config(path: str | os.PathLike[str]) -> Any:
    """A config from a model directory or a config JSON file (no weights needed)."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    import rrt.model.modeling  # noqa: F401  (registers the recursive model type)

    path = Path(path)
    file = path if path.is_file() else model_dir(path) / "config.json"
    data = read_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise UserError(f"{file} names no model_type; it is not a transformers model config")
    if data["model_type"] not in CONFIG_MAPPING:
        raise UserError(
            f"{file}: model_type {data['model_type']!r} is not one this transformers knows; "
            f"rrt supports {supported()}"
        )
    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError, KeyError, TypeError) as err:
        raise UserError(f"{file} is not a valid {data['model_type']} config: {err}") from None


DEVICE = schema.node("device")  # the allowed devices and the default, from the config schema
DEVICES = tuple(DEVICE["enum"])


def resolve_device(device: str | None) -> str:
    """``cpu`` or ``cuda``; ``auto`` (or None) is the GPU when torch sees one."""
    import torch

    device = device or "auto"
    if device not in DEVICES:
        raise UserError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but torch sees no CUDA device")
    return device


def load_model(
    path: str | os.PathLike[str],
    dtype: torch.dtype | str = "fp32",
    device: str | None = DEVICE["default"],
) -> PreTrainedModel:
    """Load any model the workflow makes (source, recursive, relaxed) in ``dtype`` on ``device``.

    ``device`` auto is the GPU when there is one; ``dtype`` auto is bf16 there and fp32 on the
    CPU (training loads fp32 master weights and mixes precision itself); "bf16" and "fp32" name
    the others, as the configuration does. A truncated or corrupt
    weights file is one line naming the file.
    """
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    import rrt.model.modeling  # noqa: F401  (registers the recursive model type)

    path = model_dir(path)
    device = resolve_device(device)
    if dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype, dtype)
    load_config(path)  # a config that is not a model's is one line, before any weights
    weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
    if not weights:
        raise UserError(
            f"{path} holds a config.json but no weights (model.safetensors or pytorch_model.bin); "
            "a model folder is what save_pretrained writes"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except SafetensorError as err:
        files = sorted(p.name for p in path.glob("*.safetensors")) or ["*.safetensors"]
        raise UserError(
            f"{path / files[0]}{' (or another shard)' if len(files) > 1 else ''} is not a "
            f"readable safetensors file ({err}); it was cut short or corrupted: make it again"
        ) from None
    if device != "cpu":
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path: str | os.PathLike[str], required: bool = True) -> Any | None:
    """The tokenizer saved in ``path`` (a model or tokenizer folder). A folder without one is a
    clear error, or None when ``required`` is false."""
    path = Path(path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        if not required:
            return None
        raise UserError(
            f"{path} holds no tokenizer (tokenizer.json); make one with `rrt tokenizer`"
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A short hash of a model folder's config and its weight files' names, sizes and
    modification times: a resumed training checks that its model and teacher are the ones it
    started with, without reading gigabytes of weights."""
    import hashlib

    path = Path(path)
    parts = [(path / "config.json").read_text()]
    for weights in sorted([*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]):
        stat = weights.stat()
        parts.append(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def tokenizer_fingerprint(path: str | os.PathLike[str]) -> str:
    """A short hash of a tokenizer's vocabulary and merges: token caches key on it."""
    import hashlib

    return hashlib.sha256((Path(path) / "tokenizer.json").read_bytes()).hexdigest()[:16]


def save_model(
    model: PreTrainedModel,
    out: str | os.PathLike[str],
    prov: dict[str, Any],
    tokenizer: Any | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Save a model directory atomically: weights (safetensors), config, tokenizer, provenance."""
    if dtype is not None:
        model = model.to(dtype)
    with atomic_path(out) as tmp:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        write_json(tmp / PROVENANCE, prov)
