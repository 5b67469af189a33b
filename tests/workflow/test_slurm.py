"""The cluster profile (workflow/profiles/slurm) on a real SLURM, and uptraining on several GPUs.

The slow tests start a one-node SLURM on this machine from Debian's slurm-wlm and munge
(scripts/slurm/local_cluster.sh; .ci/run installs the packages), submit the smoke config through
the profile edited as the README says, with every job logging over HTTP to an `mlflow server`,
and show that a bad SLURM setting fails fast with SLURM's own message. The uptraining rules start
one process per GPU through torchrun; on the CPU, two processes run through the same rule.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from test_workflow import BIN, REPO, SMOKE, SNAKEFILE, _env, _get_json, _post_json, planned_jobs

PROFILE = REPO / "workflow" / "profiles" / "slurm"
CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.sh"
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+)")
LAUNCH = "torchrun --standalone --nproc-per-node"


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: float = 1800):
    command = [str(BIN / "snakemake"), "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env or _env()
    )


def commands(result: subprocess.CompletedProcess, rule: str) -> list[str]:
    """The shell commands a dry run with -p prints for the jobs of ``rule``."""
    found, current = [], None
    for line in result.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")):
            current = line.split()[-1].rstrip(":")
        elif current == rule and line.startswith("Shell command: "):
            found.append(line.removeprefix("Shell command: "))
            current = None
    return found


# --- the profile and the rules' commands, without a cluster -------------------------------------


def test_uptraining_starts_one_process_per_gpu_with_the_same_command(tmp_path):
    profile = ["--workflow-profile", str(PROFILE), "--configfile", str(SMOKE), "-n", "-p"]
    one = snakemake(tmp_path, *profile)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    two = snakemake(tmp_path, *profile, "--set-resources", "uptrain:gpu=2", "early_exit:gpu=2")
    assert two.returncode == 0, two.stderr[-3000:]
    for rule in ("uptrain", "early_exit"):
        on_one, on_two = commands(one, rule), commands(two, rule)
        assert on_one and all(c.startswith(f"{LAUNCH} 1 -m rrt uptrain ") for c in on_one)
        assert [c.replace(f"{LAUNCH} 2 ", f"{LAUNCH} 1 ") for c in on_two] == on_one
    # without a GPU (the workstation's default), one process on the CPU
    local = snakemake(tmp_path, "--configfile", str(SMOKE), "-n", "-p")
    assert all(c.startswith(f"{LAUNCH} 1 ") for c in commands(local, "uptrain"))


def test_the_slurm_profile_asks_gpus_for_training_evaluation_and_benchmark():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    wanted = {"uptrain", "early_exit", "evaluate", "evaluate_exit", "benchmark"}
    assert all(profile["set-resources"][rule]["gpu"] >= 1 for rule in wanted)
    assert set(profile["set-threads"]) == set(profile["set-resources"])


# --- a one-node SLURM on this machine ------------------------------------------------------------

MISSING = [
    t
    for t in ("slurmctld", "slurmd", "munged", "sbatch")
    if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """slurmctld, slurmd and munged on localhost, stopped afterwards; the environment for it."""
    if MISSING:
        pytest.skip(
            f"no SLURM here ({', '.join(MISSING)} missing): Debian's slurm-wlm and munge are "
            "not installed (.ci/run installs them as root: apt-get install slurm-wlm munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("the local SLURM's slurmd must run as root")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "PATH": f"{os.environ.get('PATH', os.defpath)}:/usr/sbin:/sbin"}
    started = subprocess.run(
        ["bash", str(CLUSTER), "start", str(state)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"state": state, "env": _env()}  # found by SLURM's commands in /etc/slurm
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], env=env, timeout=120)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """An `mlflow server` on loopback, as a user starts one on the login node."""
    store = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for(url: str, wait: float = 120) -> None:
    deadline = time.time() + wait
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def edited_profile(folder: Path, **resources) -> Path:
    """The repository's profile with the README's edits for this cluster: its partition, no
    account (it has none), jobs sized for 2 cores and no GPU, squeue for status checks (no
    accounting database) and, to keep the test short, the first status check after 1 s (the
    plugin adds 10 s to the wait after each check that finds no job done)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    profile["default-resources"] = {"slurm_partition": "debug", **resources}
    profile["set-resources"] = {
        rule: {**asks, "gpu": 0, "mem_mb": 2000, "runtime": 30}
        for rule, asks in profile["set-resources"].items()
    }
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def tracked_at(url: str) -> str:
    return f"mlflow={{tracking_uri: '{url}'}}"


