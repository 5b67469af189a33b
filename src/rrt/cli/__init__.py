"""The ``rrt`` command line: one subcommand per workflow stage, with explicit inputs and outputs.

Each command's wrapper is its own module, ``rrt.cli.<command>``, apart from the library it calls:
its ``add_cli(parser)`` adds the options and sets ``func`` to a function of the parsed arguments.
Only the module of the command being run is imported (lm-eval, for one, takes seconds to import
and most commands never need it); the others appear in ``rrt --help`` through :data:`COMMANDS`. A
:class:`rrt.errors.UserError` becomes one line on stderr and exit status 2, Ctrl-C one line and
130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any, NoReturn

from _rrt_launch import starting
from rrt import config, tracking
from rrt.errors import UserError
from rrt.io import check_output, die_with_launcher, overwriting, writer_lock

# name -> (its module, one line for `rrt --help`), in the order help lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "corpus": (
        "rrt.cli.corpus",
        "generate the embedded story corpus (train/validation/test JSONL)",
    ),
    "tokenizer": (
        "rrt.cli.tokenizer",
        "train the byte-level BPE tokenizer on a corpus's train split",
    ),
    "pretrain": (
        "rrt.cli.pretrain",
        "pretrain a Llama from scratch on the embedded corpus (source or reduced baseline)",
    ),
    "tasks": (
        "rrt.cli.tasks",
        "write the offline lm-eval tasks (YAML + JSONL) from a corpus's test split",
    ),
    "baseline": (
        "rrt.cli.baseline",
        "score unigram and bigram word models on the embedded tasks (should be near chance)",
    ),
    "convert": (
        "rrt.cli.convert",
        "turn a source model into a recursive model (K shared layers x B loops)",
    ),
    "relax": ("rrt.cli.relax", "add SVD-initialised per-position LoRAs to a recursive model"),
    "params": ("rrt.cli.params", "parameter counts of a model directory or config JSON"),
    "uptrain": (
        "rrt.cli.uptrain",
        "uptrain a recursive/relaxed (or any causal) model with CE + forward-KL distillation",
    ),
    "evaluate": (
        "rrt.cli.evaluate",
        "few-shot accuracy of a model directory through lm-eval",
    ),
    "benchmark": (
        "rrt.cli.benchmark",
        "serve one workload with every system (generate, continuous, depth-wise, early exit)",
    ),
    "download": (
        "rrt.cli.download",
        "fetch a hub model, a text corpus or the paper suite's task data at pinned commits",
    ),
    "report": (
        "rrt.cli.report",
        "compile an experiment's results into the paper's tables and plots (HTML, Markdown, CSV)",
    ),
}
# Commands that open their own MLflow run (with per-step metrics); the CLI opens one for others.
TRACKS_ITSELF = {"pretrain", "uptrain"}


class _Parser(argparse.ArgumentParser):
    """A bad option is one line (not argparse's usage block), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser(full: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full options of the commands in ``full`` (all when None); the others
    are listed with their one-line help, their modules not imported."""
    parser = _Parser(
        prog="rrt",
        description="Relaxed Recursive Transformers: convert, relax, uptrain, evaluate, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if full is None or name in full:
            importlib.import_module(module).add_cli(p)
            for leaf in _leaves(p):  # what a command line ends with: its options go there
                if any("--out" in action.option_strings for action in leaf._actions):
                    add_overwrite(leaf)
                tracking.add_arguments(leaf)
    return parser


def _leaves(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p``, or the parsers of its subcommands (rrt download model, ...), recursively."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return [leaf for s in subs for c in s.choices.values() for leaf in _leaves(c)] or [p]


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()  # a torchrun worker: before the seconds of loading that follow
    argv = sys.argv[1:] if argv is None else argv
    command = next((word for word in argv if word in COMMANDS), None)
    with starting():
        parser = build_parser([command] if command else [])  # imports the command's modules
    args = parser.parse_args(argv)
    run = None
    try:
        if hasattr(args, "threads"):  # every command that runs torch takes --threads
            config.set_threads(args.threads)
        run = _job_run(args)
        with _output(args):
            metrics = args.func(args)
        if run is not None:
            out = getattr(args, "out", None)
            run.finish(metrics or {}, Path(out) if out is not None else None)
    except UserError as err:
        print(f"rrt {args.command}: error: {err}", file=sys.stderr)
        _end(run, "FAILED")
        return 2
    except KeyboardInterrupt:
        print(
            f"rrt {args.command}: interrupted; outputs are written atomically, and the same "
            "command again resumes a training step from its last checkpoint",
            file=sys.stderr,
        )
        _end(run, "KILLED")
        return 130
    except BaseException:
        _end(run, "FAILED")
        raise
    return 0


def add_paths(
    p: argparse.ArgumentParser, required: dict[str, str], optional: dict[str, str] | None = None
) -> None:
    """A path option ``--NAME`` for each name, helped by its text: ``required`` ones, then the
    ``optional`` ones."""
    for paths, needed in ((required, True), (optional or {}, False)):
        for name, text in paths.items():
            p.add_argument(f"--{name}", required=needed, type=Path, help=text)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """``--overwrite``, for a command with an ``--out``."""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if rrt did not write it (an input is never replaced)",
    )


@contextmanager
def _output(args: argparse.Namespace) -> Iterator[None]:
    """Before the command's work: its --out is checked (never an input, never someone else's
    files unless --overwrite; rrt.io.check_output) and held by this one writer until it ends."""
    out = getattr(args, "out", None)
    if out is None:
        yield
        return
    module = importlib.import_module(COMMANDS[args.command][0])
    inputs = []
    for name in getattr(module, "INPUTS", ()):
        given = getattr(args, name, None)
        inputs += given if isinstance(given, list) else [given]
    overwrite = getattr(args, "overwrite", False)
    check_output(out, inputs, overwrite, getattr(module, "OWNED", None))
    # data-parallel training runs this command once per process: the first (rank 0) holds it
    lock = writer_lock(out) if os.environ.get("RANK", "0") == "0" else nullcontext()
    with lock, overwriting(out) if overwrite else nullcontext():
        yield


def _job_run(args: argparse.Namespace) -> tracking.JobRun | None:
    """The job's MLflow run when tracking is on (training commands open their own)."""
    settings = tracking.from_arguments(args)
    if not settings.enabled or args.command in TRACKS_ITSELF:
        return None
    params: dict[str, Any] = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in vars(args).items()
        if k != "func" and not k.startswith("mlflow_")
    }
    out = getattr(args, "out", None)
    key = str(Path(out).resolve()) if out is not None else None
    return tracking.JobRun(settings, args.command, params, key)


def _end(run: tracking.JobRun | None, status: str) -> None:
    if run is not None:
        with suppress(Exception):  # the job's own error matters more than the tracking store's
            run.end(status)


if __name__ == "__main__":
    sys.exit(main())
