"""Shared by every rule: the checked config, one path function per kind of artifact, the
configurations an experiment expands to, and the MLflow parent run."""

import os
import sys
from pathlib import Path

from rrt import config as schema
from rrt import tracking
from rrt.config import as_flags
from rrt.report.record import write_record

# --- a run killed with SIGKILL leaves Snakemake's locks behind -----------------------------------
OWNER = Path(
    ".snakemake", "rrt-owner.pid"
)  # the Snakemake process that holds the locks


def alive(pid):
    """Whether the process of that id still runs."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def clear_stale_locks():
    """Remove the locks of a Snakemake run that is gone (SIGKILL gave it no time to unlock),
    so starting the workflow again is all a killed run needs. A live run keeps its locks, and
    Snakemake then refuses a second one as usual."""
    if OWNER.is_file() and not alive(OWNER.read_text().strip()):
        for lock in Path(".snakemake", "locks").glob("*.lock"):
            lock.unlink()
        OWNER.unlink()


# Not inside a cluster job: the node it runs on cannot see the Snakemake process that holds them.
if workflow.is_main_process:
    clear_stale_locks()

# Jobs call `rrt` from the environment that runs Snakemake (`.venv/bin/snakemake` needs no
# activated venv); with --sdm conda, the rule's environment comes first on the PATH.
os.environ.update(
    PATH=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]
    )
)

# Defaults filled in and every value checked before any job runs (one line naming the key).
try:
    schema.resolve(config)
except schema.ConfigError as err:
    sys.exit(f"rrt: bad configuration: {err}")

RESULTS = f"{config['results']}/{config['experiment']}"
EMBEDDED = config["source"]["kind"] == "embedded"
GENERATED_CORPUS = config["corpus_source"]["kind"] == "generated"


wildcard_constraints:
    loops=r"\d+",
    init="stepwise|average|lower|random",
    rank=r"\d+|full",
    budget="uptrain|source",
    exit=r"\d+",
    base=r"[^/]+",
    name=r"[^/]+",
    variant=r"(-t\d+-w[0-9.]+-s\d+)?",


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
    return f"{RESULTS}/eval/exits/{name}-exit{exit}.json"


def benchmark_result(name):
    """The throughput benchmark of a served (early-exit) model."""
    return f"{RESULTS}/benchmarks/{name}.json"


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


# --- what an experiment makes --------------------------------------------------------------------


def recursive_names():
    c = config["recursive"]
    return [f"recursive-B{b}-{i}" for b in c["loops"] for i in c["inits"]]


def relaxed_names():
    c = config["relaxed"]
    return [
        f"relaxed-B{b}-{i}-r{r}"
        for b in c["loops"]
        for i in c["inits"]
        for r in c["ranks"]
    ]


def reduced_names():
    c = config["baselines"]
    return [
        f"reduced-B{b}-{t}" for b in c["reduced_loops"] for t in c["reduced_budgets"]
    ]


def early_exit_names():
    names = []
    for m in config["early_exit"]["models"]:
        kind = "recursive" if m["rank"] == 0 else "relaxed"
        rank = "" if m["rank"] == 0 else f"-r{m['rank']}"
        names.append((f"{kind}-B{m['loops']}-{m['init']}{rank}.up.ee", m["loops"]))
    return names


def evaluated_names():
    names = ["source", *reduced_names()]
    if config["baselines"]["full_size"]:
        names.append("source.up")
    names += [f"{n}.up" for n in recursive_names() + relaxed_names()]
    return names + [name for name, _ in early_exit_names()]


def swept_models():
    """The uptraining ablation's models: every recursive and relaxed model once per sweep
    combination, named NAME.up-tTOKENS-wKD-sSEED."""
    sweep, defaults = config["sweep"], config["uptrain"]
    if not any(sweep.values()):
        return []
    combos = [
        (t, w, s)
        for t in sweep["tokens"] or [defaults["tokens"]]
        for w in sweep["kd_weights"] or [defaults["loss"]["kd_weight"]]
        for s in sweep["seeds"] or [config["train"]["seed"]]
    ]
    return [
        model(f"{name}.up-t{t}-w{w}-s{s}")
        for name in recursive_names() + relaxed_names()
        for t, w, s in combos
    ]


def sweep_settings(variant):
    """``-t131072-w0.5-s1`` as the settings it overrides (none for the plain uptraining)."""
    if not variant:
        return {}
    tokens, kd_weight, seed = variant[2:].replace("-w", " ").replace("-s", " ").split()
    return {"tokens": int(tokens), "kd_weight": float(kd_weight), "seed": int(seed)}


def models():
    """Every model folder the experiment makes: deliverables, so a deleted one is made again
    (with what depends on it)."""
    names = [*recursive_names(), *relaxed_names(), *evaluated_names()]
    if config["source"]["kind"] == "local":
        names.remove("source")
    return [model(name) for name in dict.fromkeys(names)]


def benchmarks():
    """Every early-exit model is served and benchmarked against the full-size source."""
    return [benchmark_result(name) for name, _ in early_exit_names()]


def evaluations():
    """Every evaluation of the experiment: what `rule all` asks for."""
    files = [evaluation(n) for n in evaluated_names()]
    for name, loops in early_exit_names():
        files += [exit_evaluation(name, b) for b in range(1, loops)]
    return files


# --- what rules pass to rrt ----------------------------------------------------------------------


def suite_tasks(suite):
    import yaml

    suites = yaml.safe_load(
        (Path(schema.__file__).with_name("suites.yaml")).read_text()
    )
    return set(suites[suite]["tasks"]) | {suite}


def asked_tasks():
    return {t.strip() for t in config["evaluate"]["tasks"].split(",") if t.strip()}


def needs_embedded_tasks():
    return bool(asked_tasks() & suite_tasks("embedded"))


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
    if paper_data():
        inputs["paper"] = paper_data()
    return inputs


def evaluation_options():
    options = {k: v for k, v in config["evaluate"].items() if k != "paper_data"}
    flags = as_flags({**options, "device": config["device"]})
    if needs_embedded_tasks():
        flags += f" --task-dir {data('tasks')}"
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


def hub_corpus():
    """The hub dataset, its pinned revision, and how much of it to take, as rrt options."""
    c, sizes = config["corpus_source"], config["corpus"]
    return as_flags(
        {
            "repo": c["repo"],
            "revision": c["revision"],
            "config": c["name"],
            "text_field": c["text_field"],
            "tokens": sizes["tokens"],
            "validation_documents": sizes["validation_documents"],
            "test_documents": sizes["test_documents"],
        }
    )


def reduced_shape(loops):
    """The reduced-size baseline's model: the source's shape with N/B layers."""
    layers = schema.source_layers(config) // loops
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
    settings = sweep_settings(variant)
    settings.pop("kd_weight", None)
    return recipe(**settings)


def uptrain_loss(base, variant):
    """CE alone for the full-size baseline (the source learns nothing from itself); otherwise
    the configured distillation, or the sweep's weight."""
    if base == "source":
        return loss(kd_weight=0.0)
    return loss(
        **{k: v for k, v in sweep_settings(variant).items() if k == "kd_weight"}
    )


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


