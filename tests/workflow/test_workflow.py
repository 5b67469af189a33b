"""The Snakemake workflow: lint and format, a dry run of every config, bad configs stopped before
any job, and the smoke config end to end (reruns, a SIGKILL, MLflow through its REST API)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[2]
SNAKEFILE = REPO / "Snakefile"
SMOKE = REPO / "config" / "smoke.yaml"
CONFIGS = sorted(p for p in (REPO / "config").rglob("*.yaml"))
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Snakemake on the repository's workflow, in ``workdir`` (results, .snakemake)."""
    command = [str(BIN / "snakemake"), "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def _env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    # No activated environment, as in the README's `.venv/bin/snakemake --cores all`: the
    # workflow must find `rrt` itself.
    env["PATH"] = os.defpath
    env.pop("VIRTUAL_ENV", None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_PARENT_RUN_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(name, None)
    return env


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The job counts of a dry run's "Job stats" table."""
    lines = result.stdout.splitlines()
    start = lines.index("Job stats:") + 3
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


# --- static checks ---------------------------------------------------------------------------


def test_the_workflow_passes_snakemakes_linter():
    result = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, env=_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_the_workflow_is_formatted_with_snakefmt():
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "workflow"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_dry_runs(config, tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["evaluate"] >= 1 and jobs["all"] == 1
    assert not (tmp_path / "results").exists()


def test_the_default_experiment_builds_what_the_papers_story_needs(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config" / "config.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["convert"] == 4  # the initialisation ablation
    assert jobs["relax"] == 3  # the rank sweep up to full rank
    assert jobs["reduced"] == 2  # on the uptraining budget (the paper's) and the source's
    assert jobs["uptrain"] == 4 + 3 + 1  # recursive, relaxed and the full-size source
    assert jobs["early_exit"] == 1 and jobs["evaluate_exit"] == 1
    assert jobs["benchmark"] == 1 and jobs["report"] == 1  # the early-exit model is served


def test_benchmark_sizes_are_more_runs_each_at_its_own_batch_and_dtype(tmp_path):
    """benchmark.sizes, given on the command line (Snakemake reads its nested values as
    strings; the config's check reads them back as the schema's numbers)."""
    sizes = "benchmark={max_batch: 8, sizes: [{max_batch: 1, dtype: bf16}, {max_batch: 64}]}"
    default = str(REPO / "config" / "config.yaml")
    result = snakemake(tmp_path, "-n", "-p", "--configfile", default, "--config", sizes)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert planned_jobs(result)["benchmark"] == 3
    runs = {
        line.split("--out ")[1].split()[0].rsplit("/", 1)[1]: line
        for line in result.stdout.splitlines()
        if "rrt benchmark " in line
    }
    model = "relaxed-B2-average-r32.up.ee"
    assert set(runs) == {f"{model}.json", f"{model}@b1-bf16.json", f"{model}@b64-auto.json"}
    assert "--max-batch 8 " in runs[f"{model}.json"] and "--dtype auto" in runs[f"{model}.json"]
    assert "--max-batch 1 " in runs[f"{model}@b1-bf16.json"]
    assert "--dtype bf16" in runs[f"{model}@b1-bf16.json"]
    assert "--max-batch 64 " in runs[f"{model}@b64-auto.json"]
    assert "--sizes" not in result.stdout  # workflow only: never a flag of rrt benchmark


def test_a_local_source_plans_every_baseline_from_the_users_folder(tmp_path):
    """source: {kind: local, path: DIR}: the full-size model is uptrained from DIR itself (the
    workflow makes no models/source), the reduced baseline is --like DIR."""
    from transformers import LlamaConfig, LlamaForCausalLM

    source = tmp_path / "my-model"
    config = LlamaConfig(
        num_hidden_layers=4,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=300,
    )
    LlamaForCausalLM(config).save_pretrained(source)  # fmt: skip
    experiment = tmp_path / "local.yaml"
    experiment.write_text(f"experiment: local\nsource: {{kind: local, path: {source}}}\n")
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(experiment))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["uptrain"] == 2 and jobs["reduced"] == 1 and "pretrain_source" not in jobs
    commands = result.stdout
    assert f"rrt uptrain --model {source} " in commands  # the full-size baseline
    assert f"--like {source}" in commands and "models/source " not in commands


def test_a_users_text_files_become_the_corpus_and_its_tasks(tmp_path):
    """corpus_source: {kind: files}: the files are imported (a local job), the text suite's
    tasks are cut from their test documents, and with evaluate.at_init every recursive and
    relaxed model is evaluated before its uptraining too."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(5):
        (notes / f"{i}.txt").write_text(f"Note {i}. It says something true about topic {i}.")
    experiment = tmp_path / "files.yaml"
    experiment.write_text(
        "experiment: files\n"
        f"corpus_source: {{kind: files, paths: [{notes}]}}\n"
        "corpus: {validation_documents: 1, test_documents: 2}\n"
        "recursive: {loops: [2], inits: [stepwise]}\n"
        "relaxed: {loops: [2], inits: [average], ranks: [4]}\n"
        "early_exit: {models: []}\n"
        "evaluate: {tasks: [text], at_init: true}\n"
    )
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(experiment))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["import_corpus"] == 1 and jobs["text_tasks"] == 1 and "tasks" not in jobs
    # source, source.up, reduced, and two models both before and after uptraining
    assert jobs["evaluate"] == 3 + 2 * 2
    assert f"rrt download text --files {notes} " in result.stdout
    assert "--validation-documents 1 --test-documents 2 --seed 0" in result.stdout
    assert "rrt tasks --suite text" in result.stdout
    assert "--task-dir results/files/data/text-tasks" in result.stdout


def test_an_uptraining_sweep_passes_each_combination_to_its_run(tmp_path):
    ablation = REPO / "config" / "experiments" / "uptrain-ablation.yaml"
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(ablation))
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result)["uptrain"] == 1 + 4 * 3 * 3
    commands = [line for line in result.stdout.splitlines() if "rrt uptrain " in line]
    (run,) = [
        c
        for c in commands
        if "--out results/uptrain-ablation/models/recursive-B2-stepwise.up-t131072-w0.0-s2 " in c
    ]
    assert "--tokens 131072" in run and "--seed 2" in run and "--kd-weight 0.0" in run
    (plain,) = [c for c in commands if "recursive-B2-stepwise.up " in c]
    assert "--tokens 262144" in plain and "--kd-weight 0.5" in plain


# --- bad configs fail before any job runs, with one line ---------------------------------------

BAD_CONFIGS = {
    "unknown key": ({"relaxed": {"rank": [4]}}, "unknown key 'rank' in relaxed; allowed:"),
    "wrong type": ({"train": {"tokens": "many"}}, "train.tokens: 'many' is not of type integer"),
    "negative rank": (
        {"relaxed": {"ranks": [-4]}},
        "relaxed.ranks.0: -4 is less than the minimum of 0",
    ),
    "loops not dividing the layers": (
        {"recursive": {"loops": [3]}},
        "recursive.loops: 3 loops do not divide the source's 4 layers; allowed: 1, 2, 4",
    ),
    "unknown init": (
        {"recursive": {"inits": ["middle"]}},
        "recursive.inits.0: 'middle' is not allowed; choose one of stepwise, average, lower,",
    ),
    "unknown task": (
        {"evaluate": {"tasks": ["embedded", "hellaswagg"]}},
        "evaluate.tasks: unknown task 'hellaswagg'",
    ),
}


def _merged(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = _merged(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_fails_before_any_job_with_one_line(case, tmp_path):
    change, message = BAD_CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_merged(yaml.safe_load(SMOKE.read_text()), change)))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(config))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("rrt: bad config")]
    assert errors == [f"rrt: bad configuration: {errors[0].split(': ', 2)[2]}"]
    assert message in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "results").exists()


# --- the smoke config, end to end --------------------------------------------------------------


# The smoke run itself is the `smoke` fixture (conftest.py), which test_envs.py reads too.


def _results(workdir: Path) -> Path:
    return workdir / "results" / "smoke"


@pytest.mark.slow
def test_the_smoke_workflow_evaluates_every_model_and_exit_loop(smoke):
    evaluations = sorted(p.name for p in (_results(smoke) / "eval").glob("*.json"))
    assert evaluations == sorted(
        f"{name}.json"
        for name in (
            "source",
            "source.up",
            "reduced-B2-uptrain",
            "recursive-B2-stepwise.up",
            "relaxed-B2-average-r4.up",
            "relaxed-B2-average-r4.up.ee",
        )
    )
    exit1 = json.loads(
        (_results(smoke) / "eval" / "exits" / "relaxed-B2-average-r4.up.ee-exit1.json").read_text()
    )
    assert exit1["model"]["exit_loop"] == 1
    report = json.loads((_results(smoke) / "eval" / "relaxed-B2-average-r4.up.json").read_text())
    assert report["suites"]["embedded"]["average"] is not None
    assert report["model"]["num_loops"] == 2
    models = _results(smoke) / "models"
    exits = json.loads((models / "relaxed-B2-average-r4.up.ee" / "metrics.json").read_text())
    assert set(exits["held_out_exits"]) == {"ce_loop1", "ce_loop2", "acc_loop1", "acc_loop2"}
    reduced = json.loads((models / "reduced-B2-uptrain" / "config.json").read_text())
    assert reduced["num_hidden_layers"] == 2  # N / B of the 4-layer source
    full = json.loads((models / "source.up" / "metrics.json").read_text())
    assert full["run"]["loss"]["kd_weight"] == 0.0 and full["run"]["teacher"] is None


@pytest.mark.slow
def test_a_second_run_does_nothing(smoke):
    result = snakemake(smoke, "-n", "--configfile", str(SMOKE))
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slow
def test_deleting_one_model_reruns_only_what_depends_on_it(smoke):
    import shutil

    shutil.rmtree(_results(smoke) / "models" / "relaxed-B2-average-r4.up.ee")
    plan = planned_jobs(snakemake(smoke, "-n", "--configfile", str(SMOKE)))
    assert plan == {
        "early_exit": 1, "evaluate": 1, "evaluate_exit": 1, "benchmark": 1, "report": 1, "all": 1,
    }  # fmt: skip
    result = snakemake(smoke, "--cores", "2", "--configfile", str(SMOKE))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_a_workflow_killed_with_sigkill_mid_job_completes_when_started_again(smoke):
    import shutil

    models = _results(smoke) / "models"
    target = models / "relaxed-B2-average-r4.up"
    shutil.rmtree(target)
    command = [str(BIN / "snakemake"), "-s", str(SNAKEFILE), "--directory", str(smoke)]
    command += ["--cores", "2", "--configfile", str(SMOKE)]
    process = subprocess.Popen(
        command, env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    work = models / "relaxed-B2-average-r4.up.work"
    deadline = time.time() + 120
    while not work.exists() and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # snakemake and its running job
    process.wait()
    assert work.exists() and not target.exists(), "the job was not running when killed"

    result = snakemake(smoke, "--cores", "2", "--configfile", str(SMOKE))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (target / "model.safetensors").is_file() and not work.exists()


@pytest.mark.slow
def test_mlflow_server_lists_one_nested_run_per_job_with_params_and_metrics(smoke):
    """Through `mlflow server`'s REST API, as `mlflow ui` sees the runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"sqlite:///{_results(smoke) / 'mlflow.db'}"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        experiment = _get_json(f"{base}/experiments/get-by-name?experiment_name=smoke", 60)
        runs = _post_json(
            f"{base}/runs/search",
            {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000},
        )["runs"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

    def tags(run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    (parent,) = [r for r in runs if tags(r).get("rrt.experiment_run") == "true"]
    jobs = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert len(jobs) == len(runs) - 1
    rules = {tags(r)["rule"] for r in jobs}
    assert rules == {
        "corpus", "tokenizer", "tasks", "pretrain_source", "reduced", "convert", "relax",
        "uptrain", "early_exit", "evaluate", "evaluate_exit", "benchmark", "report",
    }  # fmt: skip
    for run in jobs:
        assert run["data"].get("params") and run["data"].get("metrics"), run["info"]["run_name"]
        assert tags(run)["mlflow.source.git.commit"]
    assert {r["info"]["status"] for r in jobs} == {"FINISHED"}
    # the first full run: one run per job of the DAG (19), plus the reruns of the tests above
    first = [r for r in jobs if r["info"]["start_time"] <= parent["info"]["start_time"] + 10**9]
    assert len(first) >= 19


def _get_json(url: str, wait: float) -> dict:
    deadline = time.time() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_sixteen_jobs_logging_at_once_lose_no_run(tmp_path):
    from mlflow import MlflowClient

    from rrt.tracking import start_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = start_experiment(uri, "many", {"jobs": 16})  # the store, made once (onstart)
    script = """
import sys
from pathlib import Path
from rrt.tracking import JobRun, Tracking
i = int(sys.argv[1])
tracking = Tracking(sys.argv[2], "many", f"job {i}", sys.argv[3], {"rule": "job"})
run = JobRun(tracking, "job", {"index": i}, key=f"/out/{i}")
for step in range(20):
    run.log_metrics({"loss": 1.0 / (step + 1)}, step)
run.finish({"done": 1}, None)
"""
    env = _env()
    jobs = [
        subprocess.Popen([sys.executable, "-c", script, str(i), uri, parent], env=env)
        for i in range(16)
    ]
    assert [job.wait(timeout=300) for job in jobs] == [0] * 16
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("many").experiment_id
    runs = client.search_runs([experiment], "tags.rule = 'job'")
    assert len(runs) == 16 and {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["mlflow.parentRunId"] == parent for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 20 for r in runs)
