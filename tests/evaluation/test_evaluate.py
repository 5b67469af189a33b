"""Evaluation through lm-eval: the report matches the harness; suites, local data, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _eval_fixtures import EMBEDDED_TASKS, make_embedded_tasks, make_model_dir, make_paper_data

from rrt import store
from rrt.cli import main
from rrt.errors import UserError
from rrt.evaluation.evaluate import (
    EvaluateConfig,
    evaluate,
    load_suites,
    write_paper_overrides,
)

BATCH = 4
BOOTSTRAP = 100


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_embedded_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_paper_data(tmp_path_factory.mktemp("paper-data"))


@pytest.fixture(scope="module")
def loaded(model_dir: Path):
    return store.load_model(model_dir), store.load_tokenizer(model_dir)


def _lm_eval_reference(model_dir: Path, task_dir: Path, tasks: list[str]) -> dict:
    """lm-eval's own run: the harness loads the model from its directory itself."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32"},
        tasks=tasks,
        device="cpu",
        batch_size=BATCH,
        bootstrap_iters=BOOTSTRAP,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
    )


def test_embedded_suite_report_matches_lm_eval_own_result(
    model_dir: Path, task_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval" / "embedded.json"
    argv = ["evaluate", "--model", str(model_dir), "--tasks", "embedded", "--out", str(out)]
    argv += ["--task-dir", str(task_dir), "--batch-size", str(BATCH), "--device", "cpu"]
    assert main([*argv, "--bootstrap-iters", str(BOOTSTRAP)]) == 0

    report = json.loads(out.read_text())
    assert set(report) >= {
        "tasks",
        "suites",
        "model",
        "run",
        "versions",
        "git_commit",
        "samples_file",
    }
    assert list(report["tasks"]) == EMBEDDED_TASKS
    assert report["model"]["parameters"]["total"] > report["model"]["parameters"]["non_embedding"]
    assert report["model"]["dtype"] == "float32"
    assert set(report["run"]["seeds"]) == {"random", "numpy", "torch", "fewshot"}
    assert all(report["versions"][lib] for lib in ("torch", "transformers", "lm_eval", "rrt"))

    reference = _lm_eval_reference(model_dir, task_dir, EMBEDDED_TASKS)
    suite = load_suites()["embedded"]
    for spec in suite.tasks:
        task = report["tasks"][spec.name]
        ref = reference["results"][spec.name]
        assert task["metrics"], spec.name
        for metric, value in task["metrics"].items():
            assert value == pytest.approx(ref[f"{metric},none"], rel=1e-6), (spec.name, metric)
            assert metric in task["stderr"]
        assert task["headline"] == {"metric": spec.metric, "value": task["metrics"][spec.metric]}
        assert task["num_fewshot"] == reference["n-shot"][spec.name] == 0
        assert task["samples"] == reference["n-samples"][spec.name]
        assert task["version"] == reference["versions"][spec.name]

    averaged = [t.name for t in suite.tasks if t.in_average]
    assert report["suites"]["embedded"]["averaged"] == averaged
    mean = sum(report["tasks"][t]["headline"]["value"] for t in averaged) / len(averaged)
    assert report["suites"]["embedded"]["average"] == pytest.approx(mean)

    rows = [json.loads(line) for line in (out.parent / report["samples_file"]).open()]
    for name, task in report["tasks"].items():
        mine = [r for r in rows if r["task"] == name]
        assert len(mine) == task["samples"]["effective"]
        if task["headline"]["metric"].startswith("acc"):
            correct = sum(r["correct"] for r in mine) / len(mine)
            assert correct == pytest.approx(task["headline"]["value"]), name
    choice = next(r for r in rows if r["task"] == "embedded_qa")
    assert len(choice["loglikelihoods"]) == len(choice["choices"]) == 4
    assert choice["pred"] == max(range(4), key=choice["loglikelihoods"].__getitem__)


def test_paper_suite_runs_shipped_definitions_on_local_data(loaded, paper_data: Path) -> None:
    model, tokenizer = loaded
    result = evaluate(model, tokenizer, ["paper"], paper_data=paper_data, bootstrap_iters=0)
    report = result.report
    assert report["run"]["batch_sizes"] == [
        EvaluateConfig.cpu_batch_size
    ]  # auto on a CPU: no probe
    paper = load_suites()["paper"]
    assert list(report["tasks"]) == [t.name for t in paper.tasks]
    headline = {name: task["headline"]["metric"] for name, task in report["tasks"].items()}
    assert headline["lambada_openai"] == headline["winogrande"] == "acc"
    assert {headline[t] for t in headline if t not in ("lambada_openai", "winogrande")} == {
        "acc_norm"
    }
    for name, task in report["tasks"].items():
        assert task["samples"]["effective"] == 3, name
        assert task["dataset"]["path"] == "json"
        files = task["dataset"]["kwargs"]["data_files"]
        assert all(Path(f).is_relative_to(paper_data.resolve()) for f in files.values())
    averaged = report["suites"]["paper"]["averaged"]
    values = [report["tasks"][t]["headline"]["value"] for t in averaged]
    assert report["suites"]["paper"]["average"] == pytest.approx(sum(values) / 7)

    # The shipped definitions did the work: piqa's choices are its two solutions, hellaswag's
    # endings went through the harness's own process_docs.
    piqa = next(r for r in result.samples if r["task"] == "piqa")
    assert piqa["choices"] == ["use a towel.", "use a river."]
    hellaswag = next(r for r in result.samples if r["task"] == "hellaswag")
    assert hellaswag["choices"][0] == "runs after a ball."


def test_paper_overrides_include_the_shipped_yaml_and_drop_missing_splits(
    paper_data: Path, tmp_path: Path
) -> None:
    import yaml

    covered = write_paper_overrides(paper_data, ["piqa", "winogrande", "embedded_qa"], tmp_path)
    assert covered == ["piqa", "winogrande"]
    piqa = yaml.safe_load((tmp_path / "piqa.yaml").read_text())
    assert piqa["include"].endswith("lm_eval/tasks/piqa/piqa.yaml")
    assert (piqa["training_split"], piqa["validation_split"]) == ("train", "validation")
    winogrande = yaml.safe_load((tmp_path / "winogrande.yaml").read_text())
    assert winogrande["training_split"] is None  # no train.jsonl: few-shot from validation
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"lacks arc_easy/test\.jsonl.*allenai/ai2_arc"):
        write_paper_overrides(tmp_path / "empty", ["arc_easy"], tmp_path)


