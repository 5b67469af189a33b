"""rrt download text: a user's text files, or a package archive pinned by sha256 (found through
a package index's JSON API, served here by a local HTTP server), as a corpus folder split by
document."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rrt.cli import main
from rrt.errors import UserError
from rrt.text_files import (
    archive_documents,
    fetch_archive,
    file_documents,
    split_documents,
    write_text_corpus,
)
from rrt.training.data import read_meta, read_texts

DOCS = {
    f"guide/{topic}.txt": f"The {topic} guide.\n\nIt says how {topic} works, in {n} words or so."
    for n, topic in enumerate(["models", "views", "forms", "admin", "testing", "caching", "urls"])
}


def _tar(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A package index serving one project, pkg 1.0, whose sdist holds docs and code; yields
    the index URL and the sdist's sha256."""
    sdist = _tar({f"pkg-1.0/docs/{n}": t for n, t in DOCS.items()} | {"pkg-1.0/pkg.py": "x = 1"})
    digest = hashlib.sha256(sdist).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            host = f"http://127.0.0.1:{self.server.server_port}"
            if self.path == "/simple/pkg/":
                files = [
                    {"filename": "pkg-1.0.tar.gz", "url": f"{host}/files/pkg-1.0.tar.gz",
                     "hashes": {"sha256": digest}},
                    {"filename": "pkg-1.0-py3-none-any.whl", "url": f"{host}/files/x.whl",
                     "hashes": {"sha256": "1" * 64}},
                ]  # fmt: skip
                body = json.dumps({"files": files}).encode()
            elif self.path == "/files/pkg-1.0.tar.gz":
                body = sdist
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/simple", digest
    finally:
        server.shutdown()


def test_files_and_folders_are_documents_named_by_path(tmp_path: Path):
    for name, text in DOCS.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "guide" / "logo.png").write_bytes(b"\x89PNG")  # not a text file: left out
    (tmp_path / "notes.data").write_text("Named by the user, so taken whatever its suffix.")
    documents = file_documents([tmp_path / "guide", tmp_path / "notes.data"])
    assert [n for n, _ in documents] == sorted(
        [str(tmp_path / n) for n in DOCS] + [str(tmp_path / "notes.data")]
    )
    assert dict(documents)[str(tmp_path / "guide/views.txt")] == DOCS["guide/views.txt"]


def test_held_out_documents_are_whole_seeded_and_stable():
    documents = sorted(DOCS.items())
    splits = split_documents(documents, validation=2, test=2, seed=0)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3, 2, 2]
    assert sorted(sum(splits.values(), [])) == documents  # every document once, whole
    assert splits == split_documents(list(reversed(documents)), 2, 2, 0)  # order does not matter
    assert split_documents(documents, 2, 2, seed=1) != splits


def test_the_corpus_folder_holds_each_split_and_drops_copies(tmp_path: Path):
    documents = [*DOCS.items(), ("copy.txt", DOCS["guide/views.txt"]), ("blank.txt", " \n")]
    meta = write_text_corpus(documents, tmp_path / "c", {"files": ["x"]},
                             validation_documents=2, test_documents=2)  # fmt: skip
    assert read_meta(tmp_path / "c")["splits"] == meta["splits"]
    texts = {s: list(read_texts(tmp_path / "c", s)) for s in ("train", "validation", "test")}
    assert sorted(sum(texts.values(), [])) == sorted(DOCS.values())
    assert sum(len(meta["splits"][s]["names"]) for s in texts) == len(DOCS)


def test_an_archive_gives_the_members_its_patterns_choose(tmp_path: Path):
    members = {"p-1/docs/a.txt": "A.", "p-1/docs/releases/1.txt": "R.", "p-1/code.py": "x"}
    (tmp_path / "p.tar.gz").write_bytes(_tar(members))
    with zipfile.ZipFile(tmp_path / "p.whl", "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    for archive in ("p.tar.gz", "p.whl"):
        chosen = archive_documents(tmp_path / archive, ["p-1/docs/*"], ["*/releases/*"])
        assert chosen == [("p-1/docs/a.txt", "A.")]
    with pytest.raises(UserError, match=r"no file of p.tar.gz matches include \['\*.md'\]"):
        archive_documents(tmp_path / "p.tar.gz", ["*.md"], [])


def test_a_package_archive_is_found_by_its_hash_and_checked(index, tmp_path: Path):
    url, digest = index
    path = fetch_archive("pkg==1.0", digest, tmp_path, index=url)
    assert path.name == "pkg-1.0.tar.gz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    with pytest.raises(UserError, match=r"no file of pkg==1\.0 .* its files: pkg-1\.0\.tar\.gz"):
        fetch_archive("pkg==1.0", "2" * 64, tmp_path, index=url)
    with pytest.raises(UserError, match="is pkg-1.0.tar.gz, not of pkg==2.0"):
        fetch_archive("pkg==2.0", digest, tmp_path, index=url)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch_archive("other==1.0", digest, tmp_path, index=url)


def test_rrt_download_text_writes_a_package_s_docs_as_a_corpus(
    index, tmp_path, monkeypatch, capsys
):
    url, digest = index
    monkeypatch.setenv("RRT_PACKAGE_INDEX", url)
    argv = ["download", "text", "--requirement", "pkg==1.0", "--sha256", digest, "--include",
            "pkg-1.0/docs/*", "--validation-documents", "2", "--test-documents", "2",
            "--out", str(tmp_path / "c"), "--mlflow-tag", "rule=import_corpus"]  # fmt: skip
    assert main(argv) == 0
    meta = read_meta(tmp_path / "c")
    assert meta["request"]["archive"] == "pkg-1.0.tar.gz"
    assert [meta["splits"][s]["documents"] for s in ("train", "validation", "test")] == [3, 2, 2]
    assert main(argv) == 0  # its own output: a rerun replaces it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    mine = [str(tmp_path / "mine") if a == str(tmp_path / "c") else a for a in argv]
    assert main(mine) == 2  # the user's folder: refused
    assert "a folder of files rrt did not write" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