# --- MLflow: one parent run per experiment, created before any job starts ------------------------

MLFLOW_URI = config["mlflow"]["tracking_uri"] or (
    f"sqlite:///{Path(RESULTS, 'mlflow.db').resolve()}"
)
MLFLOW_EXPERIMENT = config["mlflow"]["experiment"] or config["experiment"]


PARENT_RUN = {}  # the experiment's parent run id, once onstart has made it


def start_tracking():
    """Create the tracking store and the parent run (one process, before any job), and hand
    jobs where to log through the environment they inherit (SLURM jobs too: sbatch --export=ALL).
    """
    if workflow.non_local_exec and MLFLOW_URI.startswith("sqlite:"):
        sys.exit(
            f"rrt: jobs on a cluster must not share one sqlite file ({MLFLOW_URI}): start an "
            "`mlflow server` and set mlflow.tracking_uri to its URL (README: On a SLURM cluster)"
        )
    Path(RESULTS).mkdir(parents=True, exist_ok=True)
    OWNER.write_text(str(os.getpid()))
    # The config and what it makes, beside the results: the report reads nothing else.
    expected = {
        "models": models() + swept_models(),
        "evaluations": evaluations(),
        "benchmarks": benchmarks(),
    }
    write_record(RESULTS, config, expected)
    PARENT_RUN["id"] = tracking.start_experiment(MLFLOW_URI, MLFLOW_EXPERIMENT, config)
    os.environ.update(
        MLFLOW_TRACKING_URI=MLFLOW_URI,
        MLFLOW_EXPERIMENT_NAME=MLFLOW_EXPERIMENT,
        MLFLOW_PARENT_RUN_ID=PARENT_RUN["id"],
    )


def end_tracking(status):
    if "id" in PARENT_RUN:
        tracking.end_experiment(MLFLOW_URI, PARENT_RUN["id"], status)


onstart:
    start_tracking()


onsuccess:
    end_tracking("FINISHED")


onerror:
    end_tracking("FAILED")
