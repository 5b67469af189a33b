"""The ``rrt`` command's entry point, outside the package: importing rrt (torch, transformers)
takes seconds, and a Ctrl-C in them must end like one during the command, in one line with
exit status 130, not in a traceback of the import."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from rrt.cli import main as run
    except KeyboardInterrupt:
        print("rrt: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return run()
