"""A command's --out: checked before any work, never an input, never someone else's files, one
writer at a time; a rerun replaces only its own earlier output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from _families import source_model

from rrt.cli import main
from rrt.io import MARKER, writer_lock


def _digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` and its hash: what "left as it was" means."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "source"
    source_model("llama", num_hidden_layers=4).save_pretrained(path)
    return path


def _convert(source: Path, out: Path, *extra: str) -> list[str]:
    return ["convert", "--source", str(source), "--loops", "2", "--out", str(out), *extra]


@pytest.mark.parametrize(
    ("out", "relation"),
    [(".", "is"), ("..", "holds"), ("./inner", "is inside")],
    ids=["the input", "its parent", "inside it"],
)
def test_an_output_is_never_an_input_nor_holds_nor_inside_one(source, capsys, out, relation):
    before = _digest(source.parent)
    target = (source / out).resolve() if out != "." else source
    assert main(_convert(source, target, "--overwrite")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {target} {relation} the input {source}" in err
    assert _digest(source.parent) == before


def test_a_folder_of_the_users_files_is_refused_and_overwrite_replaces_it(source, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years")
    assert main(_convert(source, mine)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a folder of files rrt did not write" in err
    assert "--overwrite" in err and _digest(mine) == {
        "thesis.tex": hashlib.sha256(b"three years").hexdigest()
    }
    assert main(_convert(source, mine, "--overwrite")) == 0
    assert (mine / MARKER).is_file() and not (mine / "thesis.tex").exists()


def test_a_rerun_replaces_its_own_output(source, tmp_path):
    out = tmp_path / "recursive"
    assert main(_convert(source, out)) == 0
    first = _digest(out)
    assert main(_convert(source, out, "--init", "average")) == 0  # no --overwrite needed
    assert _digest(out) != first and (out / MARKER).is_file()


def test_a_second_writer_of_the_same_output_stops_at_once(source, tmp_path, capsys):
    out = tmp_path / "recursive"
    with writer_lock(out):  # another command writing it now
        assert main(_convert(source, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {out} is being written by pid " in err
    assert not out.exists()


def test_an_output_under_a_file_is_one_line_before_any_work(source, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(_convert(source, afile / "out")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{afile} is a file, not a folder" in err
