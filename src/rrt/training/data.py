"""A corpus folder: the train, validation and test splits as JSONL (``{"text": ...}`` per line)
with a ``meta.json`` that records each split's documents and sha256.

Why a format of its own: training reads any corpus the same way, whether the embedded default
generated it (:mod:`rrt.stories.corpus`) or it came from elsewhere, and token caches key on the
splits' hashes, so a changed corpus never reuses stale tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rrt.errors import UserError
from rrt.io import read_json, read_jsonl

SPLITS = ("train", "validation", "test")


def read_meta(corpus: str | Path) -> dict:
    """The corpus's meta.json, with a clear error when ``corpus`` is not a corpus folder."""
    path = Path(corpus) / "meta.json"
    if not path.is_file():
        raise UserError(
            f"{corpus} is not a corpus folder (no meta.json); write one with `rrt corpus`"
        )
    meta = read_json(path)
    splits = meta.get("splits") if isinstance(meta, dict) else None
    if not isinstance(splits, dict) or not set(SPLITS) <= set(splits):
        raise UserError(f"{path} does not list the splits {', '.join(SPLITS)}")
    return meta


def read_texts(corpus: str | Path, split: str) -> Iterator[str]:
    """The documents of one split, in file order; a line that is not a JSON object with a
    ``text`` string is one line naming the file and the line."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(corpus) / f"{split}.jsonl"
    if not path.is_file():
        raise UserError(f"{corpus} has no {split}.jsonl (a corpus folder has {', '.join(SPLITS)})")
    for number, row in read_jsonl(path):
        if not isinstance(text := row.get("text"), str):
            raise UserError(f'{path}: line {number} has no "text" string')
        yield text


def write_split(
    what: str,
    folder: Path,
    name: str,
    texts: Iterator[str],
    source: str,
    seen: set[bytes],
    *,
    documents: int | None = None,
    words: int | None = None,
    bar: Any = None,
) -> dict[str, Any]:
    """Write ``folder/<name>.jsonl``, one ``{"text": ...}`` line per text, until ``documents``
    documents (a held-out split, whose texts join ``seen``) or ``words`` words; texts already
    in ``seen`` are skipped. Return the split's entry of meta.json."""
    digest = hashlib.sha256()
    count = total = size = skipped = 0
    with open(folder / f"{name}.jsonl", "wb") as f:
        while (documents is None or count < documents) and (words is None or total < words):
            text = next(texts, None)
            if text is None:
                wanted = f"{documents} documents" if documents is not None else f"{words} words"
                raise UserError(
                    f"cannot download {what}: {source} ran out after {count} documents "
                    f"({total} words) for {name}, which asks for {wanted}; ask for less"
                )
            text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
            key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if key in seen:
                skipped += 1
                continue
            if documents is not None:
                seen.add(key)
            line = (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode("utf-8")
            f.write(line)
            digest.update(line)
            n = len(text.split())
            count, total, size = count + 1, total + n, size + len(line)
            if bar is not None:
                bar.update(n)
    return {
        "documents": count,
        "word_tokens": total,
        "sha256": digest.hexdigest(),
        "bytes": size,
        "duplicates_skipped": skipped,
    }
