"""Fetch, where the hub is reachable, what the compute nodes cannot: models and the paper's data.

Compute nodes have no internet. This step runs on a machine that has it and writes plain local
folders that every later step reads without a network: a model directory that
``from_pretrained`` loads (the workflow's ``source`` step), ``DIR/<task>/<split>.jsonl``
that ``rrt evaluate --paper-data DIR`` points lm-eval's own task definitions at (paper app. E),
and a corpus folder (:mod:`rrt.training.data`) streamed from a hub text dataset such as
SlimPajama, the paper's uptraining data, for ``rrt uptrain``.

Everything is pinned to a commit and the commit is written to ``provenance.json``. Outputs are
written atomically (a temporary folder or file beside the output, then a rename), so a killed
download never leaves a half folder that looks done; a complete output is left as it is. A hub
that cannot be reached, a repository or revision that does not exist, all end in one
:class:`~rrt.errors.UserError` line naming what was asked for. The revision is resolved with one
request, without retries, before any file is fetched; its answer is awaited at most
``HF_HUB_ETAG_TIMEOUT`` seconds (huggingface_hub's own setting, 10 s unless set), so a hub that
cannot be reached fails in seconds instead of going through huggingface_hub's retry loop.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors

from rrt import config as schema
from rrt.errors import UserError
from rrt.file_sources import read_header
from rrt.io import MARKER, atomic_path, sha256_of, write_json
from rrt.store import PROVENANCE, provenance, save_model
from rrt.training.data import write_split

# --- what is pinned --------------------------------------------------------------------------

# The paper's three source models (sec. 4), each at a full commit sha of its hub repo; `rrt
# download model --repo ID` uses these unless --revision says otherwise. Where each comes from:
MODEL_REVISIONS: dict[str, str] = {
    # NVIDIA's Megatron-Bridge pins it (NVIDIA-NeMo/Megatron-Bridge, file
    # src/megatron/bridge/recipes/gemma/h100/gemma_text.py, gemma_2b_pretrain_1gpu_h100_bf16_config)
    # as do other public projects. The repo is gated: accept Google's terms on its hub page and
    # set HF_TOKEN.
    "google/gemma-2b": "9cf48e52b224239de00d483ec8eb84fb8d0f3a3a",
    # The only snapshot of this repo in public code (Hugging Face cache paths
    # models--TinyLlama--TinyLlama-1.1B-intermediate-step-1431k-3T/snapshots/<sha> in several
    # projects); public code fetches a single model.safetensors from the repo's main.
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": (
        "036fa4651240b9a1487f709833b9e4b96b4c1574"
    ),
    # main of EleutherAI/pythia-1b, which holds the final checkpoint (the step143000 branch's
    # weights, per the Pythia model card) and a model.safetensors; public code pins this sha
    # as main's and fetches "*.safetensors" at it. The step* branches are not used: they may
    # hold only pytorch_model.bin, which this step does not fetch.
    "EleutherAI/pythia-1b": "f73d7dcc545c8bd326d8559c8ef84ffe92fea6b2",
}

# What from_pretrained needs, at the top of the repo: config, safetensors weights (one file or
# shards with their index) and tokenizer files. No .bin/.pth pickles, no onnx/flax/tf/gguf.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
SUBFOLDERS = "*/*"  # ignored: from_pretrained reads the top level only


@dataclass(frozen=True)
class PaperSource:
    """Where a paper task's rows come from: the hub dataset of lm-eval's task YAML, at a commit.

    ``config`` is lm-eval's ``dataset_name``. The rows are read with ``datasets.load_dataset``,
    as lm-eval does, unless ``files`` names the repo file of each split (JSON lines), for a
    revision whose own loader ``datasets`` >= 4 no longer runs (a loading script).
    """

    repo: str
    revision: str
    config: str | None = None
    files: dict[str, str] = field(default_factory=dict)


# One row per task of suite `paper` (evaluation/suites.yaml); repo and config are those of the
# task's YAML in lm-eval 0.4.13 (tests/test_sources.py checks this). Each revision is a full
# commit sha found pinned in public code. For all but LAMBADA, `datasets` caches seen in public
# code name that commit under cache version 0.0.0 (<owner>___<name>/<config>/0.0.0/<sha>), which
# `datasets` uses for plain data files, not for a loading script: those load with datasets >= 4.
_ARC = "210d026faf9955653af8916fad021475a3f00453"  # ARC-Easy and ARC-Challenge: one repo
PAPER_SOURCES: dict[str, PaperSource] = {
    # A dataset lock of one public project (repository, revision, file, size, sha256) and a
    # download recipe of another pin this commit and this file: 1,819,752 bytes, sha256
    # 4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226, OpenAI's LAMBADA test
    # split, which is the repo's "default" config (the dataset card gives that config this
    # download size). It is read directly: whether this commit still holds the repo's old
    # loading script, which datasets >= 4 refuses, is not known.
    "lambada_openai": PaperSource(
        "EleutherAI/lambada_openai",
        "900124bf3b8235c6daf21033af9948b3f07346c4",
        "default",
        files={"test": "data/lambada_test.jsonl"},
    ),
    # hellaswag, piqa, arc_* and openbookqa: a public dataset lock made with lm_eval 0.4.12 and
    # datasets 4.8.5 (builder parquet, cache version 0.0.0) records these four commits; others pin
    # them too (hf_revision of lighteval task configs for openbookqa, dataset tables for the rest).
    "hellaswag": PaperSource("Rowan/hellaswag", "218ec52e09a7e7462a5400043bb9a69a41d06b76"),
    "piqa": PaperSource("baber/piqa", "142f6d7367fd9877f0fb3b5734ea6a545f54cdd1"),
    # Pinned by inspect_evals replay cases and dataset tables of several projects; public code
    # fetches winogrande_xl/train-00000-of-00001.parquet at it.
    "winogrande": PaperSource(
        "allenai/winogrande", "01e74176c63542e6b0bcb004dcdea22d94fb67b5", "winogrande_xl"
    ),
    "arc_easy": PaperSource("allenai/ai2_arc", _ARC, "ARC-Easy"),
    "arc_challenge": PaperSource("allenai/ai2_arc", _ARC, "ARC-Challenge"),
    "openbookqa": PaperSource(
        "allenai/openbookqa", "388097ea7776314e93a529163e0fea805b8a6454", "main"
    ),
}

# Text datasets for `rrt download corpus --repo ID`, each at a full commit sha of its hub repo
# (used unless --revision says otherwise). The paper uptrains on SlimPajama (15B or 60B tokens).
CORPUS_REVISIONS: dict[str, str] = {
    # The paper's corpus: 59,166 zstd-compressed JSON-lines files (its card) in chunk*/ folders
    # under train/ (chunk1..chunk10), validation/ and test/, no loading script. `datasets`
    # streams it, but only with the `zstandard` package installed (rrt does not depend on it;
    # without it this step says so in one line). The sha is the snapshot that Hugging Face
    # cache paths in several public projects name (datasets--cerebras--SlimPajama-627B/
    # snapshots/<sha>/{validation,test}/chunk1/...), the README's last change on main, and what
    # Marin's download steps pin (as its prefix 2d0accd).
    "cerebras/SlimPajama-627B": "2d0accdd58c5d5511943ca1f5ff0e3eb5e293543",
    # The practical choice: a ~6B-token sample of SlimPajama-627B (the hub's viewer counts 5.49M
    # train, 9.35k validation and 9.35k test rows) as parquet files under data/, which stream
    # with what rrt already depends on. It is too small for the paper's 15B tokens. Public code
    # pins this full sha and fetches data/train-*.parquet at it; `datasets` caches name it
    # under the parquet builder's cache version 0.0.0 (DKYoon___slim_pajama-6_b/default/0.0.0/
    # <sha>), and Hugging Face cache paths show data/ at this snapshot.
    "DKYoon/SlimPajama-6B": "b5f90f419b7489cdba26fdbc8c022fcb5562f968",
}


def pinned_revision(repo: str, revision: str | None, pinned: dict[str, str]) -> str:
    """``revision``, else the one ``pinned`` (:data:`MODEL_REVISIONS`, :data:`CORPUS_REVISIONS`)
    holds for ``repo``: a download is of a named commit, never of whatever the hub's main is."""
    resolved = revision or pinned.get(repo)
    if resolved is None:
        raise UserError(
            f"--revision is required for {repo} (pinned revisions are known only for "
            f"{', '.join(pinned)})"
        )
    return resolved


