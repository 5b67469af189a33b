"""Outputs are atomic and never replace what rrt did not write."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rrt.errors import UserError
from rrt.io import (
    MARKER,
    OutputError,
    atomic_path,
    check_output,
    ours,
    read_json,
    read_jsonl,
    writer_lock,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_folder_output_carries_the_marker_and_replaces_only_its_own(tmp_path):
    out = tmp_path / "model"
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("1")
    assert (out / MARKER).is_file() and ours(out)
    with atomic_path(out) as tmp:  # a rerun replaces its own output
        tmp.mkdir()
        (tmp / "weights").write_text("2")
    assert (out / "weights").read_text() == "2"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with (
        pytest.raises(OutputError, match="holds files rrt did not write"),
        atomic_path(theirs) as t,
    ):
        t.mkdir()
    assert _tree(theirs) == {"notes.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_a_failed_block_leaves_the_previous_output_and_no_temporary(tmp_path):
    out = tmp_path / "result.json"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "result.json"
    ]


@pytest.mark.parametrize(
    ("layout", "out", "message"),
    [
        ("source", "source", "--out {o} is the input {i}"),
        ("source", ".", "--out {o} holds the input {i}"),
        ("source", "source/sub", "--out {o} is inside the input {i}"),
    ],
)
def test_an_output_that_is_holds_or_is_inside_an_input_is_refused(tmp_path, layout, out, message):
    source = tmp_path / layout
    source.mkdir()
    (source / MARKER).write_text("")  # even rrt's own folder, even with --overwrite
    before = _tree(tmp_path)
    target = tmp_path / out
    with pytest.raises(OutputError) as err:
        check_output(target, [source], overwrite=True)
    assert message.format(o=target, i=source) in str(err.value)
    assert _tree(tmp_path) == before


def test_an_existing_output_is_replaced_only_when_ours_or_with_overwrite(tmp_path):
    users = tmp_path / "folder"
    users.mkdir()
    (users / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="a folder of files rrt did not write.*--overwrite"):
        check_output(users)
    assert check_output(users, overwrite=True) == users.resolve()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty) == empty.resolve()
    report = tmp_path / "eval.json"
    report.write_text("{}")
    with pytest.raises(OutputError, match="is a file; rrt replaces only its own"):
        check_output(report)
    assert check_output(report, owned=lambda p: p.read_text() == "{}") == report.resolve()


def test_an_output_under_a_file_or_an_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(OutputError, match=r"is a file, not a folder"):
        check_output(afile / "out")
    # root may write anywhere, so the kernel's answer for an unwritable folder is stood in for
    monkeypatch.setattr("rrt.io.os.access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(OutputError, match=rf"cannot write in {tmp_path} \(permission denied\)"):
        check_output(tmp_path / "new" / "out")


def test_a_second_writer_of_one_output_stops_at_once_naming_the_first(tmp_path):
    out = tmp_path / "model"
    script = (
        "import sys, time; from rrt.io import writer_lock\n"
        f"with writer_lock({str(out)!r}):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "locked"
        busy = rf"{out} is being written by pid {first.pid} on "
        with pytest.raises(OutputError, match=busy), writer_lock(out):
            pass
        first.kill()  # SIGKILL: the kernel releases the lock, nothing stale is left to clear
        first.wait()
        with writer_lock(out):
            assert (tmp_path / ".model.lock").is_file()
        assert not (tmp_path / ".model.lock").exists()
    finally:
        first.kill()


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited, or a zombie left for its new parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_torchrun_worker_dies_with_its_launcher(tmp_path: Path):
    """A worker (TORCHELASTIC_RUN_ID set) asks the kernel to kill it with its launcher, so a
    killed job leaves no worker running beside its rerun."""
    ready = tmp_path / "ready"
    worker = (
        "import time; from rrt.io import die_with_launcher; die_with_launcher(); "
        f"open({str(ready)!r}, 'w').write('x'); time.sleep(120)"
    )
    launcher = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', {worker!r}]); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "test"}
    process = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, env=env)
    pid = int(process.stdout.readline())  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the worker never started"
    process.kill()
    process.wait()
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not _gone(pid):
        os.kill(pid, 9)
        pytest.fail("the worker outlived its launcher")


class Wrong(UserError):
    """An error class of a caller's own (a contract's, a config's)."""


def test_json_readers_name_the_file_and_line_of_what_is_wrong(tmp_path):
    good = tmp_path / "rows.jsonl"
    good.write_bytes(b'{"a": 1}\n\n  \n{"a": 2}\n')
    assert list(read_jsonl(good)) == [(1, {"a": 1}), (4, {"a": 2})]  # blank lines skipped
    cases = {
        b'{"a": 1}\n[1, 2]\n': "rows: line 2 is not a JSON object",
        b'{"a": 1}\n{"a": \n': "rows: line 2 is not a JSON object",
        b'{"a": "\xff"}\n': "rows: line 1 is not UTF-8",
    }
    for content, message in cases.items():
        good.write_bytes(content)
        with pytest.raises(Wrong, match=f"^{message}$"):
            list(read_jsonl(good, "rows", Wrong))
    with pytest.raises(UserError, match="missing.jsonl cannot be read"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    one = tmp_path / "one.json"
    one.write_text('{"model_type": ')
    with pytest.raises(Wrong, match=r"^config: one.json is not valid JSON \(Expecting value"):
        read_json(one, "config: one.json", Wrong)
    one.write_text('{"model_type": "llama"}')
    assert read_json(one) == {"model_type": "llama"}
    with pytest.raises(UserError, match="missing.json cannot be read"):
        read_json(tmp_path / "missing.json")
