"""A loopback stand-in for the Hugging Face Hub, so the real download code runs without a network.

It serves, for the repositories it is given, exactly the endpoints that huggingface_hub 2.4
(``HfApi.repo_info``, ``snapshot_download``, ``hf_hub_download``) and datasets 5.2
(``load_dataset`` of a hub repo at a commit) were seen to call, with the headers they read:

- ``GET /api/{models|datasets}/{owner}/{name}/revision/{rev}``: repo info (``sha``, siblings);
- ``GET /api/{models|datasets}/{owner}/{name}/tree/{rev}[/{path}]``: the file listing
  (``?recursive=true`` for the whole tree below ``path``);
- ``HEAD|GET /{owner}/{name}/resolve/{rev}/{file}`` and ``/datasets/{owner}/{name}/resolve/...``:
  the file, with ``X-Repo-Commit``, ``ETag`` (the git blob id) and ``Content-Length``.

Errors carry the hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo``), which is how huggingface_hub tells them apart; any other
route is a 404. Every request is logged in :attr:`FakeHub.requests`, which is how the list
above was found.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

KINDS = {"models": "model", "datasets": "dataset"}


def git_blob_sha(data: bytes) -> str:
    """The git object id of a file, which the hub uses as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One repository at one commit; ``branches`` name that commit (``main`` by default).

    The commit is a hash of the content unless given (to serve a real pinned sha). A ``gated``
    repo shows its listing to anyone but its files only to a request with a token, as the hub
    does for google/gemma-2b.
    """

    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "model"
    branches: tuple[str, ...] = ("main",)
    commit: str = ""
    gated: bool = False

    def __post_init__(self) -> None:
        if not self.commit:
            digest = hashlib.sha1(self.repo_type.encode() + self.repo_id.encode())
            for path in sorted(self.files):
                digest.update(path.encode() + b"\0" + git_blob_sha(self.files[path]).encode())
            self.commit = digest.hexdigest()

    def resolves(self, revision: str) -> bool:
        return revision in self.branches or revision == self.commit

    def entries(self, below: str = "", recursive: bool = False) -> list[dict]:
        """Tree entries under ``below`` (files and the directories that hold them)."""
        prefix = below.strip("/") + "/" if below.strip("/") else ""
        out: dict[str, dict] = {}
        for path, data in sorted(self.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest)) + 1):
                sub = prefix + "/".join(rest[:i])
                if i == len(rest):
                    out[sub] = _file_entry(sub, data)
                else:
                    out.setdefault(sub, _dir_entry(sub))
        return list(out.values())

    def entry(self, path: str) -> dict | None:
        path = path.strip("/")
        if path in self.files:
            return _file_entry(path, self.files[path])
        if any(p.startswith(path + "/") for p in self.files):
            return _dir_entry(path)
        return None


def _file_entry(path: str, data: bytes) -> dict:
    return {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}


def _dir_entry(path: str) -> dict:
    oid = hashlib.sha1(path.encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


class FakeHub:
    """A threaded HTTP server on 127.0.0.1 serving ``repos``; use as a context manager."""

    def __init__(self, repos: list[Repo]) -> None:
        self.repos = {(r.repo_type, r.repo_id): r for r in repos}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass  # quiet: the test log is FakeHub.requests

    # --- dispatch ------------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        self.fake.requests.append((method, self.path))
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        query = parse_qs(url.query)
        if parts[0] == "api" and len(parts) >= 4 and parts[1] in KINDS:
            repo_type, repo_id, rest = KINDS[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
            self._api(repo_type, repo_id, rest, query)
        elif len(parts) >= 5 and parts[0] == "datasets" and parts[3] == "resolve":
            self._resolve(method, "dataset", f"{parts[1]}/{parts[2]}", parts[4], parts[5:])
        elif len(parts) >= 4 and parts[2] == "resolve":
            self._resolve(method, "model", f"{parts[0]}/{parts[1]}", parts[3], parts[4:])
        else:
            self._error(404, "EntryNotFound", f"no route for {url.path}")

    def _repo(self, repo_type: str, repo_id: str, revision: str) -> Repo | None:
        repo = self.fake.repos.get((repo_type, unquote(repo_id)))
        if repo is None:
            # The real hub answers 401 for a repo it cannot show (missing or private).
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        if not repo.resolves(unquote(revision)):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(revision)}")
            return None
        return repo

    # --- /api/... ------------------------------------------------------------------------------

    def _api(self, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        if len(rest) >= 2 and rest[0] == "revision":
            if (repo := self._repo(repo_type, repo_id, "/".join(rest[1:]))) is None:
                return
            self._json(_info(repo))
        elif len(rest) >= 2 and rest[0] == "tree":
            if (repo := self._repo(repo_type, repo_id, rest[1])) is None:
                return
            below = unquote("/".join(rest[2:]))
            if below and repo.entry(below) is None:
                self._error(404, "EntryNotFound", f"{below} does not exist")
                return
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            self._json(repo.entries(below, recursive))
        else:
            self._error(404, "EntryNotFound", f"no API route {'/'.join(rest)}")

    # --- /resolve/ -----------------------------------------------------------------------------

    def _resolve(
        self, method: str, repo_type: str, repo_id: str, revision: str, path: list[str]
    ) -> None:
        if (repo := self._repo(repo_type, repo_id, revision)) is None:
            return
        name = unquote("/".join(path))
        if repo.gated and not self.headers.get("Authorization"):
            self._error(401, "GatedRepo", "Access to this repo is restricted: log in to access it")
            return
        if name not in repo.files:
            self._error(404, "EntryNotFound", f"{name} does not exist on {revision}")
            return
        data = repo.files[name]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{git_blob_sha(data)}"')
        self.send_header("X-Repo-Commit", repo.commit)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    # --- responses -----------------------------------------------------------------------------

    def _json(self, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _info(repo: Repo) -> dict:
    return {
        "_id": repo.commit[:24],
        "id": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "sha": repo.commit,
        "lastModified": "2024-01-01T00:00:00.000Z",
        "createdAt": "2024-01-01T00:00:00.000Z",
        "private": False,
        "disabled": False,
        "gated": "manual" if repo.gated else False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "cardData": {},
        "siblings": [{"rfilename": p} for p in sorted(repo.files)],
    }


# --- repository contents -----------------------------------------------------------------------

# Files a real model repo has beside what from_pretrained needs; a download must skip them all.
DECOYS = {
    "pytorch_model.bin": b"a pickle that must not be fetched",
    "flax_model.msgpack": b"flax weights",
    "tf_model.h5": b"tf weights",
    "model.gguf": b"gguf weights",
    "onnx/model.onnx": b"onnx graph",
    "original/consolidated.safetensors": b"a copy in a subfolder",
    "README.md": b"# a tiny model\n",
    ".gitattributes": b"*.safetensors filter=lfs\n",
}


def tiny_model_files(root: Path) -> dict[str, bytes]:
    """A 2-layer random Llama and a word-level tokenizer, saved with save_pretrained under
    ``root``, as the files of a hub repo (plus :data:`DECOYS`)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["the", "cat", "dog", "sees", "runs", "park", "a", "in", "and"]
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return {**files, **DECOYS}


