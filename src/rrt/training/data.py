"""A corpus folder: the train, validation and test splits as JSONL (``{"text": ...}`` per line)
with a ``meta.json`` that records each split's documents and sha256.

Why a format of its own: training reads any corpus the same way, whether the embedded default
generated it (:mod:`rrt.stories.corpus`) or it came from elsewhere, and token caches key on the
splits' hashes, so a changed corpus never reuses stale tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from rrt.errors import UserError

SPLITS = ("train", "validation", "test")


def read_meta(corpus: str | Path) -> dict:
    """The corpus's meta.json, with a clear error when ``corpus`` is not a corpus folder."""
    path = Path(corpus) / "meta.json"
    if not path.is_file():
        raise UserError(
            f"{corpus} is not a corpus folder (no meta.json); write one with `rrt corpus`"
        )
    return json.loads(path.read_text())


def read_texts(corpus: str | Path, split: str) -> Iterator[str]:
    """The documents of one split, in file order."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    with open(Path(corpus) / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]
