"""rrt report: tables that match the result files, paired tests, gaps with reasons, one line per
malformed file, throughput from benchmark files, and HTML reproducible byte for byte."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from _report_fixtures import (
    BENCHMARK,
    MISSING,
    MODELS,
    PPL,
    SWEEP,
    TASKS,
    make_results,
    write_evaluation,
)

from rrt.cli import main
from rrt.report import ReportConfig, build, stats
from rrt.report.compose import compose
from rrt.report.record import config_hash, write_record
from rrt.report.results import parse_name, read_evaluation

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def report(results: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reports") / "toy"
    build(results, out, ReportConfig())
    return out


def _csv(report: Path, name: str) -> pl.DataFrame:
    return pl.read_csv(report / "tables" / f"{name}.csv", infer_schema_length=None)


# --- statistics ------------------------------------------------------------------------------


def test_students_t_and_the_exact_binomial_match_known_values():
    # three differences with mean 2/sqrt(3) and stderr 1/sqrt(3): t = 2 on 2 degrees of freedom
    three = [i - 1 + 2 / math.sqrt(3) for i in range(3)]
    assert stats.paired_t(three).p == pytest.approx(0.183503, abs=1e-6)
    # eleven with mean 2.5 and stderr 1: t = 2.5 on 10 degrees of freedom
    assert stats.paired_t([i - 2.5 for i in range(11)]).p == pytest.approx(0.031446, abs=1e-6)
    assert stats.normal_two_sided(1.959964) == pytest.approx(0.05, abs=1e-5)  # t's limit
    # McNemar on 10 disagreements, 2 one way and 8 the other: P(X <= 2 or X >= 8), X ~ B(10, 1/2)
    first, second = [True] * 2 + [False] * 8, [False] * 2 + [True] * 8
    assert stats.mcnemar(first, second).p == pytest.approx(2 * 56 / 1024)
    assert stats.mcnemar([True] * 5 + [False] * 5, [False] * 5 + [True] * 5).p == 1.0


def test_a_paired_test_separates_models_whose_stderrs_overlap():
    """Two models right on the same 1,000 items but for 30 the second also gets: 3 points apart,
    within two unpaired stderrs (about 2.2 each), yet every disagreement favours the second."""
    first = [i < 500 for i in range(1000)]
    second = [i < 530 for i in range(1000)]
    paired = stats.mcnemar(second, first)
    assert paired.delta == pytest.approx(0.03) and paired.p < 1e-8
    se = math.sqrt(2 * 0.5 * 0.5 / 999)
    assert stats.normal_two_sided(0.03 / se) > 0.05


# --- tables against the files ----------------------------------------------------------------


def test_the_models_table_matches_the_metric_files(results: Path, report: Path):
    models = _csv(report, "models")
    for name, (_, ce, non_embedding, lora, _) in MODELS.items():
        row = models.filter(pl.col("model") == name).row(0, named=True)
        evaluation = json.loads((results / "eval" / f"{name}.json").read_text())
        assert row["suite_average"] == pytest.approx(evaluation["suites"]["embedded"]["average"])
        assert row["held_out_ce"] == pytest.approx(ce)
        assert row["non_embedding_params"] == non_embedding
        assert (row["lora_params"] or 0) == lora
    scores = _csv(report, "scores").filter(pl.col("exit_loop").is_null())
    for name in MODELS:
        evaluation = json.loads((results / "eval" / f"{name}.json").read_text())
        for task, spec in evaluation["tasks"].items():
            value = scores.filter((pl.col("model") == name) & (pl.col("task") == task))["value"]
            assert value.to_list() == [pytest.approx(spec["headline"]["value"])]
    md = (report / "report.md").read_text()
    source_up = json.loads((results / "eval" / "source.up.json").read_text())
    cloze = source_up["tasks"]["embedded_cloze"]
    shown = f"{100 * cloze['headline']['value']:.1f} ± {100 * cloze['stderr']['acc']:.1f}"
    assert "| source.up |" in md and shown in md


def test_differences_are_paired_over_the_same_items(results: Path, report: Path):
    comparisons = _csv(report, "comparisons")
    row = comparisons.filter(
        (pl.col("model") == "recursive-B2-stepwise.up")
        & (pl.col("reference") == "reduced-B2-uptrain")
        & (pl.col("measure") == "embedded_cloze")
    ).row(0, named=True)
    mine = read_evaluation(results / "eval" / "recursive-B2-stepwise.up.json", results)
    theirs = read_evaluation(results / "eval" / "reduced-B2-uptrain.json", results)
    a = [mine.samples["embedded_cloze"][i].correct for i in sorted(mine.samples["embedded_cloze"])]
    b = [
        theirs.samples["embedded_cloze"][i].correct for i in sorted(mine.samples["embedded_cloze"])
    ]
    expected = stats.mcnemar(a, b)
    assert row["p"] == pytest.approx(expected.p) and row["delta"] == pytest.approx(expected.delta)
    assert row["test"].startswith("McNemar") and row["significant"]
    average = comparisons.filter(
        (pl.col("model") == "recursive-B2-stepwise.up")
        & (pl.col("reference") == "reduced-B2-uptrain")
        & (pl.col("measure") == "average")
    )
    assert average["test"].to_list() == ["paired z over every item of the averaged tasks"]


def test_the_ablation_kd_and_exit_tables_come_from_their_models(report: Path):
    init = _csv(report, "init")
    assert sorted(init["init"].to_list()) == ["average", "stepwise"]
    rank = _csv(report, "rank")
    assert rank["rank"].cast(pl.String).to_list() == [
        "0",
        "8",
        "16",
        "32",
    ]  # the recursive model, then the ranks
    assert rank.filter(pl.col("rank") == 16)["suite_average"].to_list() == [None]  # a gap
    kd = _csv(report, "kd")
    for (weight, seed), ce in SWEEP.items():
        row = kd.filter((pl.col("kd_weight") == weight) & (pl.col("seed") == seed))
        assert row["held_out_ce"].to_list() == [pytest.approx(ce)]
    exits = _csv(report, "exits")
    after = exits.filter(pl.col("measure") == "held-out ce (after)").sort("exit_loop")
    assert after["value"].to_list() == [pytest.approx(1.15), pytest.approx(1.07)]
    assert set(exits.filter(pl.col("measure") == "average")["exit_loop"]) == {1, 2}


def test_models_evaluated_at_init_are_compared_with_their_uptrained_selves(
    results: Path, tmp_path: Path
):
    """evaluate.at_init: a table of each model before and after uptraining, read from both
    evaluations; without such evaluations the section says why it is empty."""
    empty = next(s for s in compose(results, 0.05).sections if s.id == "uptraining")
    assert "evaluate.at_init" in empty.blocks[0]
    copy = tmp_path / "toy"
    shutil.copytree(results, copy)
    before = {"recursive-B2-stepwise": 0.30, "relaxed-B2-average-r8": 0.35}
    for name, skill in before.items():
        write_evaluation(copy, name, skill, MODELS[f"{name}.up"][2:4])
    table = compose(copy, 0.05).data["uptraining"]
    assert table["model"].to_list() == list(before)
    for name in before:
        row = table.filter(pl.col("model") == name).row(0, named=True)
        init = read_evaluation(copy / "eval" / f"{name}.json", copy)
        after = read_evaluation(copy / "eval" / f"{name}.up.json", copy)
        assert row["perplexity_task"] == PPL
        assert row["perplexity_init"] == pytest.approx(init.scores[PPL].value)
        assert row["perplexity_uptrained"] == pytest.approx(after.scores[PPL].value)
        assert row["average_init"] == pytest.approx(init.average)
        assert row["perplexity_init"] > row["perplexity_uptrained"]  # less skill, higher ppl


def test_the_claims_are_computed_from_the_numbers(results: Path, tmp_path: Path):
    checks = compose(results, 0.05).data["checks"]
    stepwise = checks.filter(pl.col("claim") == "stepwise")
    assert stepwise["holds"].to_list() == [True]  # the fixture's stepwise beats average
    # the same results with stepwise made worse on every measure: the verdict follows
    copy = tmp_path / "results" / "toy"
    shutil.copytree(results, copy)
    _swap(copy, "recursive-B2-stepwise.up", "recursive-B2-average.up")
    report = compose(copy, 0.05)
    assert report.data["checks"].filter(pl.col("claim") == "stepwise")["holds"].to_list() == [False]
    summary = next(s for s in report.sections if s.id == "summary")
    table = next(b for b in summary.blocks if getattr(b, "id", None) == "claims")
    verdict = table.frame.filter(pl.col("paper's claim").str.starts_with("Stepwise"))
    assert verdict["this run"].to_list()[0].startswith("not reproduced")


def _swap(results: Path, a: str, b: str) -> None:
    """Exchange two models' evaluations and metrics (names kept)."""
    for folder, suffixes in ((results / "eval", (".json", ".samples.jsonl")),):
        for suffix in suffixes:
            pa, pb = folder / f"{a}{suffix}", folder / f"{b}{suffix}"
            ta, tb = pa.read_text(), pb.read_text()
            pa.write_text(tb.replace(f"{b}.samples", f"{a}.samples"))
            pb.write_text(ta.replace(f"{a}.samples", f"{b}.samples"))
    ma, mb = results / "models" / a / "metrics.json", results / "models" / b / "metrics.json"
    ta, tb = ma.read_text(), mb.read_text()
    ma.write_text(tb)
    mb.write_text(ta)


