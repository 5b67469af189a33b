"""Outputs: written atomically, and never in place of what rrt did not write.

A killed job never leaves a half-written file that Snakemake takes as done (:func:`atomic_path`
builds beside the output, then renames). Every folder rrt makes holds a marker (:data:`MARKER`),
so a rerun may replace its own earlier output while a folder of the user's files, or an input,
is never deleted: :func:`check_output` refuses it with one line before any work is done.
"""

from __future__ import annotations

import contextvars
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rrt.errors import UserError

MARKER = ".rrt-output"  # in every folder rrt writes: what a rerun of its command may replace
# The one path a command run with --overwrite may replace although rrt did not write it.
_OVERWRITE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("overwrite", default=None)


class OutputError(UserError):
    """An --out that must not be written: one line naming it and what to do instead."""


def ours(path: str | os.PathLike[str], owned: Callable[[Path], bool] | None = None) -> bool:
    """Whether rrt may replace ``path``: a folder holding rrt's marker, an empty folder, or a
    file that ``owned`` recognises as the command's own earlier output (its contract)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        return (path / MARKER).is_file() or not any(path.iterdir())
    if path.is_file() and owned is not None:
        return owned(path)
    return False


def _relation(out: Path, given: Path) -> str | None:
    if out == given:
        return "is"
    if given.is_relative_to(out):
        return "holds"
    if out.is_relative_to(given):
        return "is inside"
    return None


def check_output(
    out: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    owned: Callable[[Path], bool] | None = None,
    flag: str = "--out",
) -> Path:
    """Refuse, before any work, an ``out`` that is, holds or lies inside an input, one whose
    parent cannot be written, or one that exists and is not rrt's own (``overwrite`` allows the
    last, never the first); the resolved path."""
    resolved = Path(out).expanduser().resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        relation = _relation(resolved, source)
        if relation is not None:
            raise OutputError(
                f"{flag} {out} {relation} the input {given}: an output never replaces or goes "
                "inside what a command reads; write it elsewhere"
            )
    if resolved.exists() and not overwrite and not ours(resolved, owned):
        what = "a folder of files rrt did not write" if resolved.is_dir() else "a file"
        raise OutputError(
            f"{flag} {out} is {what}; rrt replaces only its own earlier output: choose "
            "another path, or pass --overwrite to replace it"
        )
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {out}: cannot write in {parent} (permission denied)")
    return resolved


@contextmanager
def overwriting(path: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, :func:`atomic_path` may replace ``path`` whoever wrote it (--overwrite);
    every other folder still only if it is rrt's own."""
    token = _OVERWRITE.set(Path(path).expanduser().resolve())
    try:
        yield
    finally:
        _OVERWRITE.reset(token)


@contextmanager
def writer_lock(out: str | os.PathLike[str], flag: str = "--out") -> Iterator[None]:
    """Hold the one writer's lock of ``out`` (an OS file lock beside it, which the kernel
    releases when the process dies, so a SIGKILL leaves nothing stale): a second process to the
    same output stops at once, with one line naming the holder."""
    out = Path(out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise OutputError(
                f"{flag} {out} is being written by {holder}; wait for it to finish or stop it"
            ) from None
        if lock.exists() and os.fstat(fd).st_ino == os.stat(lock).st_ino:
            break  # the lock file is still the one at that path (not unlinked by its last holder)
        os.close(fd)
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:2]))
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}, {started})".encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


@contextmanager
def atomic_path(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    Works for files and directories alike. A directory gets rrt's marker, and replaces a previous
    one only if that was rrt's own (or ``overwrite``): a folder of someone else's files is never
    deleted, whatever the caller checked before.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if target.is_dir():
            (target / MARKER).write_text("written by rrt: a rerun of its command may replace it\n")
        if final.is_dir() and not final.is_symlink():
            allowed = overwrite or final.resolve() == _OVERWRITE.get()
            if not allowed and not ours(final):
                raise OutputError(f"{final} holds files rrt did not write: it was left as it is")
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks (files of any size)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(
    path: str | os.PathLike[str], where: str | None = None, error: type[UserError] = UserError
) -> Any:
    """The JSON value in ``path``; a file that cannot be read, or is not JSON, is one line naming
    ``where`` (the path by default) as ``error``."""
    where = where or str(path)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{where} cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise error(f"{where} is not valid JSON ({err})") from None


def read_jsonl(
    path: str | os.PathLike[str], where: str | None = None, error: type[UserError] = UserError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each non-blank line of ``path`` as (its number, a JSON object), read as it goes; a line
    that is not UTF-8 or not a JSON object is one line naming ``where`` and the line as
    ``error``."""
    where = where or str(path)
    try:
        with Path(path).open("rb") as lines:
            for number, raw in enumerate(lines, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise error(f"{where}: line {number} is not UTF-8") from None
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError:
                    row = None
                if not isinstance(row, dict):
                    raise error(f"{where}: line {number} is not a JSON object")
                yield number, row
    except OSError as err:
        raise error(f"{where} cannot be read ({err})") from None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def die_with_launcher() -> None:
    """torchrun starts each worker in a session of its own, so a SIGKILL of the job's process
    group (Snakemake and the launcher) would leave the workers running beside the rerun; on
    Linux a worker can ask the kernel to kill it with its launcher (PR_SET_PDEATHSIG). Called as
    a command starts (rrt.cli.main), before models load, and again by the trainer."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
