"""``rrt download``: the command line of :mod:`rrt.sources`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rrt import config as schema
from rrt.errors import UserError
from rrt.sources import (
    CORPUS_REVISIONS,
    MODEL_REVISIONS,
    PAPER_SOURCES,
    download_corpus,
    download_model,
    download_paper_data,
)
from rrt.store import PROVENANCE


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Fetch hub models, the paper's task data and a text corpus onto local disk, pinned to "
        "commits, for compute nodes without internet. Set HF_TOKEN for gated models "
        "(google/gemma-2b) and HF_ENDPOINT for a mirror; HF_HUB_OFFLINE must be unset."
    )
    sub = p.add_subparsers(dest="download_what", required=True, metavar="WHAT")
    pinned = ", ".join(f"{repo} @ {sha[:12]}" for repo, sha in MODEL_REVISIONS.items())
    model = sub.add_parser(
        "model",
        help="a causal LM repo at a revision: safetensors, config and tokenizer",
        description=(
            "Download a causal LM (safetensors weights, config, generation config, tokenizer; "
            "no .bin/onnx/flax/tf files) at a pinned revision into --out, with provenance.json "
            "holding the commit. An --out that already holds it is left as it is."
        ),
    )
    model.add_argument("--repo", required=True, help="hub model id, e.g. EleutherAI/pythia-1b")
    model.add_argument(
        "--revision",
        help=f"branch, tag or commit sha (default for the paper's models: {pinned})",
    )
    model.add_argument("--out", required=True, help="output model directory")
    model.set_defaults(func=_model_cli)
    data = sub.add_parser(
        "paper-data",
        help="the paper's seven lm-eval tasks as DIR/<task>/<split>.jsonl for --paper-data",
        description=(
            "Write the rows of suite paper's tasks (hub datasets pinned to commits) as "
            "DIR/<task>/<split>.jsonl, which `rrt evaluate --paper-data DIR` reads offline, and "
            "DIR/provenance.json."
        ),
    )
    data.add_argument("--out", required=True, help="output directory DIR")
    data.add_argument(
        "--tasks",
        help=f"comma-separated subset of {', '.join(PAPER_SOURCES)} (default: all)",
    )
    data.set_defaults(func=_paper_data_cli)
    pinned = ", ".join(f"{repo} @ {sha[:12]}" for repo, sha in CORPUS_REVISIONS.items())
    corpus = sub.add_parser(
        "corpus",
        help="a hub text dataset (e.g. SlimPajama) streamed into a corpus folder for uptraining",
        description=(
            "Stream a hub text dataset at a pinned revision into a corpus folder (train, "
            "validation and test JSONL, meta.json, provenance.json) that rrt uptrain reads: "
            "held-out documents first (from the dataset's validation split if it has one, else "
            "the first documents of --split), then train documents until --tokens words "
            "(whitespace-separated), none of them a held-out one. Only what is written is "
            "read. An --out already holding this request is left as it is."
        ),
    )
    corpus.add_argument("--repo", required=True, help="hub dataset id, e.g. DKYoon/SlimPajama-6B")
    corpus.add_argument(
        "--revision", help=f"branch, tag or commit sha (default for known corpora: {pinned})"
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
    corpus.add_argument("--validation-documents", type=int, required=True)
    corpus.add_argument("--test-documents", type=int, required=True)
    corpus.add_argument("--out", required=True, help="output corpus folder")
    corpus.set_defaults(func=_corpus_cli)


def _model_cli(args: argparse.Namespace) -> None:
    revision = args.revision or MODEL_REVISIONS.get(args.repo)
    if revision is None:
        raise UserError(
            f"--revision is required for {args.repo} (pinned revisions are known only for "
            f"{', '.join(MODEL_REVISIONS)})"
        )
    out = download_model(args.repo, revision, args.out)
    commit = json.loads((out / PROVENANCE).read_text())["params"]["commit"]
    print(f"{args.repo} at {revision} (commit {commit}) in {out}")


def _paper_data_cli(args: argparse.Namespace) -> None:
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    recorded = download_paper_data(args.out, tasks)
    for name in tasks or list(PAPER_SOURCES):
        splits = recorded[name]["splits"]
        rows = ", ".join(f"{s} {v['rows']}" for s, v in splits.items())
        print(f"{name}: {rows} rows in {Path(args.out) / name}")


def _corpus_cli(args: argparse.Namespace) -> dict[str, dict[str, int]]:
    revision = args.revision or CORPUS_REVISIONS.get(args.repo)
    if revision is None:
        raise UserError(
            f"--revision is required for {args.repo} (pinned revisions are known only for "
            f"{', '.join(CORPUS_REVISIONS)})"
        )
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
    for split, info in meta["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['word_tokens']} words")
    return {
        split: {k: info[k] for k in ("documents", "word_tokens")}
        for split, info in meta["splits"].items()
    }