# --- gaps and malformed files -----------------------------------------------------------------


def test_a_missing_result_is_a_gap_with_its_reason(report: Path):
    gaps = _csv(report, "gaps")
    reasons = dict(zip(gaps["missing result"], gaps["reason"], strict=True))
    assert set(reasons) == {f"eval/{MISSING}.json", f"models/{MISSING}"}
    failure = "rrt uptrain: error: CUDA out of memory (a toy failure)"
    assert failure in reasons[f"models/{MISSING}"]
    assert f"models/{MISSING} is missing" in reasons[f"eval/{MISSING}.json"]
    row = _csv(report, "models").filter(pl.col("model") == MISSING).row(0, named=True)
    assert row["suite_average"] is None and row["status"].startswith("missing: not run")
    html = (report / "report.html").read_text()
    assert html.count(failure) >= 2  # in the models table and in the list of gaps


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "eval" / "source.json").write_text('{"tasks": '), "not valid JSON"),
        (
            lambda r: (r / "eval" / "source.json").write_text('{"tasks": {}, "suites": {}}'),
            "no 'model' (not an rrt evaluate report)",
        ),
        (
            lambda r: (r / "models" / "source.up" / "steps.jsonl").write_text('{"step": 1}\nxx\n'),
            "line 2 is not a JSON object",
        ),
        (
            lambda r: (r / "benchmarks" / "toy.json").write_text(
                json.dumps({**BENCHMARK, "systems": {"vanilla": {"latency_p50_s": 1.0}}})
            ),
            "systems.vanilla: no 'tokens_per_s'",
        ),
        (
            lambda r: (r / "eval" / "source.up.samples.jsonl").write_text('{"task": 3}\n'),
            "line 1 lacks task, doc_id or loglikelihoods",
        ),
    ],
    ids=["truncated json", "not an evaluation", "bad step log", "bad benchmark", "bad samples"],
)
def test_a_malformed_file_is_one_line_naming_it(damage, message, results, tmp_path, capsys):
    copy = tmp_path / "results" / "toy"
    shutil.copytree(results, copy)
    damage(copy)
    assert main(["report", "--results", str(copy), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rrt report: error: toy/"), err
    assert message in err[0]
    assert not (tmp_path / "out" / "report.html").exists()


# --- throughput ----------------------------------------------------------------------------


def test_the_throughput_table_reads_the_benchmark_files(report: Path):
    throughput = _csv(report, "throughput")
    vanilla = BENCHMARK["systems"]["vanilla"]["tokens_per_s"]
    for system, values in BENCHMARK["systems"].items():
        row = throughput.filter(pl.col("system") == system).row(0, named=True)
        if "error" in values:
            assert row["tokens_per_s"] is None and "not supported" in row["error"]
            continue
        assert row["tokens_per_s"] == values["tokens_per_s"]
        assert row["ratio_to_vanilla"] == pytest.approx(values["tokens_per_s"] / vanilla)
        assert row["agreement"] == values["agreement"]
    assert throughput.filter(pl.col("system") == "depthwise_exit_0.9_propagate")[
        "kv_fill"
    ].to_list() == ["propagate"]
    md = (report / "report.md").read_text()
    assert "| depthwise_exit_0.7_ride |" in md and "| 2.60 |" in md
    assert (report / "plots" / "throughput-toy.png").is_file()


def test_a_benchmark_at_another_size_gets_its_own_table(tmp_path: Path):
    """benchmark.sizes: MODEL@b4-bf16.json beside MODEL.json, each its table and figure."""
    results = make_results(tmp_path)
    main = results / "benchmarks" / "toy.json"
    (results / "benchmarks" / "toy@b4-bf16.json").write_text(main.read_text())
    out = tmp_path / "out"
    build(results, out, ReportConfig())
    md = (out / "report.md").read_text()
    assert "benchmarks/toy.json" in md and "benchmarks/toy@b4-bf16.json" in md
    assert set(_csv(out, "throughput")["benchmark"]) == {"toy", "toy@b4-bf16"}
    assert (out / "plots" / "throughput-toy@b4-bf16.png").is_file()


def test_without_benchmark_files_the_report_says_so(tmp_path: Path):
    results = make_results(tmp_path, benchmark=False)
    out = tmp_path / "out"
    build(results, out, ReportConfig())
    assert "No throughput results" in (out / "report.md").read_text()
    assert (
        not list((out / "plots").glob("throughput*"))
        and not (out / "tables" / "throughput.csv").exists()
    )


# --- the files ------------------------------------------------------------------------------


def test_the_html_is_reproducible_byte_for_byte(results: Path, report: Path, tmp_path: Path):
    """The same results, copied elsewhere and compiled again, give the same bytes."""
    copy = tmp_path / "elsewhere" / "results" / "toy"
    shutil.copytree(results, copy)
    again = tmp_path / "again"
    build(copy, again, ReportConfig())
    files = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (report / name).read_bytes() == (again / name).read_bytes(), name
    html = (report / "report.html").read_text()
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b|\d\d:\d\d:\d\d", html)  # no dates or times
    assert str(tmp_path) not in html


def test_every_plot_is_embedded_in_the_self_contained_html(report: Path):
    html = (report / "report.html").read_text()
    import base64

    plots = sorted(p.stem for p in (report / "plots").glob("*.png"))
    assert plots == ["exits", "loss", "size", "throughput-toy"]
    for name in plots:
        data = base64.b64encode((report / "plots" / f"{name}.png").read_bytes()).decode()
        assert f'<figure id="figure-{name}"><img' in html and data in html
    assert "<script" not in html and 'src="http' not in html and "<link" not in html
    for table in ("claims", "checks", "models", "tasks", "gaps", "init", "rank", "kd", "exits"):
        assert f'<table id="table-{table}">' in html


def test_the_report_states_its_provenance(report: Path):
    md = (report / "report.md").read_text()
    assert config_hash({"experiment": "toy", "report": {"alpha": 0.05}}) in md
    assert "0123456789abcdef0123456789abcdef01234567" in md
    assert "Toy CPU, 2 cores, 8 GB" in md and "torch 2.13.0+cpu" in md


def test_the_record_lists_expected_results_relative_to_the_results_folder(tmp_path: Path):
    results = tmp_path / "results" / "x"
    config = {"experiment": "x", "b": [1, 2]}
    path = write_record(results, config, {"models": [f"{results}/models/a", "/elsewhere/source"]})
    record = json.loads(path.read_text())
    assert record["expected"] == {"models": ["models/a"]}
    assert record["config_sha256"] == config_hash({"b": [1, 2], "experiment": "x"})
    stamp = path.stat().st_mtime_ns
    write_record(results, config, {"models": [f"{results}/models/a"]})
    assert path.stat().st_mtime_ns == stamp  # unchanged config: the file is left alone


def test_model_names_say_what_a_model_is():
    name = parse_name("relaxed-B2-average-rfull.up.ee")
    assert (name.kind, name.loops, name.init, name.rank, name.early_exit) == (
        "relaxed", 2, "average", "full", True,
    )  # fmt: skip
    assert parse_name("recursive-B3-lower.up-t131072-w0.5-s2").sweep == (131072, 0.5, 2)
    assert parse_name("reduced-B2-source").budget == "source"


def test_rrt_report_takes_its_options_from_the_schema():
    result = subprocess.run(
        [sys.executable, "-m", "rrt", "report", "--help"], capture_output=True, text=True
    )
    assert (
        result.returncode == 0 and "--alpha" in result.stdout and "(default: 0.05)" in result.stdout
    )


# --- the workflow ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_source_runs_end_to_end_to_the_report_and_snakemakes_own(tmp_path: Path):
    """The smoke experiment from a user's own model folder (source: {kind: local}): every
    default baseline (the full-size model uptrained from the folder itself, the reduced-size
    model --like it), the report with no gaps, and the folder left as it was."""
    from test_workflow import SMOKE, snakemake

    made = snakemake(tmp_path / "make", "results/smoke/models/source", "--cores", "2",
                     "--configfile", str(SMOKE))  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    mine = shutil.copytree(tmp_path / "make" / "results" / "smoke" / "models" / "source",
                           tmp_path / "my-model")  # fmt: skip
    before = {p.name: p.read_bytes() for p in mine.iterdir() if p.is_file()}
    config = yaml.safe_load(SMOKE.read_text())
    config |= {"experiment": "local", "source": {"kind": "local", "path": str(mine)}}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "local.yaml"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert {p.name: p.read_bytes() for p in mine.iterdir() if p.is_file()} == before
    assert not (tmp_path / "results" / "local" / "models" / "source").exists()
    out = tmp_path / "reports" / "local"
    html = (out / "report.html").read_text()
    assert "rrt report: local" in html and (out / "plots" / "size.png").is_file()
    record = json.loads((tmp_path / "results" / "local" / "experiment.json").read_text())
    assert record["config"]["source"]["path"] == str(mine)
    assert record["config_sha256"] in html
    models = pl.read_csv(out / "tables" / "models.csv")
    assert {"source", "source.up", "reduced-B2-uptrain"} <= set(models["model"])
    assert models["status"].fill_null("").to_list() == [""] * models.height  # no gaps
    zipped = snakemake(tmp_path, "--configfile", str(tmp_path / "local.yaml"), "--report",
                       "snakemake-report.zip")  # fmt: skip
    assert zipped.returncode == 0, zipped.stderr[-3000:]
    assert (tmp_path / "snakemake-report.zip").stat().st_size > 10_000
    assert TASKS  # the smoke suite is the embedded one, like the fixture's