# --- models ----------------------------------------------------------------------------------


def download_model(
    repo_id: str,
    revision: str,
    out: str | Path,
    *,
    endpoint: str | None = None,
    token: str | None = None,
) -> Path:
    """Fetch a causal LM repo at ``revision`` into ``out`` (safetensors, config, tokenizer).

    The revision is resolved to its commit first (one request, fast failure); the files are
    then fetched at that commit into a temporary folder beside ``out`` and renamed into place
    with ``provenance.json`` holding the commit. An ``out`` already holding this repo and
    revision is left as it is, without asking the hub. ``endpoint`` defaults to
    ``HF_ENDPOINT``; ``token`` to ``HF_TOKEN`` or the saved login.
    """
    out = Path(out)
    what = f"model {repo_id} at revision {revision}"
    if _model_is_complete(out, repo_id, revision):
        return out
    api = HfApi(endpoint=endpoint, token=token, library_name="rrt")
    with _hub_errors(what, api.endpoint):
        info = api.repo_info(repo_id, revision=revision, timeout=_timeout())
    commit = info.sha
    present = sorted(s.rfilename for s in info.siblings or [])
    if not any(f.endswith(".safetensors") and "/" not in f for f in present):
        raise UserError(
            f"cannot download {what}: it has no safetensors weights at commit {commit} "
            f"(files: {', '.join(present) or 'none'}); only safetensors are fetched, so pick a "
            "revision that has them"
        )
    with atomic_path(out) as tmp, _hub_errors(what, api.endpoint):
        snapshot_download(
            repo_id,
            revision=commit,
            local_dir=tmp,
            allow_patterns=list(MODEL_FILES),
            ignore_patterns=[SUBFOLDERS],
            endpoint=endpoint,
            token=token,
            etag_timeout=_timeout(),
            library_name="rrt",
        )
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
        if not (tmp / "config.json").is_file():
            raise UserError(f"cannot download {what}: the repo has no config.json at {commit}")
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        params = {
            "repo_id": repo_id,
            "revision": revision,
            "commit": commit,
            "endpoint": api.endpoint,
            "files": files,
        }
        write_json(tmp / PROVENANCE, provenance("download", params))
    return out


