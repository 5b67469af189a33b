"""Names and files that one stage writes and another reads: one definition, checked both ways."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from rrt import config as schema
from rrt import experiment, names
from rrt.contracts import BenchmarkResult, ContractError, ServedSystem, TrainingMetrics

REPO = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "config_file", ["config/config.yaml", "config/experiments/uptrain-ablation.yaml"]
)
def test_every_model_an_experiment_makes_round_trips_through_its_name(config_file):
    config = schema.resolve(yaml.safe_load((REPO / config_file).read_text()))
    made = experiment.made(config) + experiment.swept(config)
    assert made, "the experiment makes no model"
    for name in made:
        parsed = names.parse(name)
        assert parsed.kind != "other", name
        assert parsed.name == name
    for name, loops in experiment.early_exit(config):
        assert names.parse(name).early_exit and names.parse(name).loops == loops
        stem = names.exit_evaluation(name, 1)
        assert names.parse_exit_evaluation(stem) == (name, 1)
    if experiment.swept(config):
        points = {names.parse(n).sweep for n in experiment.swept(config)}
        assert points == set(experiment.sweep_points(config))


def test_made_names_say_what_the_model_is():
    n = names.early_exit(names.uptrained(names.relaxed(2, "average", "full")))
    assert n.name == "relaxed-B2-average-rfull.up.ee"
    assert (n.kind, n.loops, n.init, n.rank, n.uptrained, n.early_exit) == (
        "relaxed", 2, "average", "full", True, True,
    )  # fmt: skip
    assert names.relaxed(3, "stepwise", 0).name == "recursive-B3-stepwise"
    assert names.parse("reduced-B2-uptrain").budget == "uptrain"
    assert names.parse("my-own-model").kind == "other"
    assert names.parse_variant("-t131072-w0.5-s1") == names.Sweep(131072, 0.5, 1)
    with pytest.raises(ValueError, match="not a sweep suffix"):
        names.parse_variant("-x")


def test_the_names_constants_are_the_schemas_choices():
    defs = schema.schema()["$defs"]
    assert tuple(defs["dtype"]["enum"]) == names.DTYPES
    for served in ("benchmark.dtype", "train.precision"):
        assert schema.node(served)["enum"] == defs["dtype"]["enum"]
    assert schema.node("benchmark.sizes")["items"]["properties"]["dtype"]["$ref"] == "#/$defs/dtype"
    assert tuple(defs["init"]["enum"]) == names.INITS
    assert tuple(schema.node("benchmark.kv_fills")["items"]["enum"]) == names.KV_FILLS


def test_benchmark_names_round_trip_with_their_own_size():
    for which in (names.Benchmark("relaxed-B2-average-r32.up.ee"),
                  names.Benchmark("relaxed-B2-average-r32.up.ee", 4, "bf16")):  # fmt: skip
        assert names.parse_benchmark(which.stem) == which
    assert names.Benchmark("m.up.ee", 64, "fp32").stem == "m.up.ee@b64-fp32"
    with pytest.raises(ValueError, match="not a benchmark's name"):
        names.parse_benchmark("m@b4-int8")


def test_system_names_round_trip_with_threshold_and_kv_fill():
    system = names.exit_system(0.267984, "propagate")
    assert system.name == "depthwise_exit_0.267984_propagate"
    assert names.parse_system(system.name) == system
    assert names.parse_system("sequence_continuous") == names.System("sequence_continuous")
    with pytest.raises(ValueError, match="ride, propagate"):
        names.exit_system(0.5, "skip")


METRICS = {
    "steps": 4, "tokens": 1024, "train_seconds": 2.5, "tokens_per_second": 409.6,
    "processes": 1, "peak_memory_mb": 512.0, "config": {"lr": 0.001},
    "run": {"loss": {"kd_weight": 0.5}}, "validation": {"ce": 1.25},
    "held_out_exits": {"ce_loop1": 1.5, "acc_loop1": 0.4},
}  # fmt: skip


def test_a_writer_that_renames_a_field_is_refused_where_it_writes():
    TrainingMetrics.from_dict(METRICS, "metrics.json", strict=True)
    renamed = {**METRICS, "tokens_per_s": METRICS["tokens_per_second"]}
    del renamed["tokens_per_second"]
    with pytest.raises(ContractError, match=r"metrics.json: 'tokens_per_s' is not a field"):
        TrainingMetrics.from_dict(renamed, "metrics.json", strict=True)
    with pytest.raises(ContractError, match=r"metrics.json: no 'tokens_per_second'"):
        TrainingMetrics.from_dict(renamed, "metrics.json")  # a reader misses it too
    system = ServedSystem(tokens_per_s=10.0, kv_fill="ride").to_dict()
    system["kv_mode"] = system.pop("kv_fill")
    with pytest.raises(ContractError, match="'kv_mode' is not a field"):
        ServedSystem.from_dict(system, "bench.json: systems.x", strict=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(tokens="many"), r"tokens is 'many', of the wrong type"),
        (lambda m: m.update(tokens=-5.5), r"tokens is -5.5, of the wrong type"),
        (lambda m: m["validation"].update(ce=float("nan")), r"validation.ce is nan, not a finite"),
        (lambda m: m.pop("run"), r"no 'run'"),
        (lambda m: m.update(steps=True), r"steps is True, of the wrong type"),
    ],
)
def test_a_reader_names_the_file_and_key_of_a_bad_value(tmp_path, change, message):
    metrics = copy.deepcopy(METRICS)
    change(metrics)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    with pytest.raises(ContractError, match=message) as err:
        TrainingMetrics.read(path, "models/x/metrics.json")
    assert str(err.value).startswith("models/x/metrics.json") and "\n" not in str(err.value)


def test_a_benchmark_round_trips_and_a_failed_system_keeps_only_its_error():
    result = BenchmarkResult(
        model="m", baseline=None, loops=2, workload={}, hardware={}, calibration=None,
        systems={
            "depthwise": ServedSystem(tokens_per_s=100.0, agreement=1.0),
            "vanilla": ServedSystem(error="UserError: no baseline"),
        },
    )  # fmt: skip
    data = json.loads(json.dumps(result.to_dict()))
    assert data["systems"]["vanilla"] == {"error": "UserError: no baseline"}
    assert BenchmarkResult.from_dict(data, "b.json", strict=True) == result
    data["systems"]["depthwise"].pop("tokens_per_s")
    with pytest.raises(ContractError, match="systems.depthwise: no 'tokens_per_s' and no 'error'"):
        BenchmarkResult.from_dict(data, "b.json")
