"""`rrt download`: models, the paper's task data and a text corpus fetched at pinned commits.

The real download code runs against a loopback server standing in for the hub
(tests/_fake_hub.py); nothing here touches the network. Offline mode, which conftest sets for
the whole session, is lifted only inside the tests that talk to that server: in this process by
patching the constants huggingface_hub read at import, in a subprocess through its environment
(HF_ENDPOINT pointing at the server).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from _fake_hub import (
    DECOYS,
    LAMBADA_ROWS,
    PAJAMA_TRAIN,
    PAJAMA_VALIDATION,
    WEB_TRAIN,
    FakeHub,
    Repo,
    arc_rows,
    corpus_dataset_repos,
    paper_dataset_repos,
    tiny_model_files,
)
from huggingface_hub import constants as hub_constants

from rrt import sources as download
from rrt.errors import UserError
from rrt.evaluation.evaluate import load_suites, load_tasks, write_paper_overrides
from rrt.io import MARKER
from rrt.sources import (
    CORPUS_REVISIONS,
    MODEL_REVISIONS,
    PAPER_SOURCES,
    download_corpus,
    download_model,
)
from rrt.training.data import read_texts

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    import torch

    torch.set_num_threads(1)
    return Repo(REPO, tiny_model_files(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture
def hub(model_repo: Repo) -> Iterator[FakeHub]:
    with FakeHub([model_repo]) as server:
        yield server


def _point_hub_at(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Let huggingface_hub, in this process, talk to ``url`` and nothing else: offline mode off,
    its endpoint (read at import) moved to ``url``, no telemetry request to the real hub."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hub_constants, "ENDPOINT", url)
    template = url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> FakeHub:
    _point_hub_at(monkeypatch, hub.url)
    return hub


def _dead_url() -> str:
    """A loopback URL on which nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _message(err: pytest.ExceptionInfo[UserError]) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --- models ----------------------------------------------------------------------------------


