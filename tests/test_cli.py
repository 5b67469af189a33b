"""`rrt convert / relax / params` from the command line, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _families import source_model, tokens

from rrt.cli import main
from rrt.model.sizes import build_on_meta, count_parameters
from rrt.store import PROVENANCE, load_config, load_model

GEMMA_2B = Path(__file__).parent / "data" / "gemma-2b-config.json"

# Paper sec. 3 / app. I: Gemma 2B non-embedding parameters, B = 2, relaxed at r = 64..512.
PAPER_GEMMA_2B = [
    (None, None, 1.99e9),
    (2, 0, 0.99e9),
    (2, 64, 1.07e9),
    (2, 128, 1.15e9),
    (2, 256, 1.30e9),
    (2, 512, 1.60e9),
]


@pytest.mark.parametrize(("loops", "rank", "paper"), PAPER_GEMMA_2B)
def test_gemma_2b_parameter_counts_match_the_paper_within_one_percent(loops, rank, paper):
    counts = count_parameters(build_on_meta(load_config(GEMMA_2B), loops, rank))
    assert abs(counts["non_embedding"] - paper) / paper < 0.01
    assert counts["total"] == counts["non_embedding"] + counts["embedding"]
    assert (counts["lora"] > 0) == bool(rank)


def test_params_cli_prints_json_from_a_config_alone(capsys):
    assert main(["params", str(GEMMA_2B), "--loops", "2", "--rank", "attention=64,mlp=0"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert set(counts) >= {"total", "non_embedding", "lora"}
    # attention-only LoRA at r=64: q, o 64*(2048+2048); k, v 64*(2048+256); 18 positions
    assert counts["lora"] == 18 * 64 * (2 * 4096 + 2 * 2304)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("source")
    source_model("qwen2", vectors="random").save_pretrained(path)
    return path


def test_convert_relax_and_params_from_the_command_line(source_dir, tmp_path, capsys):
    recursive, relaxed = tmp_path / "recursive", tmp_path / "relaxed"
    assert main(["convert", "--source", str(source_dir), "--loops", "3", "--init", "average",
                 "--out", str(recursive)]) == 0  # fmt: skip
    assert main(["relax", "--source", str(source_dir), "--recursive", str(recursive),
                 "--rank", "1000", "--relax-vectors", "--out", str(relaxed)]) == 0  # fmt: skip
    prov = json.loads((relaxed / PROVENANCE).read_text())
    assert prov["step"] == "relax" and prov["params"]["relax_vectors"] is True
    assert "torch" in prov["versions"]
    source, model = load_model(source_dir), load_model(relaxed)
    x = tokens()
    with torch.no_grad():
        assert (model(x).logits - source(x).logits).abs().max() < 1e-4
    capsys.readouterr()
    assert main(["params", str(relaxed)]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts == count_parameters(model)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", "--loops", "4"], "--loops: 4 loops do not divide the source's 6 layers"),
        (["convert", "--loops", "2", "--init", "best"], "unknown --init 'best'"),
        (["relax", "--rank", "-3"], "rank must be >= 0"),
        (["relax", "--rank", "big"], "rank 'big': write an integer"),
    ],
)
def test_bad_input_exits_with_one_clear_line(source_dir, tmp_path, capsys, args, message):
    args = [*args, "--source", str(source_dir), "--out", str(tmp_path / "out")]
    if args[0] == "relax":
        args += ["--recursive", str(source_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_path_with_no_model_fails_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "rrt", "convert", "--source", str(tmp_path / "nothing"),
         "--loops", "2", "--out", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "no model directory at" in result.stderr
    assert "Traceback" not in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "rrt", "params", str(empty)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "config.json not found" in result.stderr


@pytest.mark.parametrize("command", sorted(__import__("rrt.cli").cli.COMMANDS))
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert f"usage: rrt {command}" in capsys.readouterr().out


def test_import_rrt_and_uptrain_help_load_neither_lm_eval_nor_mlflow():
    script = """
import sys
import rrt
loaded = {"lm_eval" in sys.modules, "mlflow" in sys.modules}
from rrt.cli import main
try:
    main(["uptrain", "--help"])
except SystemExit:
    pass
loaded |= {"lm_eval" in sys.modules, "mlflow" in sys.modules}
print("LOADED", loaded)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED {False}" in result.stdout


def test_a_truncated_weights_file_is_one_line_naming_it(source_dir, tmp_path, capsys):
    import shutil

    broken = shutil.copytree(source_dir, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert (
        main(["convert", "--source", str(broken), "--loops", "3", "--out", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{weights} is not a readable safetensors file" in err


def test_ctrl_c_while_rrt_still_imports_is_one_line_and_exit_130():
    """torch and transformers take seconds to import; a Ctrl-C then is no traceback."""
    import shutil
    import signal
    import time

    rrt = shutil.which("rrt", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([rrt, "convert", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(0.5)  # well inside the imports (seconds on any machine)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and out == ""
    assert err == "rrt: interrupted while starting; nothing was written\n"


def test_every_command_line_ends_with_the_tracking_options_the_workflow_appends():
    """The workflow appends --mlflow-tag to every command, subcommands (rrt download pip)
    included: each leaf parser takes it, and --overwrite where it has an --out."""
    from rrt.cli import _leaves, build_parser

    root = build_parser()
    commands = [a for a in root._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    leaves = [leaf for p in commands.choices.values() for leaf in _leaves(p)]
    assert any(leaf.prog == "rrt download pip" for leaf in leaves)
    for leaf in leaves:
        options = {o for action in leaf._actions for o in action.option_strings}
        assert "--mlflow-tag" in options, leaf.prog
        assert ("--out" in options) == ("--overwrite" in options), leaf.prog


def test_ctrl_c_inside_a_del_while_starting_still_ends_the_process():
    """A Ctrl-C that lands in a ``__del__`` during the imports: Python swallows a
    KeyboardInterrupt there and the import went on; while starting, it ends the process."""
    script = """if True:
        import os, signal
        from _rrt_launch import starting

        class Collected:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**6):  # the handler runs between bytecodes, here
                    pass

        with starting():
            Collected()
            print("the import went on")
        """
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (130, "")
    assert result.stderr == "rrt: interrupted while starting; nothing was written\n"
