"""The experiment's record (``results/<experiment>/experiment.json``, written before any job
starts): its resolved config and what it makes, so the report, which reads nothing outside the
results folder, shows every configuration that failed or never ran as a gap. The Snakefile imports
it: no heavy imports."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

RECORD = "experiment.json"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON (sorted keys): equal configs, equal hashes."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_record(
    results: str | os.PathLike[str], config: dict[str, Any], expected: dict[str, list[str]]
) -> Path:
    """Write the record where it changed (its time stamp says when the config did); of
    ``expected``'s paths (models, evaluations, ...), those under ``results``, relative to it."""
    from rrt import store
    from rrt.io import write_text

    root = Path(results)
    relative = {}
    for kind, paths in expected.items():
        inside = (os.path.relpath(path, root) for path in paths)
        relative[kind] = sorted({Path(p).as_posix() for p in inside if not p.startswith("..")})
    record = {
        "experiment": config.get("experiment"),
        "config_sha256": config_hash(config),
        "config": config,
        "expected": relative,
        "workflow": {
            "git_commit": store.git_commit(),
            "versions": store.versions(),
            "hardware": store.hardware(),
        },
    }
    text = json.dumps(record, indent=2, default=str) + "\n"
    path = root / RECORD
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return path
