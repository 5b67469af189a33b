"""rrt benchmark: every system serves one workload; the JSON has one stable shape."""

from __future__ import annotations

import json

import pytest
import torch
from _embedded import corpus, tokenizer
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from rrt.benchmark import bench
from rrt.benchmark.bench import ROOFLINE_FIELDS, Workload, exit_ceiling
from rrt.cli import main
from rrt.method.convert import convert
from rrt.method.relax import relax

SYSTEM_KEYS = {
    "tokens_per_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s", "mean_exit_loop",
    "agreement", "peak_mem_mb", "threshold", "kv_fill", *ROOFLINE_FIELDS,
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    data = corpus(root)
    tok_dir = tokenizer(data, root)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
    )  # fmt: skip
    source = LlamaForCausalLM(cfg).eval()
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    source.save_pretrained(root / "source")
    model.save_pretrained(root / "model")
    for d in ("source", "model"):
        tok.save_pretrained(root / d)
    return root, data


def bench_args(served, out, *options: str) -> list[str]:
    """``rrt benchmark`` of the tiny relaxed model against its source into ``out``, on the CPU
    with 1 thread, with ``options``."""
    root, data = served
    return [
        "benchmark", "--model", str(root / "model"), "--baseline", str(root / "source"),
        "--data", str(data), "--out", str(out), "--threads", "1", "--device", "cpu", *options,
    ]  # fmt: skip


def test_every_system_serves_the_workload_into_one_json(served):
    root, _ = served
    out = root / "bench.json"
    args = bench_args(
        served, out, "--requests", "6", "--max-new-tokens", "6", "--max-prompt-tokens", "20",
        "--max-batch", "4", "--calibration-documents", "10", "--agreement-targets", "0.5,0.9",
    )  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {"workload", "hardware", "systems", "calibration"} <= set(result)
    # Exits calibrated on what serving decodes: each of the 10 held-out prompts continued by
    # the model's own full-depth greedy tokens, as many as a request asks (6 at most).
    calibration = result["calibration"]
    assert calibration["documents"] == 10 and 10 <= calibration["tokens"] <= 60
    for target, row in calibration["targets"].items():
        assert row["agreement"] >= float(target)
        # Exits with propagated keys have a threshold of their own, checked by serving the
        # held-out prompts (at most 7 served runs), never below the exact keys' threshold.
        propagated = row["propagate"]
        assert propagated["served_agreement"] >= float(target)
        assert propagated["threshold"] >= row["threshold"] and propagated["served_runs"] <= 7
        name = f"depthwise_exit_{propagated['threshold']:g}_propagate"
        assert result["systems"][name]["agreement_target"] == float(target)
    systems = result["systems"]
    names = set(systems)
    base = {"vanilla", "vanilla_compiled", "hf_continuous", "sequence_continuous",
            "recursive_sequence", "depthwise"}  # fmt: skip
    assert base | {"simulated"} <= names
    exits = [n for n in names if n.startswith("depthwise_exit_")]
    assert {n.rsplit("_", 1)[1] for n in exits} == {"ride", "propagate"}
    for name, row in systems.items():
        assert "error" not in row, (name, row)
        assert set(row) >= SYSTEM_KEYS, name
        assert row["tokens_per_s"] > 0
    total = result["workload"]["output_tokens_total"]
    for name in base | set(exits):
        assert systems[name]["output_tokens"] == total
    # Full-depth systems are greedy decoding of their model: exact agreement, same tokens.
    for name in base:
        assert systems[name]["agreement"] == 1.0, name
    for name in ("vanilla", "vanilla_compiled", "hf_continuous"):
        assert systems[name]["sequence_agreement"] == 1.0, name
    # generate's compiled path: its compilation timed apart, before the clock
    assert systems["vanilla_compiled"]["compile_s"] > 0
    assert systems["vanilla"].get("compile_s") is None
    assert systems["recursive_sequence"]["sequence_agreement"] == 1.0
    assert systems["depthwise"]["mean_exit_loop"] == 2.0
    for name in exits:
        assert 1.0 <= systems[name]["mean_exit_loop"] <= 2.0
        assert systems[name]["threshold"] is not None
    assert systems["simulated"]["mean_exit_loop"] <= 2.0
    # Exits against depth-wise without them, measured and as their counts predict.
    depthwise = systems["depthwise"]
    for name in exits:
        row = systems[name]
        assert row["x_depthwise"] == row["tokens_per_s"] / depthwise["tokens_per_s"]
        counted = row["roofline_tokens_per_s"] / depthwise["roofline_tokens_per_s"]
        assert row["x_depthwise_counted"] == counted
    assert all(systems[n].get("x_depthwise") is None for n in base)
    # The best the counts allow exits: every token leaving after loop 1 does less a token than
    # no exit.
    ceiling = result["exit_ceiling"]
    assert ceiling["rows"] == 4
    assert ceiling["all_exit_x_depthwise"] > 1.0
    assert ceiling["all_exit_x_sequence_continuous"] == pytest.approx(
        ceiling["all_exit_tokens_per_s"] / ceiling["sequence_continuous_tokens_per_s"]
    )
    # The roofline: the machine's measured ceilings, and each system's counts against them
    # wherever its steps can be seen (not inside transformers' continuous batching).
    peaks = result["hardware"]["peaks"]
    assert peaks["memory_gb_per_s"] > 0 and peaks["matmul_gflop_per_s"] > 0
    for name in base - {"hf_continuous"} | set(exits):
        row = systems[name]
        assert row["roofline_bound"] in ("memory", "compute"), name
        assert 0 < row["roofline_fraction"] == row["tokens_per_s"] / row["roofline_tokens_per_s"]
        assert row["flops_per_token"] > 0 and row["decode_gb_per_s"] > 0, name
    for name in ("hf_continuous", "simulated"):
        assert all(systems[name][k] is None for k in ROOFLINE_FIELDS), name
    # Static batches compute their padding: more FLOPs a token than the engine, same model.
    assert systems["vanilla"]["flops_per_token"] > systems["sequence_continuous"]["flops_per_token"]