def parquet(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


LAMBADA_ROWS = [
    {"text": "the cat sees the dog in the park and the dog sees the cat"},
    {"text": "a bird flies over the river and lands by the river"},
]


def arc_rows(config: str, split: str) -> list[dict]:
    return [
        {
            "id": f"{config}-{split}-{i}",
            "question": f"Which animal says {sound}? ({split})",
            "choices": {"text": ["cat", "dog", "cow"], "label": ["A", "B", "C"]},
            "answerKey": key,
        }
        for i, (sound, key) in enumerate([("meow", "A"), ("woof", "B"), ("moo", "C")])
    ]


def paper_dataset_repos(lambada_commit: str, arc_commit: str) -> list[Repo]:
    """EleutherAI/lambada_openai and allenai/ai2_arc, small, laid out as on the hub: LAMBADA as
    JSON lines under data/ beside its old loading script, ARC as one parquet file per config and
    split, declared in the README's ``configs``."""
    lambada = {
        "README.md": b"---\npretty_name: LAMBADA OpenAI\n---\n",
        "lambada_openai.py": b"# the old loading script, which datasets >= 4 refuses to run\n",
        "data/lambada_test.jsonl": "".join(json.dumps(r) + "\n" for r in LAMBADA_ROWS).encode(),
        "data/lambada_test_de.jsonl": b'{"text": "die Katze sieht den Hund"}\n',
    }
    configs = ("ARC-Easy", "ARC-Challenge")
    card = ["---", "configs:"]
    arc = {}
    for config in configs:
        card += [f"- config_name: {config}", "  data_files:"]
        for split in ("train", "validation", "test"):
            card += [f"  - split: {split}", f"    path: {config}/{split}-*"]
            arc[f"{config}/{split}-00000-of-00001.parquet"] = parquet(arc_rows(config, split))
    arc["README.md"] = ("\n".join([*card, "---", "# AI2 ARC"]) + "\n").encode()
    return [
        Repo("EleutherAI/lambada_openai", lambada, "dataset", commit=lambada_commit),
        Repo("allenai/ai2_arc", arc, "dataset", commit=arc_commit),
    ]


# --- text datasets for `rrt download corpus` -----------------------------------------------------

_WORDS = (
    "river", "stone", "market", "lantern", "quiet", "north", "garden", "copper", "winter",
    "harbor", "signal", "meadow", "engine", "silver", "paper", "orbit",
)  # fmt: skip


def document(split: str, i: int) -> str:
    """A short web-like document, distinct per (split, i), with punctuation, a line break and a
    non-ASCII letter now and then (what JSON-lines writing must keep intact)."""
    words = [_WORDS[(i * 7 + k * 3 + len(split)) % len(_WORDS)] for k in range(6 + i % 9)]
    text = f"{split.capitalize()} note {i}: " + " ".join(words) + "."
    if i % 4 == 1:
        text += "\nSecond line, café-style."
    return text


def zstd_frame(data: bytes) -> bytes:
    """``data`` as one zstd frame of raw (stored) blocks: a valid .zst file, made without the
    zstandard package (RFC 8878: single-segment frame with a 4-byte content size)."""
    frame = struct.pack("<IBI", 0xFD2FB528, 0b1010_0000, len(data))
    size = 1 << 17  # the largest block
    blocks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    for n, block in enumerate(blocks):
        last = n == len(blocks) - 1
        frame += struct.pack("<I", int(last) | (len(block) << 3))[:3] + block
    return frame


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


# What tiny-org/tiny-pajama holds, split by split, in stream order. Its train stream repeats
# the first and the fifth validation documents (which a corpus with 2 test and 3 validation
# documents holds out) and the eighth (which it does not), and has an empty document.
PAJAMA_VALIDATION = [document("validation", i) for i in range(8)]
PAJAMA_TEST = [document("test", i) for i in range(8)]
PAJAMA_TRAIN = [
    *(document("train", i) for i in range(3)),
    PAJAMA_VALIDATION[0],
    *(document("train", i) for i in range(3, 6)),
    "   ",
    PAJAMA_VALIDATION[4],
    *(document("train", i) for i in range(6, 12)),
    PAJAMA_VALIDATION[7],
    *(document("train", i) for i in range(12, 40)),
]
# tiny-org/tiny-web has one split (train), whose texts are in field "content"; it repeats its
# second document later on.
WEB_TRAIN = [document("web", i) for i in range(12)]
WEB_TRAIN.insert(5, WEB_TRAIN[1])


def corpus_dataset_repos() -> list[Repo]:
    """Three small text datasets laid out as the corpora `rrt download corpus` reads:

    - ``tiny-org/tiny-pajama``, as DKYoon/SlimPajama-6B: parquet shards under ``data/`` named
      ``<split>-NNNNN-of-NNNNN-<hash>.parquet``, a ``meta`` column beside ``text``, train in two
      shards (the stream crosses from one to the next);
    - ``tiny-org/tiny-web``: one ``data/train.jsonl`` with its text in ``content``, no held-out
      split;
    - ``tiny-org/tiny-pajama-zst``, as cerebras/SlimPajama-627B: zstd-compressed JSON lines
      under ``{train,validation,test}/chunk1/``.
    """

    def rows(texts: list[str]) -> list[dict]:
        return [{"text": t, "meta": {"redpajama_set_name": "RedPajamaC4"}} for t in texts]

    half = len(PAJAMA_TRAIN) // 2
    pajama = {
        "README.md": b"---\nlanguage:\n- en\n---\n# tiny pajama\n",
        "data/train-00000-of-00002-1a2b3c.parquet": parquet(rows(PAJAMA_TRAIN[:half])),
        "data/train-00001-of-00002-4d5e6f.parquet": parquet(rows(PAJAMA_TRAIN[half:])),
        "data/validation-00000-of-00001-7a8b9c.parquet": parquet(rows(PAJAMA_VALIDATION)),
        "data/test-00000-of-00001-0d1e2f.parquet": parquet(rows(PAJAMA_TEST)),
        ".gitattributes": b"*.parquet filter=lfs\n",
    }
    web = {
        "README.md": b"---\nlanguage:\n- en\n---\n# tiny web\n",
        "data/train.jsonl": jsonl([{"id": i, "content": t} for i, t in enumerate(WEB_TRAIN)]),
    }
    zst = {
        "README.md": b"---\nlanguage:\n- en\n---\n# tiny pajama, zstd\n",
        "train/chunk1/example_train_0.jsonl.zst": zstd_frame(jsonl(rows(PAJAMA_TRAIN[:half]))),
        "train/chunk1/example_train_1.jsonl.zst": zstd_frame(jsonl(rows(PAJAMA_TRAIN[half:]))),
        "validation/chunk1/example_holdout_0.jsonl.zst": zstd_frame(jsonl(rows(PAJAMA_VALIDATION))),
        "test/chunk1/example_holdout_0.jsonl.zst": zstd_frame(jsonl(rows(PAJAMA_TEST))),
    }
    return [
        Repo("tiny-org/tiny-pajama", pajama, "dataset"),
        Repo("tiny-org/tiny-web", web, "dataset"),
        Repo("tiny-org/tiny-pajama-zst", zst, "dataset"),
    ]
