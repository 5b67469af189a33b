"""``rrt relax``: the command line of :mod:`rrt.method.relax`."""

from __future__ import annotations

import argparse

from rrt import config as schema
from rrt import store
from rrt.method.convert import source_dtype
from rrt.method.relax import check_source, relax
from rrt.model.shape import full_ranks, parse_rank
from rrt.model.sizes import count_parameters

INPUTS = ("source", "recursive")  # the --out never is, holds or lies inside one


def _relax_cli(args: argparse.Namespace) -> dict:
    parse_rank(args.rank)  # fail on a bad rank or model before loading any weights
    check_source(store.load_config(args.source), store.load_config(args.recursive))
    recursive = store.load_model(args.recursive, device=args.device)
    ranks = full_ranks(parse_rank(args.rank), recursive)
    source = store.load_model(args.source, device=args.device)
    model = relax(recursive, source, ranks, relax_vectors=args.relax_vectors, seed=args.seed)
    prov = store.provenance(
        "relax",
        {
            "source": args.source,
            "recursive": args.recursive,
            "rank": ranks,
            "relax_vectors": args.relax_vectors,
            "seed": args.seed,
        },
    )
    store.save_model(
        model,
        args.out,
        prov,
        tokenizer=store.load_tokenizer(args.recursive, required=False)
        or store.load_tokenizer(args.source, required=False),
        dtype=source_dtype(args.recursive),
    )
    print(f"relaxed model (rank {ranks}) written to {args.out}")
    return {"parameters": count_parameters(model), "rank": ranks}


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source", required=True, help="the source model directory the recursive model came from"
    )
    p.add_argument("--recursive", required=True, help="recursive model directory (rrt convert)")
    p.add_argument(
        "--rank",
        required=True,
        help="LoRA rank: R, full, or attention=R1,mlp=R2 (0 = pure recursive; full = exact)",
    )
    p.add_argument(
        "--relax-vectors",
        action="store_true",
        help="also give each position its source layer's norms and biases (the paper ties them)",
    )
    schema.add_setting(p, "relaxed.seed")
    schema.add_setting(p, "device")
    schema.add_setting(p, "threads")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=_relax_cli)