def test_the_exit_ceiling_counts_a_token_per_row_and_depth_whatever_the_batch():
    """Without exits each row leaves a token every ``loops`` steps, even with fewer rows than
    loops, so each row more shares the weights' reads and raises tokens/s; every token leaving
    after loop 1 does less a token at any batch. (The old count split the rows evenly over the
    loops: 1 row counted as 2 rows leaving a token a step, as fast as 2 rows, and exits came
    out slower.)"""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
    )  # fmt: skip
    source = LlamaForCausalLM(cfg).eval()
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    work = Workload(prompts=[[1] * 8], outputs=[4], arrivals_s=[0.0])
    memory_bound = {"memory_gb_per_s": 1.0, "matmul_gflop_per_s": 1e9}
    ceilings = [exit_ceiling(model, source, work, rows, memory_bound) for rows in (1, 2, 3, 4)]
    assert [c["rows"] for c in ceilings] == [1, 2, 3, 4]
    assert {c["position"] for c in ceilings} == {10}
    depthwise = [c["depthwise_tokens_per_s"] for c in ceilings]
    assert depthwise == sorted(set(depthwise))
    assert all(c["all_exit_x_depthwise"] > 1.0 for c in ceilings)
    # (c) reads the full-size model once a step for every row: more bytes than one recursive
    # pass, fewer than two.
    for c in ceilings:
        assert 0.5 < c["depthwise_tokens_per_s"] / c["sequence_continuous_tokens_per_s"] < 1.0


def test_bad_benchmark_settings_are_one_line(served, capsys):
    root, data = served
    args = ["benchmark", "--model", str(root / "source"), "--data", str(data),
            "--out", str(root / "x.json"), "--systems", "depthwise"]  # fmt: skip
    assert main(args) == 2
    assert "is not a recursive model" in capsys.readouterr().err
    args = ["benchmark", "--model", str(root / "model"), "--data", str(data),
            "--out", str(root / "x.json"), "--systems", "warp"]  # fmt: skip
    assert main(args) == 2
    assert "'warp' is not allowed; choose one of all, vanilla" in capsys.readouterr().err
    args = ["benchmark", "--model", str(root / "model"), "--baseline", str(root / "source"),
            "--data", str(data), "--out", str(root / "x.json"),
            "--systems", "llama_cpp"]  # fmt: skip
    assert main(args) == 2
    assert "system llama_cpp needs --gguf" in capsys.readouterr().err
    assert main([*args, "--gguf", str(root / "none.gguf")]) == 2
    assert f"--gguf {root / 'none.gguf'}: no such file" in capsys.readouterr().err


