"""The GPU kit (scripts/gpu_check.py): the same sequence of checks runs on the CPU with tiny
shapes, records a failing check and an overrun and goes on, and judges no target off a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig

from rrt.method import convert as convert_module
from rrt.model.sizes import build_on_meta, count_parameters

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture
def kit(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_default_budgets_fit_one_eight_minute_gpu_command(kit):
    assert sum(check.budget_s for check in kit.CHECKS) <= 420
    assert kit.parse_args(["--out", "x"]).max_seconds <= 450


def test_training_flops_at_tinyllamas_shape_are_about_six_per_parameter_and_token(kit):
    sizes = kit.GPU_SIZES
    full = build_on_meta(LlamaConfig(**sizes.big))
    flops = 3 * kit.forward_flops_per_token(full, sizes.seq_len)
    assert flops == pytest.approx(6 * count_parameters(full)["total"], rel=0.05)
    relaxed = build_on_meta(LlamaConfig(**sizes.big), loops=2, rank=sizes.rank(sizes.big))
    assert kit.forward_flops_per_token(relaxed, sizes.seq_len) > flops / 3  # the LoRAs count


@pytest.mark.slow
def test_the_cpu_kit_records_every_check_a_failure_and_an_overrun_and_judges_no_target(
    kit, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(convert_module, "convert", broken)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the kit sets it for --device cpu
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        args = ["--out", str(out), "--device", "cpu", "--tiny", "--threads", "1"]
        # the ceilings are measured at rrt benchmark's sizes, --tiny or not: on this CPU they
        # once took 15.9 s against the GPU's budget of 15, so they get room here (the overrun
        # is tested on uptrain_190m)
        budgets = ["--budget", "ceilings=300", "--budget", "uptrain_190m=0"]
        assert kit.main([*args, *budgets]) == 0
    finally:
        torch.set_num_threads(threads)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["device"] == "cpu"
    assert summary["environment"]["torch"] == torch.__version__
    assert summary["targets_judged"] is False
    results = {r["name"]: kit.CheckResult(**r) for r in summary["checks"]}
    assert list(results) == [check.name for check in kit.CHECKS]
    for name in ("ceilings", "uptrain_1b", "engine_1b", "checkpointing_1b"):
        assert results[name].status == "ok", results[name]
        assert results[name].figures and not results[name].error

    failed = results["convert_relax_1b"]  # recorded with its error and where; the run went on
    assert failed.status == "error" and failed.error == "RuntimeError: injected failure"
    assert "test_gpu_check.py" in failed.where and "broken" in failed.where
    assert "gpu_check.py" in failed.where  # and the kit's own frame that called it

    over = results["uptrain_190m"]  # stopped at the first step boundary past a zero budget
    assert over.status == "over budget" and "budget" in over.reason
    assert list(over.figures["variants"]) == ["full-size"]
    assert over.figures["variants"]["full-size"]["steps"] == 1
    assert over.figures["variants"]["full-size"]["stopped_by_budget"] is True

    skipped = results["data_parallel"]
    assert skipped.status == "skipped" and "needs 2 GPUs" in skipped.reason

    for variant in results["uptrain_1b"].figures["variants"].values():
        assert variant["steps"] >= 2 and variant["tokens_per_s"] > 0 and variant["mfu"] > 0
        assert variant["peak_memory_mib"] > 0
    systems = results["engine_1b"].figures["systems"]
    assert set(systems) == {
        "sequence_continuous", "vanilla", "hf_continuous", "recursive_sequence", "depthwise"
    }  # fmt: skip
    assert systems["sequence_continuous"]["decode_roofline_fraction"] > 0
    memory = results["checkpointing_1b"].figures["variants"]
    assert [row["gradient_checkpointing"] for row in memory.values()] == [True, False]

    targets = [kit.Verdict(**t) for r in results.values() for t in r.targets]
    names = " ".join(t.name for t in targets)
    assert "model FLOPs utilisation" in names and "decode roofline" in names
    assert "step time per token" in names
    assert {t.verdict for t in targets} == {kit.NOT_APPLICABLE}

    markdown = (out / "summary.md").read_text()
    for name in results:
        assert f"| {name} |" in markdown
    assert "not applicable (cpu)" in markdown and "injected failure" in markdown


def test_the_bundle_never_deletes_a_folder_it_did_not_write(tmp_path: Path, capsys):
    """scripts/gpu_bundle.py --out follows every command's rule: someone else's folder is
    refused before any work and left as it is."""
    spec = importlib.util.spec_from_file_location("gpu_bundle", SCRIPT.with_name("gpu_bundle.py"))
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert bundle.main(["--out", str(mine)]) == 2
    assert "a folder of files rrt did not write" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
