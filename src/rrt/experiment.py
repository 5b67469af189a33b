"""An experiment as the workflow runs it: what it makes, and what happens before its first job.

The Snakefile stays declarative (paths and rules); what needs logic lives here, where tests reach
it without Snakemake: the models an experiment config makes (named by :mod:`rrt.names`), the
stale locks a killed run leaves, the PATH its jobs find ``rrt`` on, conda where it is asked for,
and its MLflow parent run.
Light: the Snakefile imports it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rrt import names

# --- what an experiment makes --------------------------------------------------------------


def recursive(config: dict[str, Any]) -> list[str]:
    c = config["recursive"]
    return [names.recursive(b, i).name for b in c["loops"] for i in c["inits"]]


def relaxed(config: dict[str, Any]) -> list[str]:
    c = config["relaxed"]
    return [names.relaxed(b, i, r).name for b in c["loops"] for i in c["inits"] for r in c["ranks"]]


def reduced(config: dict[str, Any]) -> list[str]:
    c = config["baselines"]
    return [names.reduced(b, t).name for b in c["reduced_loops"] for t in c["reduced_budgets"]]


def early_exit(config: dict[str, Any]) -> list[tuple[str, int]]:
    """The early-exit models and their loops."""
    return [
        (names.early_exit(names.uptrained(names.relaxed(m["loops"], m["init"], m["rank"]))).name,
         m["loops"])
        for m in config["early_exit"]["models"]
    ]  # fmt: skip


def evaluated(config: dict[str, Any]) -> list[str]:
    """Every model evaluated at full depth: the source, the baselines, every uptrained model,
    and with ``evaluate.at_init`` every recursive and relaxed model before its uptraining."""
    out = [names.source().name, *reduced(config)]
    if config["evaluate"]["at_init"]:
        out += recursive(config) + relaxed(config)
    if config["baselines"]["full_size"]:
        out.append(names.uptrained(names.source()).name)
    out += [names.uptrained(names.parse(n)).name for n in recursive(config) + relaxed(config)]
    return out + [name for name, _ in early_exit(config)]


def sweep_points(config: dict[str, Any]) -> list[names.Sweep]:
    """The uptraining ablation's points (budgets x KD weights x seeds); none without a sweep."""
    sweep, defaults = config["sweep"], config["uptrain"]
    if not any(sweep.values()):
        return []
    return [
        names.Sweep(t, w, s)
        for t in sweep["tokens"] or [defaults["tokens"]]
        for w in sweep["kd_weights"] or [defaults["loss"]["kd_weight"]]
        for s in sweep["seeds"] or [config["train"]["seed"]]
    ]


def swept(config: dict[str, Any]) -> list[str]:
    """Every recursive and relaxed model once per sweep point (``NAME.up-tT-wW-sS``)."""
    return [
        names.uptrained(names.parse(name), point).name
        for name in recursive(config) + relaxed(config)
        for point in sweep_points(config)
    ]


def made(config: dict[str, Any]) -> list[str]:
    """Every model folder the experiment makes (a local source is the user's, not made)."""
    out = [*recursive(config), *relaxed(config), *evaluated(config)]
    if config["source"]["kind"] == "local":
        out.remove("source")
    return list(dict.fromkeys(out))


# --- before the first job ------------------------------------------------------------------


def alive(pid: str) -> bool:
    """Whether the process of that id still runs."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def clear_stale_locks(owner: Path, locks: Path) -> None:
    """Remove the locks of a Snakemake run that is gone (SIGKILL gave it no time to unlock), so
    starting the workflow again is all a killed run needs. A live run keeps its locks, and
    Snakemake then refuses a second one as usual."""
    if owner.is_file() and not alive(owner.read_text().strip()):
        for lock in locks.glob("*.lock"):
            lock.unlink()
        owner.unlink()


def find_rrt_first(src: Path) -> None:
    """Jobs run ``python -m rrt`` with the Python that runs Snakemake (``.venv/bin/snakemake``
    needs no activated venv); with ``--sdm conda`` the rule's environment comes first on PATH,
    and rrt is imported from the workflow's own ``src`` in either (conda environments hold rrt's
    dependencies, not rrt)."""
    os.environ["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]
    )
    src_dir = str(src.resolve())
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    paths = [p for p in paths if p not in ("", src_dir)]
    os.environ["PYTHONPATH"] = os.pathsep.join([src_dir, *paths])


def check_conda(methods: Iterable[Any]) -> None:
    """Snakemake's ``--sdm conda`` where no ``conda`` is on PATH: one line saying what to install,
    before any job (Snakemake itself would stop at the first job with a paragraph)."""
    if "conda" in {str(m).lower() for m in methods} and shutil.which("conda") is None:
        raise SystemExit(
            "rrt: --sdm conda needs the `conda` command on PATH and there is none: install "
            "Miniforge (https://conda-forge.org/download) and activate its base environment, "
            "or leave out --sdm conda to run every rule in this environment (scripts/setup.sh)"
        )


def tracking_uri(config: dict[str, Any], results: str | Path) -> str:
    """The config's MLflow tracking URI, or a sqlite store beside the results."""
    return config["mlflow"]["tracking_uri"] or f"sqlite:///{Path(results, 'mlflow.db').resolve()}"


def start(
    config: dict[str, Any], results: str | Path, expected: dict[str, list[str]], on_cluster: bool
) -> str:
    """Before the first job: the experiment's record (its config and what it makes, which the
    report reads) and its MLflow parent run, created by this one process; jobs learn where to
    log through the environment they inherit (SLURM jobs too: sbatch --export=ALL). The run id.
    """
    from rrt import tracking
    from rrt.errors import UserError
    from rrt.report.record import write_record

    uri = tracking_uri(config, results)
    if on_cluster and uri.startswith("sqlite:"):
        raise UserError(
            f"jobs on a cluster must not share one sqlite file ({uri}): start an `mlflow server` "
            "and set mlflow.tracking_uri to its URL (README: On a SLURM cluster)"
        )
    Path(results).mkdir(parents=True, exist_ok=True)
    write_record(results, config, expected)
    name = config["mlflow"]["experiment"] or config["experiment"]
    run_id = tracking.start_experiment(uri, name, config)
    os.environ.update(
        MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME=name, MLFLOW_PARENT_RUN_ID=run_id
    )
    return run_id


def end(config: dict[str, Any], results: str | Path, run_id: str | None, status: str) -> None:
    """FINISHED when the workflow succeeded, FAILED when a job failed."""
    if run_id is not None:
        from rrt import tracking

        tracking.end_experiment(tracking_uri(config, results), run_id, status)
