"""MLflow tracking: every rrt job is one run, nested under its experiment's parent run.

Off unless a tracking URI is given (``--mlflow-uri`` or ``MLFLOW_TRACKING_URI``), so the library
and its tests never need a server. Why a client and not ``mlflow.start_run``: a killed job that
is started again must go on logging into the *same* run. A training job keeps its run id in its
work folder (and does not log the steps it replays twice); any other job finds its unfinished
run by the output it writes (tag ``rrt.output``). A run is nested under a parent (the
workflow's experiment run, :func:`start_experiment`) by the standard ``mlflow.parentRunId`` tag,
taken from ``--mlflow-parent`` or ``MLFLOW_PARENT_RUN_ID``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrt.errors import UserError

RUN_ID_FILE = "mlflow_run_id"
_MAX_PARAM = 6000  # MLflow's limit on a parameter value's length
_BATCH = 1000  # MLflow's limit on metrics per log_batch call


@dataclass
class Tracking:
    """Where runs go. ``uri`` None means tracking is off."""

    uri: str | None = None
    experiment: str = "rrt"
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.uri)


# The options whose defaults are MLflow's environment variables: option, variable, its fallback.
_FROM_ENVIRONMENT = (
    ("--mlflow-uri", "MLFLOW_TRACKING_URI", None,
     "tracking URI, e.g. sqlite:///mlflow.db (default: $MLFLOW_TRACKING_URI, else off)"),
    ("--mlflow-experiment", "MLFLOW_EXPERIMENT_NAME", "rrt",
     "experiment name (default: $MLFLOW_EXPERIMENT_NAME, else %(default)s)"),
    ("--mlflow-parent", "MLFLOW_PARENT_RUN_ID", None,
     "run id to nest this run under (default: $MLFLOW_PARENT_RUN_ID)"),
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--mlflow-*`` options of every subcommand."""
    group = parser.add_argument_group("MLflow", "off unless a tracking URI is given")
    for option, variable, fallback, what in _FROM_ENVIRONMENT:
        group.add_argument(option, default=os.environ.get(variable, fallback), help=what)
    group.add_argument("--mlflow-run-name", help="run name (default: the output folder's name)")
    group.add_argument(
        "--mlflow-tag",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a tag of the run (repeatable), e.g. the workflow rule and its wildcards",
    )


def from_arguments(args: argparse.Namespace) -> Tracking:
    out = getattr(args, "out", None)
    command = getattr(args, "command", None)
    default = " ".join(filter(None, (command, Path(out).name if out else None))) or None
    name = args.mlflow_run_name or default
    tags = {}
    for tag in args.mlflow_tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UserError(f"--mlflow-tag {tag!r} is not KEY=VALUE")
        tags[key] = value
    return Tracking(args.mlflow_uri, args.mlflow_experiment, name, args.mlflow_parent, tags)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: MLflow params and metrics are flat."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else client.create_experiment(name)


def _params(params: dict[str, Any]) -> list[Any]:
    from mlflow.entities import Param

    flat = flatten(params)
    values = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in flat.items()}
    return [Param(k, v[:_MAX_PARAM]) for k, v in sorted(values.items())]


class JobRun:
    """One MLflow run for one job, found again when the job is started again after a kill.

    ``key`` names the job (its output); an unfinished run with that key is reopened, a finished
    one means the job runs again and gets a new run.
    """

    def __init__(
        self, tracking: Tracking, stage: str, params: dict[str, Any], key: str | None = None
    ) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client = _client(tracking.uri)
            self.run_id = self._reopen(tracking, key)
            if self.run_id is None:
                self.run_id = self._create(tracking, stage, params, key)
            if os.environ.get("SLURM_JOB_ID"):  # the SLURM job that ran it last (sacct -j)
                self.client.set_tag(self.run_id, "slurm.job_id", os.environ["SLURM_JOB_ID"])
        except MlflowException as err:
            raise UserError(f"MLflow at {tracking.uri!r}: {err.message}") from None

    def _reopen(self, tracking: Tracking, key: str | None) -> str | None:
        if key is None:
            return None
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        if experiment is None:
            return None
        found = self.client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`rrt.output` = '{key}' and attributes.status != 'FINISHED'",
            max_results=1,
        )
        if not found:
            return None
        self.client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id

    def _create(
        self, tracking: Tracking, stage: str, params: dict[str, Any], key: str | None
    ) -> str:
        from rrt.store import git_commit, versions

        experiment_id = _experiment_id(self.client, tracking.experiment)
        tags = {"rrt.stage": stage, "mlflow.source.git.commit": git_commit() or "unknown"}
        tags.update({f"version.{lib}": v for lib, v in versions().items()})
        tags.update(tracking.tags)
        if key is not None:
            tags["rrt.output"] = key
        if tracking.parent_run_id:
            tags["mlflow.parentRunId"] = tracking.parent_run_id
        run = self.client.create_run(experiment_id, tags=tags, run_name=tracking.run_name)
        entries = _params(params)
        for start in range(0, len(entries), 100):  # MLflow's limit on params per batch
            self.client.log_batch(run.info.run_id, params=entries[start : start + 100])
        return run.info.run_id

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Log every finite number in ``metrics`` (nested keys joined by dots) at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(key, float(value), now, step)
            for key, value in flatten(metrics).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
            if math.isfinite(value)
        ]
        for start in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start : start + _BATCH])

    def log_outputs(self, out: Path) -> None:
        """The output's small files: a JSON report (and its samples), or a folder's JSON files."""
        if out.is_file():
            files = [out, *out.parent.glob(f"{out.name.removesuffix('.json')}.samples.jsonl")]
        else:
            skip = ("config.json", "tokenizer.json", "tokenizer_config.json")
            files = [f for f in sorted(out.glob("*.json")) if f.name not in skip]
        for file in files:
            self.client.log_artifact(self.run_id, str(file))

    def finish(self, metrics: dict[str, Any], out: Path | None, step: int = 0) -> None:
        """Final metrics, the output's files, and status FINISHED."""
        self.log_metrics(metrics, step)
        if out is not None and out.exists():
            self.log_outputs(out)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def end(self, status: str) -> None:
        """Mark the run FAILED (an error) or KILLED (Ctrl-C); running again sets it RUNNING."""
        self.client.set_terminated(self.run_id, status=status)


# --- the workflow's parent run -----------------------------------------------------------------

PARENT_TAG = "rrt.experiment_run"


def start_experiment(uri: str, experiment: str, params: dict[str, Any]) -> str:
    """The experiment's parent run (created once, then reopened), RUNNING; its id.

    The Snakefile calls this before any job starts, so the tracking store is created by one
    process (eight jobs creating a fresh sqlite store at once corrupted it).
    """
    client = _client(uri)
    experiment_id = _experiment_id(client, experiment)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = 'true'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        from rrt.store import git_commit, versions

        tags = {PARENT_TAG: "true", "mlflow.source.git.commit": git_commit() or "unknown"}
        tags.update({f"version.{lib}": v for lib, v in versions().items()})
        run_id = client.create_run(experiment_id, tags=tags, run_name=experiment).info.run_id
    entries = [p for p in _params(params) if p.key not in _logged_params(client, run_id)]
    for start in range(0, len(entries), 100):
        client.log_batch(run_id, params=entries[start : start + 100])
    return run_id


def _logged_params(client: Any, run_id: str) -> dict[str, str]:
    return client.get_run(run_id).data.params


def end_experiment(uri: str, run_id: str, status: str) -> None:
    """FINISHED when the workflow succeeded, FAILED when a job failed."""
    _client(uri).set_terminated(run_id, status=status)
