"""The ``rrt`` command's entry point, outside the package: a command's modules (torch,
transformers) take seconds to import, and a Ctrl-C in them must end like one during the command,
in one line with exit status 130, not in a traceback of the import."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

INTERRUPTED = "rrt: interrupted while starting; nothing was written\n"


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """While rrt imports, a Ctrl-C ends the process at once: one line, exit status 130 (nothing
    is written yet). Not by a KeyboardInterrupt: raised inside an import, one is swallowed when it
    lands in a ``__del__`` (the import goes on), and a Ctrl-C half a second into CI's fresh clone
    (imports compiling their bytecode) once ended in an abort (exit status -6) instead."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals (rrt.cli.main called from a thread)
        return
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        yield
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(signal.SIGINT, previous)


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write(INTERRUPTED)
    sys.stderr.flush()
    os._exit(130)


def main() -> int:
    with starting():
        from rrt.cli import main as run
    return run()  # which keeps the same handler while it imports the command's modules