def test_model_downloads_at_pinned_revision_loads_and_a_second_call_is_a_no_op(
    online: FakeHub, model_repo: Repo, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models" / "tiny"
    assert download_model(REPO, model_repo.commit, out, endpoint=online.url) == out

    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not names & set(DECOYS), "fetched files from_pretrained does not need"
    assert not (out / ".cache").exists()
    assert [p.name for p in out.parent.iterdir()] == ["tiny"], "a temporary folder was left"
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["step"] == "download"
    assert prov["params"]["commit"] == model_repo.commit
    assert prov["params"]["revision"] == model_repo.commit
    assert "pytorch_model.bin" not in prov["params"]["files"]
    fetched = [path for method, path in online.requests if method == "GET" and "/resolve/" in path]
    assert fetched and all(f"/resolve/{model_repo.commit}/" in path for path in fetched)

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    ids = tokenizer("the cat sees the dog", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)

    requests, stamp = len(online.requests), (out / "model.safetensors").stat().st_mtime_ns
    assert download_model(REPO, model_repo.commit, out, endpoint=online.url) == out
    assert len(online.requests) == requests, "a complete download asked the hub again"
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_branch_revision_is_recorded_with_its_commit(
    online: FakeHub, model_repo: Repo, tmp_path: Path
) -> None:
    out = download_model(REPO, "main", tmp_path / "tiny", endpoint=online.url)
    params = json.loads((out / "provenance.json").read_text())["params"]
    assert (params["revision"], params["commit"]) == ("main", model_repo.commit)


def test_unreachable_hub_is_one_line_naming_model_and_revision_within_seconds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = _dead_url()
    _point_hub_at(monkeypatch, url)
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        download_model(REPO, "main", tmp_path / "tiny", endpoint=url)
    assert time.monotonic() - start < 10
    message = _message(err)
    assert f"model {REPO} at revision main" in message and "cannot be reached" in message
    assert not (tmp_path / "tiny").exists() and not list(tmp_path.iterdir())


def test_silent_hub_times_out_after_one_try_not_a_retry_loop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as server:  # accepts connections (kernel backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        _point_hub_at(monkeypatch, url)
        monkeypatch.setattr(hub_constants, "HF_HUB_ETAG_TIMEOUT", 1)
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            download_model(REPO, "main", tmp_path / "tiny", endpoint=url)
        assert time.monotonic() - start < 5
    assert "cannot be reached" in _message(err) and "Timeout" in _message(err)


@pytest.mark.parametrize(
    ("repo_id", "revision", "expected"),
    [
        ("tiny-org/no-such-model", "main", "no such repository"),
        (REPO, "no-such-branch", "no such revision"),
        (REPO, "0" * 40, "no such revision"),
        ("not a repo id", "main", "not a repo id"),
    ],
)
def test_unknown_repo_or_revision_is_one_clear_line(
    online: FakeHub, tmp_path: Path, repo_id: str, revision: str, expected: str
) -> None:
    with pytest.raises(UserError) as err:
        download_model(repo_id, revision, tmp_path / "m", endpoint=online.url)
    message = _message(err)
    assert f"model {repo_id} at revision {revision}" in message and expected in message
    assert not list(tmp_path.iterdir())


def test_revision_without_safetensors_is_refused_before_any_file_is_fetched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pickled = Repo("tiny-org/bin-only", {"config.json": b"{}", "pytorch_model.bin": b"pickle"})
    with FakeHub([pickled]) as server:
        _point_hub_at(monkeypatch, server.url)
        with pytest.raises(UserError, match=r"no safetensors weights.*pytorch_model\.bin"):
            download_model(pickled.repo_id, "main", tmp_path / "m", endpoint=server.url)
        assert not any("/resolve/" in path for _, path in server.requests)


def test_gated_model_without_token_says_how_to_get_access_and_loads_with_one(
    monkeypatch: pytest.MonkeyPatch, model_repo: Repo, tmp_path: Path
) -> None:
    gated = Repo("tiny-org/gated", model_repo.files, gated=True)
    with FakeHub([gated]) as server:
        _point_hub_at(monkeypatch, server.url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
        with pytest.raises(UserError) as err:
            download_model(gated.repo_id, "main", tmp_path / "m", endpoint=server.url)
        assert "is gated" in _message(err) and "HF_TOKEN" in _message(err)
        assert not (tmp_path / "m").exists()
        out = download_model(gated.repo_id, "main", tmp_path / "m", endpoint=server.url, token="t")
    assert (out / "model.safetensors").read_bytes() == model_repo.files["model.safetensors"]


def test_out_holding_something_else_is_never_replaced(
    online: FakeHub, model_repo: Repo, tmp_path: Path
) -> None:
    out = download_model(REPO, model_repo.commit, tmp_path / "tiny", endpoint=online.url)
    with pytest.raises(
        UserError, match=r"holds model tiny-org/tiny-llama at revision [0-9a-f]+, not"
    ):
        download_model(REPO, "main", out, endpoint=online.url)
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"not a download made by rrt download"):
        download_model(REPO, "main", stranger, endpoint=online.url)
    assert (stranger / "notes.txt").read_text() == "mine"


# --- the paper's data ------------------------------------------------------------------------


def _hub_env(url: str, home: Path) -> dict[str, str]:
    hub_settings = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(hub_settings)}
    env.update(
        HF_ENDPOINT=url,
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def test_paper_data_is_written_per_split_and_read_by_the_shipped_task_definitions(
    tmp_path: Path,
) -> None:
    lambada, arc = PAPER_SOURCES["lambada_openai"], PAPER_SOURCES["arc_easy"]
    data = tmp_path / "paper-data"
    code = (
        "import sys; from rrt.sources import download_paper_data; "
        "download_paper_data(sys.argv[1], ['lambada_openai', 'arc_easy'])"
    )
    with FakeHub(paper_dataset_repos(lambada.revision, arc.revision)) as server:
        run = subprocess.run(
            [sys.executable, "-c", code, str(data)],
            env=_hub_env(server.url, tmp_path / "hf-home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        requests = [path for _, path in server.requests]
    # Each repo was read at its pinned commit, LAMBADA's file without its loading script.
    lambada_file = f"lambada_openai/resolve/{lambada.revision}/data/lambada_test.jsonl"
    assert any(lambada_file in p for p in requests)
    assert not any(p.endswith("lambada_openai.py") for p in requests)
    assert any(f"ai2_arc/resolve/{arc.revision}/ARC-Easy/test-" in p for p in requests)
    assert not any("ARC-Challenge" in p and "/resolve/" in p for p in requests)

    splits = {task.name: task.splits for task in load_suites()["paper"].tasks}
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*.jsonl")) == sorted(
        f"{task}/{split}.jsonl" for task in ("lambada_openai", "arc_easy") for split in splits[task]
    )
    read = {
        path.relative_to(data).as_posix(): [json.loads(line) for line in path.open()]
        for path in data.rglob("*.jsonl")
    }
    assert read["lambada_openai/test.jsonl"] == LAMBADA_ROWS
    for split in splits["arc_easy"]:
        assert read[f"arc_easy/{split}.jsonl"] == arc_rows("ARC-Easy", split)
    prov = json.loads((data / "provenance.json").read_text())
    recorded = prov["params"]["tasks"]
    assert recorded["lambada_openai"]["commit"] == lambada.revision
    assert recorded["arc_easy"]["commit"] == arc.revision
    assert recorded["arc_easy"]["config"] == "ARC-Easy"
    assert recorded["arc_easy"]["splits"]["test"]["rows"] == 3
    hidden = [p for p in data.rglob("*") if p.name.startswith(".") and p.name != MARKER]
    assert not hidden, "temporary files left"
    # Again, here in offline mode: what is complete is not fetched again.
    stamp = (data / "arc_easy" / "test.jsonl").stat().st_mtime_ns
    again = download.download_paper_data(data, ["arc_easy", "lambada_openai"])
    assert again == recorded
    assert (data / "arc_easy" / "test.jsonl").stat().st_mtime_ns == stamp

    # lm-eval's own task definitions, pointed at these files, build their documents from them.
    overrides = tmp_path / "overrides"
    overrides.mkdir()
    covered = write_paper_overrides(data, ["lambada_openai", "arc_easy"], overrides)
    assert covered == ["lambada_openai", "arc_easy"]
    tasks = load_tasks(covered, [overrides], load_suites())
    lambada_task, arc_task = tasks["lambada_openai"], tasks["arc_easy"]
    docs = list(lambada_task.eval_docs)
    assert len(docs) == 2
    assert lambada_task.doc_to_target(docs[0]) == " cat"
    arc_docs = list(arc_task.eval_docs)
    assert len(arc_docs) == 3 and arc_task.doc_to_choice(arc_docs[1]) == ["cat", "dog", "cow"]


def test_paper_data_tasks_outside_the_suite_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        download.download_paper_data(tmp_path, ["lambada_openai", "mmlu"])
    assert "--tasks mmlu: not a task of suite paper" in _message(err)
    assert "arc_challenge" in _message(err)
    assert not list(tmp_path.iterdir())


def _shipped_task_config(relative: str) -> dict:
    """A task YAML of the installed lm-eval (its includes followed), read without lm-eval."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    spec = find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "tasks" / relative
    config = yaml.load(path.read_text(), Loader=Loader)
    if "include" in config:
        base = _shipped_task_config(str(Path(relative).parent / config.pop("include")))
        config = {**base, **config}
    return config


def test_pinned_paper_sources_are_the_datasets_lm_eval_loads() -> None:
    paper = load_suites()["paper"].tasks
    assert set(PAPER_SOURCES) == {task.name for task in paper}
    keys = {"train": "training_split", "validation": "validation_split", "test": "test_split"}
    for task in paper:
        source = PAPER_SOURCES[task.name]
        shipped = _shipped_task_config(task.lm_eval_yaml)
        assert source.repo == shipped["dataset_path"], task.name
        assert source.config == shipped.get("dataset_name"), task.name
        assert task.hub_dataset.split()[0] == source.repo, task.name
        assert re.fullmatch(r"[0-9a-f]{40}", source.revision), task.name
        assert [s for s in keys if shipped.get(keys[s])] == list(task.splits), task.name
        assert set(source.files) in (set(), set(task.splits)), task.name
    assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for sha in MODEL_REVISIONS.values())
    assert all(re.fullmatch(r"[0-9a-f]{40}", sha) for sha in CORPUS_REVISIONS.values())


# --- a text corpus ---------------------------------------------------------------------------

# Run in one subprocess against the fake hub (datasets reads HF_ENDPOINT at import): each job is
# a `rrt download` command line (argv) or a download_corpus call (kwargs); its outcome (exit
# status, meta, or the UserError's message) is written as JSON to argv[2].
_CORPUS_JOBS = """
import json, sys
from rrt.cli import main
from rrt.sources import download_corpus
from rrt.errors import UserError

done = {}
for name, job in json.loads(sys.argv[1]).items():
    try:
        if "argv" in job:
            done[name] = {"exit": main(job["argv"])}
        else:
            done[name] = {"meta": download_corpus(**job["kwargs"])}
    except UserError as err:
        done[name] = {"error": str(err)}
with open(sys.argv[2], "w") as f:
    json.dump(done, f)
"""
PAJAMA, WEB, ZST = "tiny-org/tiny-pajama", "tiny-org/tiny-web", "tiny-org/tiny-pajama-zst"
PAJAMA_ARGS = ["--repo", PAJAMA, "--revision", "main", "--tokens", "300"]
PAJAMA_ARGS += ["--validation-documents", "3", "--test-documents", "2"]
PAJAMA_REQUEST = {
    "repo": PAJAMA,
    "revision": "main",
    "train_tokens": 300,
    "validation_documents": 3,
    "test_documents": 2,
}


def _take_words(texts: list[str], words: int, skip: set[str] = frozenset()) -> list[str]:
    """The documents the corpus rule picks: non-empty, not in ``skip``, until ``words``."""
    taken: list[str] = []
    for text in texts:
        if sum(len(t.split()) for t in taken) >= words:
            break
        if text.strip() and text not in skip:
            taken.append(text)
    return taken


@pytest.fixture(scope="module")
def streamed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The corpus jobs, run once against the fake hub: their outcomes, the requests the hub
    saw, the commits of its repos, the subprocess's stderr and the folder they wrote into."""
    root = tmp_path_factory.mktemp("corpora")
    out = root / "out"
    jobs = {
        "pajama": {"argv": ["download", "corpus", *PAJAMA_ARGS, "--out", str(out / "pajama")]},
        "web": {
            "kwargs": {
                "repo": WEB,
                "revision": "main",
                "out": str(out / "web"),
                "text_field": "content",
                "train_tokens": 60,
                "validation_documents": 2,
                "test_documents": 1,
            }
        },
        "too-small": {
            "kwargs": {
                "repo": WEB,
                "revision": "main",
                "out": str(out / "too-small"),
                "text_field": "content",
                "train_tokens": 10**6,
                "validation_documents": 2,
                "test_documents": 1,
            }
        },
        "no-field": {
            "kwargs": {
                "repo": PAJAMA,
                "revision": "main",
                "out": str(out / "no-field"),
                "text_field": "body",
                "train_tokens": 10,
                "validation_documents": 1,
                "test_documents": 1,
            }
        },
        "zst": {
            "kwargs": {
                "repo": ZST,
                "revision": "main",
                "out": str(out / "zst"),
                "train_tokens": 300,
                "validation_documents": 3,
                "test_documents": 2,
            }
        },
    }
    repos = corpus_dataset_repos()
    with FakeHub(repos) as server:
        run = subprocess.run(
            [sys.executable, "-c", _CORPUS_JOBS, json.dumps(jobs), str(root / "done.json")],
            env=_hub_env(server.url, root / "hf-home"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        requests = [path for _, path in server.requests]
    return {
        "done": json.loads((root / "done.json").read_text()),
        "requests": requests,
        "commits": {repo.repo_id: repo.commit for repo in repos},
        "stderr": run.stderr,
        "out": out,
    }


def _lines(path: Path) -> list[str]:
    return list(read_texts(path.parent, path.stem))


def test_corpus_is_streamed_at_its_commit_into_splits_that_training_reads(
    streamed: dict, tmp_path: Path
) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from rrt.stories.tokenizer import TokenizerConfig, build_tokenizer
    from rrt.training.trainer import token_file

    assert streamed["done"]["pajama"] == {"exit": 0}
    out, commit = streamed["out"] / "pajama", streamed["commits"][PAJAMA]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "rrt.sources" and meta["commit"] == commit
    assert meta["request"] == {
        **PAJAMA_REQUEST,
        "config": None,
        "text_field": "text",
        "split": "train",
        "validation_split": None,
    }
    assert meta["held_out_from"] == "split validation"
    # Held out: the dataset's first validation documents, test first; train: the train stream
    # until 300 words, without the empty document and the held-out ones.
    texts = {split: _lines(out / f"{split}.jsonl") for split in ("train", "validation", "test")}
    assert texts["test"] == PAJAMA_VALIDATION[:2]
    assert texts["validation"] == PAJAMA_VALIDATION[2:5]
    held_out = set(PAJAMA_VALIDATION[:5])
    assert texts["train"] == _take_words(PAJAMA_TRAIN, 300, skip=held_out)
    assert PAJAMA_VALIDATION[7] in texts["train"], "a document not held out was dropped"
    assert len(texts["train"]) > len(PAJAMA_TRAIN) // 2, "the stream did not cross shards"
    assert not held_out & set(texts["train"])
    for split, split_texts in texts.items():
        data = (out / f"{split}.jsonl").read_bytes()
        recorded = meta["splits"][split]
        assert recorded["sha256"] == hashlib.sha256(data).hexdigest(), split
        assert recorded["bytes"] == len(data), split
        assert recorded["documents"] == len(split_texts), split
        assert recorded["word_tokens"] == sum(len(t.split()) for t in split_texts), split
    assert meta["splits"]["train"]["word_tokens"] >= 300
    assert meta["splits"]["train"]["duplicates_skipped"] == 2
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["step"] == "download corpus" and prov["params"]["commit"] == commit
    hidden = [p for p in streamed["out"].iterdir() if p.name.startswith(".") and p.name != MARKER]
    assert not hidden, "temp left"
    fetched = [p for p in streamed["requests"] if "tiny-pajama/resolve/" in p]
    assert fetched and all(f"/resolve/{commit}/" in p for p in fetched)
    assert not any("test-00000" in p for p in fetched), "read a split it did not need"
    assert "words" in streamed["stderr"], "no progress bar on stderr"

    # Training's reader takes it: token_file tokenizes every document.
    tokenizer = build_tokenizer(out, tmp_path / "tokenizer", TokenizerConfig(vocab_size=300))
    tokens = np.load(token_file(out, tokenizer, "train", tmp_path / "cache"))
    bos = AutoTokenizer.from_pretrained(tokenizer).bos_token_id
    assert int((tokens == bos).sum()) == meta["splits"]["train"]["documents"]
    assert len(tokens) > meta["splits"]["train"]["word_tokens"]


def test_second_call_for_the_same_request_is_a_no_op_without_the_hub(
    streamed: dict, tmp_path: Path
) -> None:
    out = tmp_path / "pajama"
    shutil.copytree(streamed["out"] / "pajama", out)
    (out / "tokens-train-0123456789abcdef.npy").write_bytes(b"a token cache training wrote")
    stamp = (out / "train.jsonl").stat().st_mtime_ns
    assert hub_constants.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1: any hub call fails"
    meta = download_corpus(**PAJAMA_REQUEST, out=out)
    assert meta == json.loads((out / "meta.json").read_text())
    assert (out / "train.jsonl").stat().st_mtime_ns == stamp
    assert (out / "tokens-train-0123456789abcdef.npy").exists()


def test_a_different_request_into_a_corpus_folder_is_refused_in_one_line(
    streamed: dict,
) -> None:
    out = streamed["out"] / "pajama"
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(UserError) as err:
        download_corpus(**{**PAJAMA_REQUEST, "train_tokens": 400}, out=out)
    message = _message(err)
    assert f"--out {out} holds another corpus download" in message
    assert "train_tokens 300 (asked: 400)" in message
    with pytest.raises(UserError) as err:
        download_corpus(**{**PAJAMA_REQUEST, "revision": "v2"}, out=out)
    assert "revision 'main' (asked: 'v2')" in _message(err)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_a_folder_that_is_no_corpus_download_is_refused_and_kept(tmp_path: Path) -> None:
    from rrt.stories.corpus import CorpusConfig, write_corpus

    embedded = tmp_path / "embedded"
    write_corpus(embedded, CorpusConfig(tokens=200, validation_documents=2, test_documents=2))
    with pytest.raises(UserError) as err:
        download_corpus(**PAJAMA_REQUEST, out=embedded)
    assert "is not a corpus made by rrt download corpus" in _message(err)
    assert json.loads((embedded / "meta.json").read_text())["generator"] == "rrt.stories.corpus"


def test_without_a_validation_split_the_stream_head_is_held_out_and_never_repeated_in_train(
    streamed: dict,
) -> None:
    meta = streamed["done"]["web"]["meta"]
    out = streamed["out"] / "web"
    assert meta["held_out_from"] == "the first documents of split train"
    assert _lines(out / "test.jsonl") == WEB_TRAIN[:1]
    assert _lines(out / "validation.jsonl") == WEB_TRAIN[1:3]
    train = _lines(out / "train.jsonl")
    assert train == _take_words(WEB_TRAIN[3:], 60, skip=set(WEB_TRAIN[:3]))
    assert WEB_TRAIN[1] not in train and meta["splits"]["train"]["duplicates_skipped"] == 1


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("too-small", "split train ran out after"),
        ("no-field", "has no field 'body' (it has text, meta)"),
    ],
)
def test_a_request_the_dataset_cannot_meet_is_one_line_and_writes_nothing(
    streamed: dict, job: str, expected: str
) -> None:
    message = streamed["done"][job]["error"]
    assert "\n" not in message and expected in message, message
    assert message.startswith("cannot download corpus tiny-org/")
    assert not (streamed["out"] / job).exists()


@pytest.mark.skipif(find_spec("zstandard") is not None, reason="zstandard is installed")
def test_zstd_corpus_without_zstandard_says_what_to_install_in_one_line(streamed: dict) -> None:
    message = streamed["done"]["zst"]["error"]
    assert "\n" not in message and f"corpus {ZST} at revision main" in message
    assert "pip install zstandard" in message
    assert not (streamed["out"] / "zst").exists()


@pytest.mark.skipif(find_spec("zstandard") is None, reason="needs zstandard")
def test_zstd_corpus_laid_out_as_slimpajama_627b_streams_like_the_parquet_one(
    streamed: dict,
) -> None:
    out, parquet_out = streamed["out"] / "zst", streamed["out"] / "pajama"
    for split in ("train", "validation", "test"):
        assert _lines(out / f"{split}.jsonl") == _lines(parquet_out / f"{split}.jsonl"), split


def test_unreachable_hub_is_one_line_naming_corpus_and_revision(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _point_hub_at(monkeypatch, _dead_url())
    start = time.monotonic()
    with pytest.raises(UserError) as err:
        download_corpus(**PAJAMA_REQUEST, out=tmp_path / "corpus")
    assert time.monotonic() - start < 10
    message = _message(err)
    assert f"corpus {PAJAMA} at revision main" in message and "cannot be reached" in message
    assert not list(tmp_path.iterdir())


# --- the command line ------------------------------------------------------------------------


@pytest.fixture
def cli():
    """rrt's own main(), which registers `download`."""
    from rrt import cli as rrt_cli

    return rrt_cli.main


def test_cli_failure_prints_one_line_and_exits_2(
    cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _point_hub_at(monkeypatch, _dead_url())
    argv = ["download", "model", "--repo", REPO, "--revision", "v1", "--out", str(tmp_path / "m")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rrt download: error: cannot download model")
    assert f"{REPO} at revision v1" in err

    assert cli(["download", "model", "--repo", "someone/else", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--revision is required for someone/else" in err

    assert cli(["download", "paper-data", "--out", str(tmp_path), "--tasks", "piqa,nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--tasks nope: not a task of suite paper" in err

    argv = ["download", "corpus", "--repo", "someone/text", "--tokens", "10"]
    argv += ["--validation-documents", "1", "--test-documents", "1", "--out", str(tmp_path / "c")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--revision is required for someone/text" in err
    assert "DKYoon/SlimPajama-6B" in err


def test_cli_in_offline_mode_says_so_in_one_line(
    cli, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert hub_constants.HF_HUB_OFFLINE, "conftest sets HF_HUB_OFFLINE=1 for the session"
    argv = ["download", "model", "--repo", "EleutherAI/pythia-1b", "--out", str(tmp_path / "m")]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "HF_HUB_OFFLINE is set" in err
    assert f"at revision {MODEL_REVISIONS['EleutherAI/pythia-1b']}" in err


def test_cli_downloads_a_model_and_prints_its_commit(
    cli, online: FakeHub, model_repo: Repo, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["download", "model", "--repo", REPO, "--revision", "main", "--out", str(tmp_path / "m")]
    assert cli(argv) == 0
    assert f"(commit {model_repo.commit})" in capsys.readouterr().out
    assert (tmp_path / "m" / "model.safetensors").is_file()
