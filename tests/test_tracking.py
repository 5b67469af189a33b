"""MLflow tracking of training: one run per job, per-step metrics, reopened on resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from _embedded import RECIPE, corpus, recipe_args, shape_args, tokenizer
from mlflow import MlflowClient

from rrt.errors import UserError
from rrt.tracking import RUN_ID_FILE, Tracking, flatten
from rrt.training.trainer import TrainingRun, work_dir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking")
    corpus_dir = corpus(root)
    return {"root": root, "corpus": corpus_dir, "tokenizer": tokenizer(corpus_dir, root)}


@pytest.fixture(scope="module")
def store_uri(data) -> str:
    uri = f"sqlite:///{data['root'] / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # create the schema once
    return uri


def _runs(uri: str, experiment: str):
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r}"
    return client, client.search_runs([found.experiment_id])


def test_flatten_joins_nested_keys_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": 1, "a.c.d": "x", "e": 2}


def test_pretraining_logs_params_every_step_and_final_metrics_to_mlflow(data, store_uri, tmp_path):
    out = tmp_path / "source"
    command = [sys.executable, "-m", "rrt", "pretrain", "--corpus", str(data["corpus"]),
               "--tokenizer", str(data["tokenizer"]), "--out", str(out), *shape_args(),
               *recipe_args(), "--mlflow-uri", store_uri, "--mlflow-experiment", "pretrain-test",
               "--mlflow-parent", "parent123"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    client, runs = _runs(store_uri, "pretrain-test")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "pretrain source"
    assert run.data.tags["rrt.stage"] == "pretrain"
    assert run.data.tags["mlflow.parentRunId"] == "parent123"
    assert "mlflow.source.git.commit" in run.data.tags and "version.torch" in run.data.tags
    assert json.loads(run.data.params["config.lr"]) == RECIPE.lr
    assert json.loads(run.data.params["run.model.layers"]) == 2
    steps = RECIPE.plan().steps
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, steps + 1))
    logged = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [s["loss"] for s in logged]
    )
    for key in ("tokens", "tokens_per_second", "learning_rate", "ce"):
        assert key in run.data.metrics
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["final.validation.loss"] == pytest.approx(metrics["validation"]["loss"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "provenance.json"} <= artifacts


def test_an_interrupted_job_is_marked_killed_and_its_rerun_finishes_the_same_run(
    data, store_uri, tmp_path
):
    out = tmp_path / "source"
    recipe = replace(RECIPE, tokens=200 * RECIPE.tokens_per_step, save_every=5)
    command = [sys.executable, "-m", "rrt", "pretrain", "--corpus", str(data["corpus"]),
               "--tokenizer", str(data["tokenizer"]), "--out", str(out), *shape_args(),
               *recipe_args(recipe), "--threads", "1", "--mlflow-uri", store_uri,
               "--mlflow-experiment", "interrupt-test"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(work_dir(out).glob("checkpoint-*")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 130
    lines = proc.stderr.read().strip().splitlines()
    assert "interrupted" in lines[-1] and "Traceback" not in "".join(lines)
    client, (run,) = _runs(store_uri, "interrupt-test")
    assert run.info.status == "KILLED"

    assert subprocess.run(command, capture_output=True).returncode == 0
    client, (again,) = _runs(store_uri, "interrupt-test")
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, recipe.plan().steps + 1))


def test_a_resumed_job_reopens_its_run_and_does_not_log_replayed_steps_twice(store_uri, tmp_path):
    tracking = Tracking(store_uri, "resume-test", "job")
    first = TrainingRun(tracking, tmp_path, "uptrain", {"config": {"lr": 0.1}})
    for step in (1, 2, 3):
        first.on_log(None, _State(step), None, logs={"loss": 4.0 - step})
    # killed here: the last checkpoint was at step 2, so the restarted job replays step 3
    again = TrainingRun(tracking, tmp_path, "uptrain", {"config": {"lr": 0.1}})
    assert again.run_id == first.run_id == (tmp_path / RUN_ID_FILE).read_text()
    assert again.client.get_run(again.run_id).info.status == "RUNNING"
    for step in (3, 4):
        again.on_log(None, _State(step), None, logs={"loss": 4.0 - step})
    history = again.client.get_metric_history(again.run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    again.end("FAILED")
    assert again.client.get_run(again.run_id).info.status == "FAILED"


def test_an_unsupported_tracking_uri_fails_with_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="MLflow at 'bogus://x'.*unsupported URI"):
        TrainingRun(Tracking("bogus://x"), tmp_path, "pretrain", {})


def test_tracking_is_off_without_a_uri():
    assert not Tracking().enabled and Tracking("sqlite:///x.db").enabled


class _State:
    def __init__(self, step: int) -> None:
        self.global_step = step


def test_uptrain_and_pretrain_offer_the_mlflow_options():
    for command in ("uptrain", "pretrain"):
        done = subprocess.run(
            [sys.executable, "-m", "rrt", command, "--help"], capture_output=True, text=True
        )
        assert "--mlflow-uri" in done.stdout and "--mlflow-parent" in done.stdout


def test_a_killed_job_reruns_into_its_run_and_a_finished_one_into_a_new_run(store_uri):
    from rrt.tracking import JobRun

    tracking = Tracking(store_uri, "jobs", "evaluate x.json", None, {"rule": "evaluate"})
    killed = JobRun(tracking, "evaluate", {"model": "m"}, key="/results/eval/x.json")
    # SIGKILL: nothing marks the run, it stays RUNNING; the job is started again
    again = JobRun(tracking, "evaluate", {"model": "m"}, key="/results/eval/x.json")
    assert again.run_id == killed.run_id
    again.finish({"accuracy": 0.5}, None)
    later = JobRun(tracking, "evaluate", {"model": "m"}, key="/results/eval/x.json")
    assert later.run_id != killed.run_id  # a finished job that runs again is a new run
    other = JobRun(tracking, "evaluate", {"model": "m"}, key="/results/eval/y.json")
    assert other.run_id not in (killed.run_id, later.run_id)
    client, runs = _runs(store_uri, "jobs")
    status = {r.info.run_id: r.info.status for r in runs}
    assert status[killed.run_id] == "FINISHED"
    assert client.get_run(killed.run_id).data.metrics["accuracy"] == 0.5