def test_the_benchmark_serves_in_the_dtype_asked_for(served):
    """--dtype bf16 (a GPU's default) on the CPU: every system serves bf16, and the same
    schedule reads exactly half the bytes of fp32 for the same FLOPs."""
    root, _ = served
    rows = {}
    for dtype in ("fp32", "bf16"):
        out = root / f"bench-{dtype}.json"
        args = bench_args(
            served, out, "--requests", "4", "--max-new-tokens", "5", "--max-prompt-tokens", "12",
            "--max-batch", "4", "--dtype", dtype, "--systems", "sequence_continuous,depthwise",
        )  # fmt: skip
        assert main(args) == 0
        result = json.loads(out.read_text())
        rows[dtype] = result["systems"]
        assert result["hardware"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[dtype]
    for name in ("sequence_continuous", "depthwise"):
        fp32, bf16 = rows["fp32"][name], rows["bf16"][name]
        assert bf16["flops_per_token"] == fp32["flops_per_token"]
        assert bf16["bytes_per_token"] == fp32["bytes_per_token"] / 2


@pytest.mark.slow
def test_compile_runs_the_engines_steps_compiled_and_times_compilation_apart(served):
    """--compile: the engine's tokens are still full-depth greedy (agreement 1, and generate's
    output), its compilation reported apart; generate's own system is unchanged."""
    root, _ = served
    out = root / "bench-compiled.json"
    args = bench_args(
        served, out, "--requests", "4", "--max-new-tokens", "5", "--max-prompt-tokens", "12",
        "--max-batch", "1", "--compile", "--systems", "vanilla,sequence_continuous",
    )  # fmt: skip
    assert main(args) == 0
    systems = json.loads(out.read_text())["systems"]
    assert systems["sequence_continuous"]["compile_s"] > 0
    assert systems["sequence_continuous"]["agreement"] == 1.0
    assert systems["sequence_continuous"]["sequence_agreement"] == 1.0
    assert systems["vanilla"].get("compile_s") is None


def test_a_failed_system_fails_the_benchmark_unless_errors_are_allowed(served, capsys):
    """A KV budget too small for one request: every engine system fails. The benchmark names
    them and writes nothing (the workflow must not take it as done); --allow-errors keeps the
    partial result, each failed system with its error."""
    root, _ = served
    out = root / "tiny-kv.json"
    args = bench_args(
        served, out, "--requests", "2", "--max-new-tokens", "3", "--max-prompt-tokens", "12",
        "--kv-cache-mb", "0.0001", "--systems", "vanilla,depthwise",
    )  # fmt: skip
    assert main(args) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress lines
    assert last.startswith("rrt benchmark: error: 1 of 2 systems failed (depthwise); depthwise: ")
    assert "--allow-errors" in last and not out.exists()
    assert main([*args, "--allow-errors"]) == 0
    systems = json.loads(out.read_text())["systems"]
    assert "error" in systems["depthwise"] and systems["vanilla"]["tokens_per_s"] > 0


def test_repeats_serve_the_workload_again_and_report_the_median_run(served):
    """--repeats 3: each system serves the whole workload three times after its warm-up; its
    row is the run of median time, every run's seconds beside it, its tokens those of a run."""
    root, _ = served
    out = root / "repeats.json"
    args = bench_args(
        served, out, "--requests", "3", "--max-new-tokens", "4", "--max-prompt-tokens", "12",
        "--max-batch", "2", "--repeats", "3",
        "--systems", "vanilla,hf_continuous,sequence_continuous,depthwise",
    )  # fmt: skip
    assert main(args) == 0
    systems = json.loads(out.read_text())["systems"]
    for name in ("vanilla", "hf_continuous", "sequence_continuous", "depthwise"):
        row = systems[name]
        runs = row["seconds_runs"]
        assert len(runs) == 3 and row["seconds"] == sorted(runs)[1], name
        assert row["tokens_per_s"] == pytest.approx(row["output_tokens"] / row["seconds"])
    assert systems["sequence_continuous"]["agreement"] == 1.0
    assert systems["depthwise"]["agreement"] == 1.0


def test_median_run_takes_the_middle_time_and_keeps_every_runs_in_order():
    from rrt.benchmark.bench import Served, median_run

    def runs(*times: float) -> list[Served]:
        return [Served([], [], [], [], t, None, {}) for t in times]

    chosen = median_run(runs(3.0, 1.0, 2.0))
    assert chosen.seconds == 2.0 and chosen.extra["seconds_runs"] == [3.0, 1.0, 2.0]
    chosen = median_run(runs(3.0, 1.0, 2.0, 5.0))
    assert chosen.seconds == 2.0 and chosen.extra["seconds_runs"] == [3.0, 1.0, 2.0, 5.0]


def test_the_lowest_threshold_reaching_a_target_is_found_in_few_served_runs():
    """A bisection over the calibration's thresholds (ascending): each run measures one, and
    the lowest that reaches the target is kept; the last threshold exits nothing and is never
    served."""
    candidates = [i / 64 for i in range(65)]
    calls = []

    def measure(threshold: float) -> float:
        calls.append(threshold)
        return 0.9 + threshold / 10  # 0.98 from 0.8 on: candidate 52 (0.8125) is the lowest

    found = bench.lowest_reaching(candidates, 0.98, measure)
    assert found["threshold"] == 0.8125 and found["served_agreement"] == pytest.approx(0.98125)
    assert found["served_runs"] == len(calls) == 7
    assert 1.0 not in calls
    # the lowest candidate already reaches it: one run
    assert bench.lowest_reaching(candidates, 0.5, measure)["served_runs"] == 1
    # none reaches it but the last, never served: agreement 1 (no exit)
    never = bench.lowest_reaching(candidates, 0.999, lambda t: 0.9)
    assert never["threshold"] == 1.0 and never["served_agreement"] == 1.0
