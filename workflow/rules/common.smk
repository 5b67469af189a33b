"""Shared by every rule: one path function per kind of artifact, the configurations an
experiment expands to (rrt.experiment), the task data's paths, and the MLflow parent run. What
each rule passes to its command is built by rrt.flags."""

import os
import sys
from pathlib import Path

from rrt import experiment, flags, names
from rrt.config import as_flags
from rrt.errors import UserError

# The locks of a run killed with SIGKILL are cleared, but not inside a cluster job: the node it
# runs on cannot see the Snakemake process that holds them (its PID is in OWNER).
OWNER = Path(".snakemake", "rrt-owner.pid")
if workflow.is_main_process:
    experiment.clear_stale_locks(OWNER, Path(".snakemake", "locks"))
experiment.find_rrt_first(Path(workflow.basedir, "src"))
experiment.check_conda(workflow.deployment_settings.deployment_method)

RESULTS = f"{config['results']}/{config['experiment']}"


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
    return (
        data("tokenizer") if config["source"]["kind"] == "embedded" else model("source")
    )


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


# --- what rules pass to rrt: each rule's flags come from rrt.flags, the task data's paths from here

# an evaluation's input name -> the data() folder the workflow makes for it
TASK_DATA = {"tasks": "tasks", "text_tasks": "text-tasks", "paper": "paper"}
# the task data the evaluations read, by input name: the config's folder (paper_data) or one
# the workflow makes; the same for every evaluation, so found once (suites.yaml read once)
TASK_DIRS = {
    key: path or data(TASK_DATA[key]) for key, path in flags.task_data(config).items()
}


def evaluation_inputs(wildcards):
    """The model, and the task data its evaluation reads."""
    return {"model": model(wildcards.name), **TASK_DIRS}


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
