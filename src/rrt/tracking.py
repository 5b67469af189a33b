"""MLflow tracking of training runs: parameters, per-step metrics, final metrics and artifacts.

Off unless a tracking URI is given (``--mlflow-uri`` or ``MLFLOW_TRACKING_URI``), so the library
and its tests never need a server. Why a client and not ``mlflow.start_run``: a killed job that
is started again must go on logging into the *same* run, so the run id is kept in the training
work folder and reopened on resume, and steps the killed run had already logged are not logged
twice. A run is nested under a parent (the workflow's experiment run) by the standard
``mlflow.parentRunId`` tag, taken from ``--mlflow-parent`` or ``MLFLOW_PARENT_RUN_ID``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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

    @property
    def enabled(self) -> bool:
        return bool(self.uri)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--mlflow-*`` options of every stage that trains."""
    group = parser.add_argument_group("MLflow", "off unless a tracking URI is given")
    group.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="tracking URI, e.g. sqlite:///mlflow.db (default: $MLFLOW_TRACKING_URI, else off)",
    )
    group.add_argument(
        "--mlflow-experiment",
        default=os.environ.get("MLFLOW_EXPERIMENT_NAME", "rrt"),
        help="experiment name (default: $MLFLOW_EXPERIMENT_NAME, else %(default)s)",
    )
    group.add_argument("--mlflow-run-name", help="run name (default: the output folder's name)")
    group.add_argument(
        "--mlflow-parent",
        default=os.environ.get("MLFLOW_PARENT_RUN_ID"),
        help="run id to nest this run under (default: $MLFLOW_PARENT_RUN_ID)",
    )


def from_arguments(args: argparse.Namespace) -> Tracking:
    name = args.mlflow_run_name or (Path(args.out).name if getattr(args, "out", None) else None)
    return Tracking(args.mlflow_uri, args.mlflow_experiment, name, args.mlflow_parent)


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


class TrainingRun(TrainerCallback):
    """One MLflow run for one training job, reopened when the job resumes after a kill.

    Used as a Trainer callback for the per-step metrics; :meth:`finish` logs the final metrics
    and the output's small files, and marks the run finished.
    """

    def __init__(self, tracking: Tracking, work: Path, stage: str, params: dict[str, Any]):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from rrt.store import git_commit, versions

        id_file = work / RUN_ID_FILE
        try:
            self.client = MlflowClient(tracking_uri=tracking.uri)
            self.run_id = self._reopen(id_file)
            if self.run_id is None:
                self.run_id = self._create(tracking, stage, params, git_commit(), versions())
                id_file.write_text(self.run_id)
        except MlflowException as err:
            raise UserError(f"MLflow at {tracking.uri!r}: {err.message}") from None
        self.logged_step = self._last_logged_step()

    def _reopen(self, id_file: Path) -> str | None:
        if not id_file.is_file():
            return None
        run_id = id_file.read_text().strip()
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _create(
        self,
        tracking: Tracking,
        stage: str,
        params: dict[str, Any],
        commit: str | None,
        libs: dict[str, str],
    ) -> str:
        experiment = self.client.get_experiment_by_name(tracking.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(tracking.experiment)
        )
        tags = {"rrt.stage": stage, "mlflow.source.git.commit": commit or "unknown"}
        tags.update({f"version.{lib}": v for lib, v in libs.items()})
        if tracking.parent_run_id:
            tags["mlflow.parentRunId"] = tracking.parent_run_id
        run = self.client.create_run(experiment_id, tags=tags, run_name=tracking.run_name)
        from mlflow.entities import Param

        flat = flatten(params)
        values = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in flat.items()}
        entries = [Param(k, v[:_MAX_PARAM]) for k, v in sorted(values.items())]
        for start in range(0, len(entries), 100):  # MLflow's limit on params per batch
            self.client.log_batch(run.info.run_id, params=entries[start : start + 100])
        return run.info.run_id

    def _last_logged_step(self) -> int:
        history = self.client.get_metric_history(self.run_id, "loss")
        return max((m.step for m in history), default=-1)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
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

    # ---- TrainerCallback --------------------------------------------------------------------
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        # A resumed job replays the steps between its checkpoint and the kill; they were logged.
        if logs and "loss" in logs and state.global_step > self.logged_step:
            self.log_metrics(logs, state.global_step)
            self.logged_step = state.global_step

    # ---- end --------------------------------------------------------------------------------
    def finish(self, metrics: dict[str, Any], out: Path, step: int) -> None:
        """Final metrics (under ``final.``), the output's JSON files, and status FINISHED."""
        final = {k: v for k, v in metrics.items() if k not in ("config", "run", "final_step")}
        self.log_metrics({"final": final}, step)
        for name in sorted(out.glob("*.json")):
            if name.name not in ("config.json", "tokenizer.json", "tokenizer_config.json"):
                self.client.log_artifact(self.run_id, str(name))
        self.client.set_terminated(self.run_id, status="FINISHED")

    def end(self, status: str) -> None:
        """Mark the run FAILED (an error) or KILLED (Ctrl-C); resuming sets it RUNNING again."""
        self.client.set_terminated(self.run_id, status=status)
