"""The ``rrt`` command line: one subcommand per workflow stage, with explicit inputs and outputs.

Every stage module exposes ``add_cli(subparsers)``, which registers its subcommand and sets
``func`` to a function taking the parsed arguments. A :class:`rrt.errors.UserError` becomes one
line on stderr and exit status 2, Ctrl-C one line and 130; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from rrt.errors import UserError

# Modules that register a subcommand, in the order `rrt --help` lists them.
COMMAND_MODULES = [
    "rrt.corpus",
    "rrt.tokenizer",
    "rrt.pretrain",
    "rrt.tasks",
    "rrt.baseline",
    "rrt.convert",
    "rrt.relax",
    "rrt.params",
    "rrt.uptrain",
    "rrt.evaluate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rrt",
        description="Relaxed Recursive Transformers: convert, relax, uptrain, evaluate, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"rrt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"rrt {args.command}: interrupted; outputs are written atomically, and the same "
            "command again resumes a training step from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
