"""What each workflow rule passes to its rrt command (rrt.flags), from a checked config: read
back as the shell reads it, each value where its command expects it."""

from __future__ import annotations

import shlex

import pytest

from rrt import flags, names
from rrt.config import resolve


def experiment(**sections) -> dict:
    """A checked config: the schema's defaults (the embedded default) with ``sections``; the
    text suite's tasks for a corpus other than the generated one."""
    if "corpus_source" in sections:
        sections.setdefault("evaluate", {"tasks": ["text"]})
    return resolve({"experiment": "test", **sections})


def options(text: str) -> dict[str, list[str]]:
    """A flag string as the shell splits it: each flag and the words after it."""
    found: dict[str, list[str]] = {}
    for word in shlex.split(text):
        if word.startswith("--"):
            flag = found.setdefault(word, [])
        else:
            flag.append(word)
    return found


def test_uptraining_distils_from_the_source_but_the_source_itself_learns_by_ce_alone():
    config = experiment(uptrain={"tokens": 4096, "loss": {"kd_weight": 0.5}})
    assert options(flags.uptrain_loss(config, "recursive-B2-average", ""))["--kd-weight"] == ["0.5"]
    assert options(flags.uptrain_loss(config, "source", ""))["--kd-weight"] == ["0.0"]
    recipe = options(flags.uptrain_recipe(config, ""))
    assert recipe["--tokens"] == ["4096"] and "--loss" not in recipe


def test_a_sweep_variant_sets_its_own_budget_weight_and_seed():
    config = experiment()
    variant = names.Sweep(131072, 0.25, 2).suffix
    recipe = options(flags.uptrain_recipe(config, variant))
    assert recipe["--tokens"] == ["131072"] and recipe["--seed"] == ["2"]
    assert options(flags.uptrain_loss(config, "relaxed-B2-average-r8", variant))["--kd-weight"] == [
        "0.25"
    ]


def test_the_reduced_baseline_has_the_sources_shape_with_n_over_b_layers(tmp_path):
    config = experiment()
    shape = options(flags.reduced_shape(config, 2, "unused"))
    assert shape["--layers"] == [str(config["source"]["embedded"]["layers"] // 2)]
    assert shape["--hidden-size"] == [str(config["source"]["embedded"]["hidden_size"])]
    budgets = {
        b: options(flags.reduced_recipe(config, b))["--tokens"] for b in ("uptrain", "source")
    }
    assert budgets == {
        "uptrain": [str(config["uptrain"]["tokens"])],
        "source": [str(config["train"]["tokens"])],
    }

    folder = tmp_path / "my model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 6}')
    local = experiment(source={"kind": "local", "path": str(folder)})
    assert options(flags.reduced_shape(local, 3, str(folder))) == {
        "--like": [str(folder)],
        "--layers": ["2"],
    }


def test_text_files_and_package_patterns_reach_the_command_as_separate_words(tmp_path):
    paths = [tmp_path / "a b.txt", tmp_path / "it's.md"]
    for path in paths:
        path.write_text("A document.")
    files = experiment(corpus_source={"kind": "files", "paths": [str(p) for p in paths]})
    got = options(flags.text_corpus(files))
    assert got["--files"] == [str(p) for p in paths]
    assert {"--validation-documents", "--test-documents", "--seed"} <= set(got)

    package = {"kind": "pip", "requirement": "Django==5.1.4", "sha256": "ab" * 32}
    pip = experiment(corpus_source={**package, "include": ["D/docs/*.txt", "D/x y/*"]})
    got = options(flags.text_corpus(pip))
    assert got["--include"] == ["D/docs/*.txt", "D/x y/*"] and "--exclude" not in got
    assert got["--requirement"] == ["Django==5.1.4"] and got["--sha256"] == ["ab" * 32]
    excluding = experiment(corpus_source={**package, "include": ["*"], "exclude": ["*.py"]})
    assert options(flags.text_corpus(excluding))["--exclude"] == ["*.py"]


def test_a_file_source_names_its_subcommand_and_what_it_reads(tmp_path):
    gguf = tmp_path / "my model.gguf"
    gguf.write_bytes(b"")
    words = shlex.split(flags.source_file({"source": {"kind": "gguf", "path": str(gguf)}}))
    assert words == ["gguf", "--gguf", str(gguf)]
    pip = {"kind": "pip", "requirement": "pkg>=1", "file": "p/m.gguf", "sha256": "cd" * 32}
    words = shlex.split(flags.source_file({"source": pip}))
    assert words[0] == "pip" and options(" ".join(shlex.quote(w) for w in words[1:])) == {
        "--requirement": ["pkg>=1"],
        "--file": ["p/m.gguf"],
        "--sha256": ["cd" * 32],
    }


def test_a_hub_corpus_passes_its_pinned_revision_and_sizes():
    hub = {"kind": "hub", "repo": "a/b", "revision": "c" * 40, "name": "en", "text_field": "t"}
    config = experiment(corpus_source=hub, corpus={"tokens": 1000})
    got = options(flags.hub_corpus(config))
    assert got["--repo"] == ["a/b"] and got["--revision"] == ["c" * 40]
    assert (
        got["--config"] == ["en"] and got["--text-field"] == ["t"] and got["--tokens"] == ["1000"]
    )


@pytest.mark.parametrize(
    ("tasks", "paper_data", "needed"),
    [
        (["embedded"], None, {"tasks": None}),
        (["embedded_cloze"], None, {"tasks": None}),
        (["text", "paper"], "/data/paper", {"text_tasks": None, "paper": "/data/paper"}),
        (["paper"], None, {"paper": None}),
        (["hellaswag"], None, {"paper": None}),  # a task of the paper suite
        (["sciq"], None, {}),
    ],
)
def test_evaluations_read_the_task_data_of_the_suites_they_ask_for(tasks, paper_data, needed):
    config = experiment(evaluate={"tasks": tasks, "paper_data": paper_data})
    assert flags.task_data(config) == needed


def test_an_evaluation_gets_its_task_folders_and_never_the_unresolved_paper_data():
    config = experiment(evaluate={"tasks": ["embedded", "paper"], "paper_data": "/mine"})
    got = options(flags.evaluation(config, {"tasks": "r/data/tasks", "paper": "/mine"}))
    assert got["--task-dir"] == ["r/data/tasks"] and got["--paper-data"] == ["/mine"]
    assert got["--device"] == [config["device"]] and got["--tasks"] == ["embedded,paper"]


def test_a_benchmark_of_the_sizes_list_runs_at_its_own_batch_and_dtype():
    config = experiment(benchmark={"max_batch": 8, "dtype": "fp32"})
    stem = names.Benchmark("relaxed-B2-average-r32.up.ee", 4, "bf16").stem
    sized = options(flags.benchmark(config, stem))
    assert sized["--max-batch"] == ["4"] and sized["--dtype"] == ["bf16"]
    default = options(flags.benchmark(config, "relaxed-B2-average-r32.up.ee"))
    assert default["--max-batch"] == ["8"] and default["--dtype"] == ["fp32"]


def test_a_jobs_mlflow_tags_name_its_rule_and_wildcards():
    assert shlex.split(flags.track("relax", loops=2, rank="full")) == [
        "--mlflow-tag", "rule=relax", "--mlflow-tag", "wildcard.loops=2",
        "--mlflow-tag", "wildcard.rank=full",
    ]  # fmt: skip