def _model_is_complete(out: Path, repo_id: str, revision: str) -> bool:
    """Whether ``out`` already holds this download; an ``out`` holding anything else is an error
    (it is never replaced silently)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        recorded = json.loads((out / PROVENANCE).read_text())
        params = recorded["params"] if recorded["step"] == "download" else {}
    except (OSError, ValueError, KeyError, TypeError):
        params = {}
    if not isinstance(params, dict) or "repo_id" not in params:
        raise UserError(
            f"--out {out} exists and is not a download made by rrt download (its {PROVENANCE} "
            "says otherwise or is missing); remove it or choose another --out"
        )
    if (params.get("repo_id"), params.get("revision")) != (repo_id, revision):
        raise UserError(
            f"--out {out} holds model {params.get('repo_id')} at revision "
            f"{params.get('revision')}, not {repo_id} at {revision}; remove it or choose another "
            "--out"
        )
    files = params.get("files") or {}
    return all(
        (out / name).is_file() and (out / name).stat().st_size == size
        for name, size in files.items()
    )


# --- GGUF files ------------------------------------------------------------------------------


def import_gguf(path: str | Path, out: str | Path, origin: dict[str, Any] | None = None) -> dict:
    """The GGUF file at ``path`` as a model folder ``out`` (fp32 safetensors, its tokenizer,
    provenance with the file's sha256 and quantisation); what provenance records."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    header = read_header(path)
    kwargs = {"gguf_file": path.name}
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantised on load: the saved model is plain fp32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    record = {
        "file": str(path.resolve()),
        "sha256": sha256_of(path),
        "gguf": header,
        **(origin or {}),
    }
    save_model(model, out, provenance("import gguf", record), tokenizer=tokenizer)
    return record


# --- the paper's task data -------------------------------------------------------------------


def download_paper_data(
    out: str | Path, tasks: Sequence[str] | None = None, *, token: str | None = None
) -> dict[str, dict[str, Any]]:
    """Write the rows of the paper's tasks as ``out/<task>/<split>.jsonl`` (all when ``tasks``
    is None), in the schema of the hub dataset that lm-eval's task YAML loads, for
    ``rrt evaluate --paper-data out``; return what ``out/provenance.json`` records per task.

    Each file is written atomically. A task whose files are all there and whose recorded source
    is the pinned one is not fetched again.
    """
    from rrt.evaluation.suites import load_suites

    paper = {t.name: t for t in load_suites()["paper"].tasks}
    tasks = list(paper) if tasks is None else list(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in paper]
    if unknown or not tasks:
        raise UserError(
            f"--tasks {','.join(unknown) or '(none)'}: not a task of suite paper; choose among "
            f"{', '.join(paper)}"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    record_path = out / PROVENANCE
    recorded = _read_recorded_tasks(record_path)
    api = HfApi(token=token, library_name="rrt")
    for name in tasks:
        source = PAPER_SOURCES[name]
        splits = paper[name].splits
        wanted = {"repo": source.repo, "config": source.config, "revision": source.revision}
        done = recorded.get(name, {})
        if {k: done.get(k) for k in wanted} == wanted and all(
            (out / name / f"{s}.jsonl").is_file() for s in splits
        ):
            continue
        recorded[name] = _download_task(api, name, source, splits, out / name)
        write_json(record_path, provenance("download paper-data", {"tasks": recorded}))
        (out / MARKER).write_text("written by rrt: a rerun of its command may replace it\n")
    return recorded


def _read_recorded_tasks(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text())["params"]["tasks"])
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a provenance file of rrt download paper-data") from None


def _download_task(
    api: HfApi, name: str, source: PaperSource, splits: Sequence[str], out: Path
) -> dict[str, Any]:
    """Fetch one task's splits at its pinned commit and write them; return their record."""
    what = f"paper data for {name} (dataset {source.repo}"
    what += f" config {source.config}" if source.config and not source.files else ""
    what += f" at revision {source.revision})"
    with _hub_errors(what, api.endpoint):
        commit = api.repo_info(
            source.repo, repo_type="dataset", revision=source.revision, timeout=_timeout()
        ).sha
    if source.files:
        rows = {split: _read_hub_jsonl(api, what, source, commit, split) for split in splits}
    else:
        rows = _load_with_datasets(what, source, commit, splits, api.token)
    written = {}
    for split, split_rows in rows.items():
        path = out / f"{split}.jsonl"
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in split_rows)
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        written[split] = {"rows": len(split_rows), "sha256": digest}
    return {**asdict(source), "commit": commit, "splits": written}


