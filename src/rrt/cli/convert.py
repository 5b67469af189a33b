"""``rrt convert``: the command line of :mod:`rrt.method.convert`."""

from __future__ import annotations

import argparse

from rrt import config as schema
from rrt import store
from rrt.errors import UserError
from rrt.method.convert import DEFAULTS, convert, source_dtype
from rrt.model.families import family_of
from rrt.model.shape import check_loops
from rrt.model.sizes import count_parameters
from rrt.names import INITS

INPUTS = ("source",)  # the --out never is, holds or lies inside one


def _convert_cli(args: argparse.Namespace) -> dict:
    if args.init not in INITS:
        raise UserError(f"unknown --init {args.init!r}; choose one of {', '.join(INITS)}")
    config = store.load_config(args.source)  # fail on bad arguments before loading weights
    family_of(config.model_type)
    check_loops(config.num_hidden_layers, args.loops)
    source = store.load_model(args.source, device=args.device)
    model = convert(source, loops=args.loops, init=args.init, seed=args.seed)
    prov = store.provenance(
        "convert",
        {"source": args.source, "loops": args.loops, "init": args.init, "seed": args.seed},
    )
    store.save_model(
        model,
        args.out,
        prov,
        tokenizer=store.load_tokenizer(args.source, required=False),
        dtype=source_dtype(args.source),
    )
    print(f"recursive model ({args.init}, B={args.loops}) written to {args.out}")
    return {"parameters": count_parameters(model)}


def add_cli(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, help="source model directory (save_pretrained)")
    p.add_argument("--loops", type=int, required=True, help="B: loops of the shared block")
    p.add_argument(
        "--init",
        default=DEFAULTS["inits"][0],
        help=f"shared-layer initialisation: {', '.join(INITS)} (default: %(default)s)",
    )
    schema.add_setting(p, "recursive.seed")
    schema.add_setting(p, "device")
    schema.add_setting(p, "threads")
    p.add_argument("--out", required=True, help="output model directory")
    p.set_defaults(func=_convert_cli)