@pytest.fixture(scope="module")
def slurm_smoke(cluster, mlflow_server, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-smoke")
    profile = edited_profile(workdir / "profile")
    args = ["--workflow-profile", str(profile), "--configfile", str(SMOKE)]
    plan = planned_jobs(snakemake(workdir, *args, "-n", env=cluster["env"]))
    started = time.monotonic()
    result = snakemake(workdir, *args, "--config", tracked_at(mlflow_server), env=cluster["env"])
    return {
        "workdir": workdir, "result": result, "plan": plan,
        "seconds": time.monotonic() - started, "output": result.stdout + result.stderr,
    }  # fmt: skip


@pytest.mark.slow
def test_the_smoke_config_runs_every_job_through_slurm(slurm_smoke, cluster):
    result, output = slurm_smoke["result"], slurm_smoke["output"]
    assert result.returncode == 0, output[-6000:]
    results = slurm_smoke["workdir"] / "results" / "smoke"
    evaluations = sorted(p.stem for p in (results / "eval").glob("*.json"))
    assert evaluations == sorted(
        ["source", "source.up", "reduced-B2-uptrain", "recursive-B2-stepwise.up",
         "relaxed-B2-average-r4.up", "relaxed-B2-average-r4.up.ee"]
    )  # fmt: skip
    assert (results / "eval" / "exits" / "relaxed-B2-average-r4.up.ee-exit1.json").is_file()
    # every job but `all` was a SLURM job, which slurmctld ran to the end
    ids = SUBMITTED.findall(output)
    assert len(ids) == len(set(ids)) == sum(slurm_smoke["plan"].values()) - 1, output[-3000:]
    controller = (cluster["state"] / "slurmctld.log").read_text()
    for job in ids:
        assert re.search(rf"_job_complete: JobId={job} WEXITSTATUS 0", controller), job
    uptrained = json.loads((results / "models" / "source.up" / "metrics.json").read_text())
    assert uptrained["processes"] == 1


@pytest.mark.slow
def test_every_slurm_job_logs_its_mlflow_run_over_http(slurm_smoke, mlflow_server):
    assert slurm_smoke["result"].returncode == 0, slurm_smoke["output"][-3000:]
    base = f"{mlflow_server}/api/2.0/mlflow"
    experiment = _get_json(f"{base}/experiments/get-by-name?experiment_name=smoke", 30)
    runs = _post_json(
        f"{base}/runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 1000},
    )["runs"]

    def tags(run: dict) -> dict[str, str]:
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}

    (parent,) = [r for r in runs if tags(r).get("rrt.experiment_run") == "true"]
    assert parent["info"]["status"] == "FINISHED"
    jobs = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert len(jobs) == len(runs) - 1 == sum(slurm_smoke["plan"].values()) - 1
    assert {r["info"]["status"] for r in jobs} == {"FINISHED"}
    assert all(r["data"].get("params") and r["data"].get("metrics") for r in jobs)
    # each run names the SLURM job that ran it: one run per submitted job
    assert sorted(tags(r)["slurm.job_id"] for r in jobs) == sorted(
        SUBMITTED.findall(slurm_smoke["output"])
    )
    evaluation = next(r for r in jobs if tags(r)["rule"] == "evaluate")
    artifacts = _get_json(f"{base}/artifacts/list?run_id={evaluation['info']['run_id']}", 30)
    assert artifacts.get("files"), artifacts  # uploaded through the server, over HTTP too


def _fails_fast(cluster, tmp_path, url, message, **resources):
    profile = edited_profile(tmp_path / "profile", **resources)
    started = time.monotonic()
    result = snakemake(
        tmp_path, "--workflow-profile", str(profile), "--configfile", str(SMOKE),
        "--config", tracked_at(url), env=cluster["env"], timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert seconds < 120, f"took {seconds:.0f} s"
    assert not SUBMITTED.search(output)


@pytest.mark.slow
def test_an_unknown_partition_fails_fast_with_slurms_own_message(cluster, mlflow_server, tmp_path):
    _fails_fast(
        cluster, tmp_path, mlflow_server, "sbatch: error: invalid partition specified: nope",
        slurm_partition="nope",
    )  # fmt: skip


@pytest.mark.slow
def test_a_cluster_run_refuses_to_share_one_sqlite_file(cluster, tmp_path):
    profile = edited_profile(tmp_path / "profile")
    result = snakemake(
        tmp_path, "--workflow-profile", str(profile), "--configfile", str(SMOKE),
        env=cluster["env"], timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "rrt: jobs on a cluster must not share one sqlite file" in output, output[-3000:]
    assert not SUBMITTED.search(output)


# --- two training processes through the uptraining rule, on the CPU ----------------------------


@pytest.mark.slow
def test_the_uptraining_rule_trains_with_two_processes(tmp_path):
    """The rule's torchrun command with two processes (gloo on the CPU, as NCCL on two GPUs)."""
    config = yaml.safe_load(SMOKE.read_text())
    config["train"]["micro_batch_size"] = 4  # 2 processes x 4 x 64 tokens = one step's 512
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/smoke/models/recursive-B2-stepwise.up"
    result = snakemake(
        tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"),
        "--set-resources", "uptrain:gpu=2", "--", target,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((tmp_path / target / "metrics.json").read_text())
    assert metrics["processes"] == 2
    steps = (tmp_path / target / "steps.jsonl").read_text().splitlines()
    assert len(steps) == metrics["steps"] == config["uptrain"]["tokens"] // 512