def _read_hub_jsonl(
    api: HfApi, what: str, source: PaperSource, commit: str, split: str
) -> list[dict[str, Any]]:
    if split not in source.files:
        raise UserError(f"cannot download {what}: no file is known for its {split} split")
    with _hub_errors(what, api.endpoint):
        local = hf_hub_download(
            source.repo,
            source.files[split],
            repo_type="dataset",
            revision=commit,
            endpoint=api.endpoint,
            token=api.token,
            etag_timeout=_timeout(),
            library_name="rrt",
        )
    rows = []
    with open(local, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    raise UserError(
                        f"cannot read {what}: {source.files[split]} line {number} is not JSON"
                    ) from None
    return rows


def _load_with_datasets(
    what: str, source: PaperSource, commit: str, splits: Sequence[str], token: str | None
) -> dict[str, list[dict[str, Any]]]:
    """The splits' rows as ``datasets.load_dataset(repo, config, revision=commit)`` gives them,
    which is how lm-eval reads the same hub dataset."""
    datasets = _online_datasets(what)
    try:
        loaded = datasets.load_dataset(source.repo, source.config, revision=commit, token=token)
    except datasets.exceptions.DatasetNotFoundError as err:
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None
    except RuntimeError as err:  # "Dataset scripts are no longer supported, but found ..."
        raise UserError(
            f"cannot download {what}: {_one_line(err)} (datasets {datasets.__version__})"
        ) from None
    except ValueError as err:  # an unknown config names the available ones
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None
    except (ConnectionError, TimeoutError) as err:
        raise UserError(f"cannot download {what}: the hub cannot be reached ({err})") from None
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise UserError(
            f"cannot download {what}: it has no split {', '.join(missing)} "
            f"(it has {', '.join(loaded)})"
        )
    return {split: loaded[split].to_list() for split in splits}


def _online_datasets(what: str) -> Any:
    """The `datasets` module, refusing in one line when its offline mode is on."""
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        raise UserError(
            f"cannot download {what}: HF_DATASETS_OFFLINE (or HF_HUB_OFFLINE) is set; unset it "
            "for this step, which needs the hub"
        )
    return datasets


# --- a text corpus for uptraining ------------------------------------------------------------

CORPUS_GENERATOR = "rrt.sources"
WORD_UNIT = "whitespace-separated words (len(text.split()))"
_BATCH = 1000  # documents per batch read from the stream


@dataclass(frozen=True)
class CorpusRequest:
    """What a corpus download was asked for. A folder made for the same request is complete
    as it is; a folder made for any other is never replaced."""

    repo: str
    revision: str
    config: str | None
    text_field: str
    split: str
    validation_split: str | None
    train_tokens: int
    validation_documents: int
    test_documents: int


CORPUS_SOURCE = schema.defaults("corpus_source")


def download_corpus(
    repo: str,
    revision: str,
    out: str | Path,
    *,
    config: str | None = None,
    text_field: str = CORPUS_SOURCE["text_field"],
    train_tokens: int,
    validation_documents: int,
    test_documents: int,
    split: str = CORPUS_SOURCE["split"],
    validation_split: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Stream a hub text dataset at ``revision`` into the corpus folder ``out`` (train,
    validation and test JSONL and meta.json, :mod:`rrt.training.data`) and return its meta.

    Nothing is downloaded whole: ``datasets`` streams the rows at the resolved commit and
    reading stops once the sizes asked for are written. The held-out documents come first, test
    then validation (so a test split stays the same when only the validation size changes),
    from ``validation_split`` (default: the dataset's ``validation`` split when it has one,
    else the first documents of ``split``). Train documents from ``split`` follow until
    ``train_tokens`` words (:data:`WORD_UNIT`; the last document may pass the mark), skipping
    empty ones and any that is a held-out document. ``out`` is written atomically, with
    ``provenance.json``; an ``out`` already complete for this request is left as it is without
    asking the hub, and one holding anything else is refused.
    """
    if train_tokens < 1 or validation_documents < 0 or test_documents < 0:
        raise UserError(
            f"--tokens {train_tokens}, --validation-documents {validation_documents}, "
            f"--test-documents {test_documents}: need at least 1 token and no negative counts"
        )
    request = CorpusRequest(
        repo=repo,
        revision=revision,
        config=config,
        text_field=text_field,
        split=split,
        validation_split=validation_split,
        train_tokens=train_tokens,
        validation_documents=validation_documents,
        test_documents=test_documents,
    )
    out = Path(out)
    if _corpus_is_complete(out, request):
        return json.loads((out / "meta.json").read_text())
    what = f"corpus {repo}" + (f" config {config}" if config else "") + f" at revision {revision}"
    api = HfApi(token=token, library_name="rrt")
    with _hub_errors(what, api.endpoint):
        commit = api.repo_info(repo, repo_type="dataset", revision=revision, timeout=_timeout()).sha
    datasets = _online_datasets(what)
    with _hub_errors(what, api.endpoint), _datasets_errors(what), atomic_path(out) as tmp:
        streams = datasets.load_dataset(
            repo, config, streaming=True, revision=commit, token=api.token
        )
        held_out_split = _held_out_split(what, request, list(streams))
        train = _documents(what, streams[split], split, text_field)
        if held_out_split is None:  # the stream's head, then train goes on after it
            held_out, held_out_from = train, f"the first documents of split {split}"
        else:
            held_out = _documents(what, streams[held_out_split], held_out_split, text_field)
            held_out_from = f"split {held_out_split}"
        seen: set[bytes] = set()
        tmp.mkdir()
        splits = {}
        for name, documents in (("test", test_documents), ("validation", validation_documents)):
            splits[name] = write_split(
                what, tmp, name, held_out, held_out_from, seen, documents=documents
            )
        with _word_bar(f"{repo} train", train_tokens) as bar:
            splits["train"] = write_split(
                what, tmp, "train", train, f"split {split}", seen, words=train_tokens, bar=bar
            )
        meta = {
            "generator": CORPUS_GENERATOR,
            "request": asdict(request),
            "commit": commit,
            "held_out_from": held_out_from,
            "word_unit": WORD_UNIT,
            "splits": {name: splits[name] for name in ("train", "validation", "test")},
        }
        write_json(tmp / "meta.json", meta)
        params = {**asdict(request), "commit": commit, "endpoint": api.endpoint}
        write_json(tmp / PROVENANCE, provenance("download corpus", params))
    return meta


def _corpus_is_complete(out: Path, request: CorpusRequest) -> bool:
    """Whether ``out`` already holds this request's corpus (its split files at their recorded
    sizes); an ``out`` holding anything else is an error (it is never replaced)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    try:
        meta = json.loads((out / "meta.json").read_text())
        recorded = meta["request"] if meta["generator"] == CORPUS_GENERATOR else None
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if not isinstance(recorded, dict):
        raise UserError(
            f"--out {out} exists and is not a corpus made by rrt download corpus (its meta.json "
            "says otherwise or is missing); remove it or choose another --out"
        )
    asked = asdict(request)
    if recorded != asked:
        differences = ", ".join(
            f"{key} {recorded.get(key)!r} (asked: {value!r})"
            for key, value in asked.items()
            if recorded.get(key) != value
        )
        raise UserError(
            f"--out {out} holds another corpus download ({differences}); remove it or choose "
            "another --out"
        )
    splits = meta.get("splits") or {}
    return all(
        (out / f"{name}.jsonl").is_file()
        and (out / f"{name}.jsonl").stat().st_size == splits.get(name, {}).get("bytes")
        for name in ("train", "validation", "test")
    )


def _held_out_split(what: str, request: CorpusRequest, available: list[str]) -> str | None:
    """The dataset split the held-out documents come from; None for the head of the stream."""
    for flag, name in (
        ("--split", request.split),
        ("--validation-split", request.validation_split),
    ):
        if name is not None and name not in available:
            raise UserError(
                f"cannot download {what}: {flag} {name}: it has no such split (it has "
                f"{', '.join(available)})"
            )
    if request.validation_split is not None:
        return request.validation_split
    return "validation" if "validation" in available and request.split != "validation" else None


def _documents(what: str, stream: Any, split: str, field: str) -> Iterator[str]:
    """The non-empty texts of one streamed split, in stream order."""
    columns = stream.column_names
    if columns is not None:
        if field not in columns:
            raise UserError(
                f"cannot download {what}: split {split} has no field {field!r} (it has "
                f"{', '.join(columns)}); choose one with --text-field"
            )
        stream = stream.select_columns([field])
    for batch in stream.iter(batch_size=_BATCH):
        if field not in batch:
            raise UserError(
                f"cannot download {what}: split {split} has no field {field!r} (it has "
                f"{', '.join(batch)}); choose one with --text-field"
            )
        for text in batch[field]:
            if text is not None and not isinstance(text, str):
                raise UserError(
                    f"cannot download {what}: field {field!r} of split {split} holds "
                    f"{type(text).__name__}, not text; choose another with --text-field"
                )
            if text and not text.isspace():
                yield text


@contextmanager
def _word_bar(desc: str, total: int) -> Iterator[Any]:
    """A tqdm bar on stderr over the words written."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=" words", unit_scale=True, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def _datasets_errors(what: str) -> Iterator[None]:
    """Turn what `datasets` raises while opening or streaming a dataset into one line; hub
    errors pass on to :func:`_hub_errors`."""
    from datasets.exceptions import DatasetNotFoundError

    hub = (
        hub_errors.HfHubHTTPError,
        hub_errors.EntryNotFoundError,
        hub_errors.HFValidationError,
        hub_errors.OfflineModeIsEnabled,
    )
    try:
        yield
    except hub:
        raise
    except DatasetNotFoundError as err:
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None
    except ValueError as err:
        if "zstd" in str(err):  # fsspec knows zstd only when zstandard is installed
            raise UserError(
                f"cannot download {what}: its files are zstd-compressed (.zst) and the "
                "zstandard package is not installed; `pip install zstandard` and run again"
            ) from None
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None  # unknown config
    except (FileNotFoundError, RuntimeError) as err:  # no data files; a loading script
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None
    except ConnectionError as err:
        raise UserError(f"cannot download {what}: the hub cannot be reached ({err})") from None


# --- errors ----------------------------------------------------------------------------------


def _timeout() -> float:
    """Seconds to wait for the hub's answer: huggingface_hub's HF_HUB_ETAG_TIMEOUT (default 10)."""
    return float(hub_constants.HF_HUB_ETAG_TIMEOUT)


def _network_errors() -> tuple[type[BaseException], ...]:
    """The transport errors of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = [TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            imported = __import__(module)
        except ImportError:
            continue
        found += [getattr(imported, n) for n in names if hasattr(imported, n)]
    return tuple(found)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


@contextmanager
def _hub_errors(what: str, endpoint: str) -> Iterator[None]:
    """Turn what huggingface_hub raises into one line that names ``what`` and the cause."""
    try:
        yield
    except UserError:
        raise
    except hub_errors.OfflineModeIsEnabled:
        raise UserError(
            f"cannot download {what}: HF_HUB_OFFLINE is set; unset it for this step, which needs "
            "the hub (run it on a machine that can reach it)"
        ) from None
    except hub_errors.GatedRepoError:
        raise UserError(
            f"cannot download {what}: the repository is gated; accept its terms on its page at "
            f"{endpoint} and set HF_TOKEN (or run `hf auth login`)"
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise UserError(
            f"cannot download {what}: no such repository at {endpoint} (or it is private and "
            "HF_TOKEN does not grant access)"
        ) from None
    except hub_errors.RevisionNotFoundError:
        raise UserError(
            f"cannot download {what}: the repository has no such revision (give a branch, tag "
            "or full commit sha)"
        ) from None
    except hub_errors.LocalEntryNotFoundError as err:  # raised when the hub vanished mid-way
        cause = err.__cause__ or err.__context__
        raise UserError(
            f"cannot download {what}: the hub at {endpoint} cannot be reached "
            f"({type(cause or err).__name__})"
        ) from None
    except hub_errors.EntryNotFoundError as err:
        raise UserError(f"cannot download {what}: a file is missing ({_one_line(err)})") from None
    except hub_errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise UserError(
            f"cannot download {what}: the hub at {endpoint} answered HTTP {status}"
        ) from None
    except hub_errors.HFValidationError as err:
        raise UserError(f"cannot download {what}: {_one_line(err)}") from None
    except _network_errors() as err:
        raise UserError(
            f"cannot download {what}: the hub at {endpoint} cannot be reached "
            f"({type(err).__name__}: {_one_line(err) or 'no answer'}); run `rrt download` where "
            "it can be, then copy the output"
        ) from None


# --- the command line ------------------------------------------------------------------------