def test_unknown_task_name_lists_close_matches(
    loaded, task_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lm_eval.tasks import TaskManager

    # The harness's default index takes 10-20 s to build; a small stand-in keeps this test fast
    # (the slow test below uses the real one).
    small = TaskManager(include_path=str(task_dir), include_defaults=False)
    monkeypatch.setattr("rrt.evaluation.evaluate._default_task_manager", lambda: small)
    model, tokenizer = loaded
    with pytest.raises(UserError, match=r"unknown task 'embedded_clozee'.*embedded_cloze") as err:
        evaluate(model, tokenizer, ["embedded_clozee"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"unknown task 'papr'.*close matches: paper"):
        evaluate(model, tokenizer, ["papr"])


@pytest.mark.slow
def test_unknown_task_name_lists_close_matches_from_the_harness_index(loaded) -> None:
    model, tokenizer = loaded
    with pytest.raises(UserError, match=r"unknown task 'hellaswg'.*hellaswag"):
        evaluate(model, tokenizer, ["hellaswg"])


def test_embedded_suite_without_task_dir_says_how_to_make_it(loaded) -> None:
    model, tokenizer = loaded
    expected = r"'embedded_cloze' of suite 'embedded' is not in \(no --task-dir\); generate"
    with pytest.raises(UserError, match=expected + r" them with .rrt tasks --out DIR. and pass"):
        evaluate(model, tokenizer, ["embedded"])


def test_hub_task_offline_names_dataset_and_local_data_option(loaded, tmp_path: Path) -> None:
    import lm_eval.tasks

    # The shipped piqa definition, found locally so the test skips the slow default index.
    shipped = Path(lm_eval.tasks.__file__).parent / "piqa" / "piqa.yaml"
    (tmp_path / "piqa.yaml").write_text(f"include: {shipped}\ntask: piqa\n")
    model, tokenizer = loaded
    with pytest.raises(UserError, match=r"'piqa' needs dataset 'baber/piqa'.*--paper-data") as err:
        evaluate(model, tokenizer, ["piqa"], task_dir=tmp_path)
    assert "\n" not in str(err.value)


def test_missing_model_directory_and_bad_values_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "--model", str(tmp_path / "nope"), "--tasks", "paper"]
    assert main([*argv, "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no model directory at" in err and "nope" in err
    argv[2] = str(tmp_path / "m")  # a folder that is not a model: the values fail first
    (tmp_path / "m").mkdir()
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--batch-size", "0"]) == 2
    assert "evaluate.batch_size: 0 is less than the minimum of 1" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--threads", "-1"]) == 2
    assert "threads: -1 is less than the minimum of 0" in capsys.readouterr().err


def test_exit_loop_rejects_a_model_that_is_not_recursive(loaded, task_dir: Path) -> None:
    model, tokenizer = loaded
    with pytest.raises(UserError, match=r"--exit-loop 1 needs a recursive model.*'llama'"):
        evaluate(model, tokenizer, ["embedded_cloze"], task_dir=task_dir, exit_loop=1)


@pytest.fixture(scope="module")
def recursive(loaded):
    """The tiny Llama converted to B=2 loops of one shared layer, when the lead's module exists."""
    try:
        from rrt.method.convert import convert
    except ImportError as err:
        pytest.skip(f"rrt.model.modeling / rrt.method.convert cannot be imported yet: {err}")
    model, tokenizer = loaded
    return convert(model, loops=2, init="stepwise"), tokenizer


def test_exit_loop_runs_only_the_first_loops_then_restores_full_depth(
    recursive, task_dir: Path
) -> None:
    model, tokenizer = recursive
    kwargs = {"task_dir": task_dir, "batch_size": BATCH, "bootstrap_iters": 0}
    tasks = ["embedded_perplexity"]

    def loglikelihoods(exit_loop: int | None) -> list[float]:
        result = evaluate(model, tokenizer, tasks, exit_loop=exit_loop, **kwargs)
        assert result.report["model"]["exit_loop"] == exit_loop
        return [row["loglikelihoods"][0] for row in result.samples]

    full = loglikelihoods(None)
    assert loglikelihoods(2) == pytest.approx(full, rel=1e-6)
    assert loglikelihoods(1) != pytest.approx(full, rel=1e-3)
    assert loglikelihoods(None) == pytest.approx(full, rel=1e-6)  # full depth again afterwards
    assert model.config.exit_loop is None  # the exit was fixed on a copy, never on the model
    with pytest.raises(UserError, match=r"--exit-loop 3 is outside 1\.\.2"):
        evaluate(model, tokenizer, tasks, exit_loop=3, **kwargs)


def test_suites_file_holds_the_paper_metric_choice() -> None:
    suites = load_suites()
    paper = {t.name: t.metric for t in suites["paper"].tasks}
    assert paper == {
        "lambada_openai": "acc",
        "hellaswag": "acc_norm",
        "piqa": "acc_norm",
        "winogrande": "acc",
        "arc_easy": "acc_norm",
        "arc_challenge": "acc_norm",
        "openbookqa": "acc_norm",
    }
    embedded = {t.name: t.in_average for t in suites["embedded"].tasks}
    assert embedded == {**dict.fromkeys(EMBEDDED_TASKS, True), "embedded_perplexity": False}


def test_a_copied_task_folder_reads_its_own_data(task_dir: Path, tmp_path: Path) -> None:
    """The task YAMLs hold absolute data paths: evaluating a copy must not read the original."""
    import shutil

    import yaml

    from rrt.evaluation.evaluate import own_data

    copy = shutil.copytree(task_dir, tmp_path / "copy")
    local = own_data(copy, tmp_path / "local")
    read = []
    for path in sorted(local.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        files = (spec.get("dataset_kwargs") or {}).get("data_files") or {}
        read += [Path(f) for f in files.values()]
    assert read and all(f.is_relative_to(copy) and f.is_file() for f in read), read
    assert sorted(p.name for p in local.glob("*.yaml")) == sorted(
        p.name for p in copy.glob("*.yaml")
    )
