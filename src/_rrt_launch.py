"""The ``rrt`` command's entry point, outside the package: a command's modules (torch,
transformers) take seconds to import, and a Ctrl-C in them must end like one during the command,
in one line with exit status 130, not in a traceback of the import."""

from __future__ import annotations

import sys


def interrupted_while_starting() -> int:
    print("rrt: interrupted while starting; nothing was written", file=sys.stderr)
    return 130


def main() -> int:
    try:
        from rrt.cli import main as run
    except KeyboardInterrupt:
        return interrupted_while_starting()
    return run()  # which catches a Ctrl-C in the command's own imports the same way
