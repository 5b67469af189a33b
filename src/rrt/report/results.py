"""Reading an experiment's results folder (only ``results/<experiment>/``, never MLflow, so the
same folder gives the same report): evaluations, per-sample files, training metrics and step logs,
benchmarks and the record, each through its :mod:`rrt.contracts` class. A file that is there but
cannot be read is one line naming it (a ContractError); a result that is not there is a gap, with
why (the failed job's last log line, or the missing result it waits for), never an error.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from rrt import io
from rrt.contracts import BenchmarkResult, ContractError, EvaluationReport, TrainingMetrics
from rrt.errors import UserError
from rrt.names import Name, parse_exit_evaluation
from rrt.names import parse as parse_name
from rrt.report.record import RECORD

__all__ = ["Name", "parse_name"]  # what a model's name says: rrt.names, re-exported for the report
LOG_RULES = {"reduced": "reduced", "recursive": "convert", "relaxed": "relax"}  # model kind -> rule


def _rel(path: Path, root: Path) -> str:
    return (root.name / path.relative_to(root)).as_posix()


def read_json(path: Path, root: Path) -> dict[str, Any]:
    """A JSON object, or one line naming the file (relative to the results' parent)."""
    data = io.read_json(path, _rel(path, root), ContractError)
    if not isinstance(data, dict):
        raise ContractError(f"{_rel(path, root)} is not a JSON object")
    return data


def read_jsonl(path: Path, root: Path) -> list[tuple[int, dict[str, Any]]]:
    return list(io.read_jsonl(path, _rel(path, root), ContractError))


def finite(value: Any) -> float | None:
    """A number as a float; None for anything else (missing, not finite, a bool)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


class Score(NamedTuple):
    """A task's headline (a row of tables/scores.csv)."""

    task: str
    metric: str
    value: float | None
    stderr: float | None
    n: int | None
    averaged: bool  # by the suite


class Sample(NamedTuple):
    doc_hash: str
    correct: bool | None
    loglikelihood: float | None  # summed over the item's continuation(s)


@dataclass
class Evaluation:
    """One ``rrt evaluate`` report (a model at full depth, or after ``exit_loop`` loops)."""

    name: str
    exit_loop: int | None
    report: EvaluationReport
    scores: dict[str, Score]
    samples_file: Path | None
    root: Path

    @property
    def average(self) -> float | None:
        """The average of the first suite evaluated (the embedded or the paper suite)."""
        return next((suite.average for suite in self.report.suites.values()), None)

    @property
    def average_stderr(self) -> float | None:
        """Stderr of the suite average: the averaged tasks' stderrs added in quadrature."""
        parts = [s.stderr for s in self.scores.values() if s.averaged]
        if not parts or None in parts:
            return None
        return math.sqrt(sum(p * p for p in parts)) / len(parts)

    @cached_property
    def samples(self) -> dict[str, dict[int, Sample]]:
        """task -> doc_id -> the item's correctness and log-likelihood (empty without a file)."""
        if self.samples_file is None or not self.samples_file.is_file():
            return {}
        out: dict[str, dict[int, Sample]] = {}
        for number, row in read_jsonl(self.samples_file, self.root):
            task, doc, lls = row.get("task"), row.get("doc_id"), row.get("loglikelihoods")
            if not isinstance(task, str) or not isinstance(doc, int) or not isinstance(lls, list):
                raise ContractError(
                    f"{_rel(self.samples_file, self.root)}: line {number} lacks task, doc_id or "
                    "loglikelihoods (not an rrt evaluate samples file)"
                )
            correct = row["correct"] if isinstance(row.get("correct"), bool) else None
            total = math.fsum(float(v) for v in lls) if lls else None
            out.setdefault(task, {})[doc] = Sample(str(row.get("doc_hash", "")), correct, total)
        return out


def read_evaluation(path: Path, root: Path) -> Evaluation:
    report = EvaluationReport.read(path, where := _rel(path, root))
    averaged = {t for suite in report.suites.values() for t in suite.averaged}
    scores = {}
    for task, spec in report.tasks.items():
        if not isinstance(metric := spec.headline.get("metric"), str):
            raise ContractError(f"{where}: tasks.{task}.headline has no metric name")
        value, n = finite(spec.headline.get("value")), (spec.samples or {}).get("effective")
        scores[task] = Score(task, metric, value, spec.stderr.get(metric), n, task in averaged)
    name, exit_loop = parse_exit_evaluation(stem := path.name.removesuffix(".json"))
    if exit_loop != report.model.exit_loop:  # a full-depth model whose name ends in -exitN
        name, exit_loop = stem, report.model.exit_loop
    samples = path.with_name(report.samples_file) if report.samples_file else None
    return Evaluation(name, exit_loop, report, scores, samples, root)


@dataclass
class Training:
    """A trained model's ``metrics.json``, step log (``steps.jsonl``) and provenance.json."""

    name: str
    metrics: TrainingMetrics
    kd_weight: float | None
    exits: dict[int, dict[str, float]]  # loop -> {"ce": ..., "acc": ...} (held-out)
    parameters: dict[str, int]
    steps: list[dict[str, Any]]
    provenance: dict[str, Any]

    @property
    def ce(self) -> float | None:
        """Held-out cross-entropy at the end of training (nats per token)."""
        return (self.metrics.validation or {}).get("ce")


def read_training(folder: Path, root: Path) -> Training | None:
    """A model folder's training results; None for a model that was not trained (converted)."""
    path, log, provenance = (folder / f for f in ("metrics.json", "steps.jsonl", "provenance.json"))
    if not path.is_file():
        return None
    metrics = TrainingMetrics.read(path, _rel(path, root))
    loss = metrics.run.get("loss") or {}
    exits: dict[int, dict[str, float]] = {}
    for key, value in (metrics.held_out_exits or {}).items():
        if m := re.fullmatch(r"(ce|acc)_loop(\d+)", key):
            exits.setdefault(int(m[2]), {})[m[1]] = value
    parameters = metrics.run.get("parameters")
    if isinstance(parameters, int):  # the embedded pretraining records the total only
        parameters = {"total": parameters}
    steps = read_jsonl(log, root) if log.is_file() else []
    for number, step in steps:
        if not isinstance(step.get("step"), int):
            raise ContractError(f"{_rel(log, root)}: line {number} has no integer 'step'")
    return Training(
        folder.name,
        metrics,
        finite(loss.get("kd_weight")) if isinstance(loss, dict) else None,
        exits,
        {k: v for k, v in (parameters or {}).items() if isinstance(v, int)},
        [step for _, step in steps],
        read_json(provenance, root) if provenance.is_file() else {},
    )


class Gap(NamedTuple):
    path: str
    reason: str


@dataclass
class Results:
    root: Path
    record: dict[str, Any] | None
    evaluations: dict[tuple[str, int | None], Evaluation]
    trainings: dict[str, Training]
    benchmarks: dict[str, BenchmarkResult]  # by file stem
    models_present: set[str]

    @property
    def experiment(self) -> str:
        return (self.record or {}).get("experiment") or self.root.name

    def expected(self, kind: str) -> list[str] | None:
        """Relative paths the record says the experiment makes (None without a record)."""
        if self.record is None:
            return None
        return list((self.record.get("expected") or {}).get(kind, []))

    @cached_property
    def gaps(self) -> list[Gap]:
        """The record's expected results that are not there (without a record: the evaluations of
        the models present)."""
        kinds = ("evaluations", "models", "benchmarks")
        paths = {p for kind in kinds for p in self.expected(kind) or []}
        if self.record is None:
            for n in map(parse_name, self.models_present):
                if (n.kind in ("full-size", "reduced") or n.uptrained) and n.sweep is None:
                    paths.add(f"eval/{n.name}.json")
        missing = sorted(p for p in paths if not (self.root / p).exists())
        return [Gap(p, missing_reason(self.root, p)) for p in missing]


def job(relative: str) -> tuple[str | None, str | None]:
    """The log of the job that makes ``relative`` (as the workflow names logs), and its model."""
    parts = relative.split("/")
    folder, stem = parts[0], parts[-1].removesuffix(".json")
    if folder == "benchmarks":
        return f"logs/benchmark/{stem}.log", None
    if folder == "eval":  # an exit's evaluation (eval/exits/) is made from the model
        model = re.sub(r"-exit\d+$", "", stem) if len(parts) == 3 else stem
        return f"logs/evaluate/{stem}.log", f"models/{model}"
    if folder != "models":
        return None, None
    model, name = parts[1], parse_name(parts[1])
    base = model.split(".", 1)[0]
    if name.early_exit:
        return f"logs/early_exit/{base}.log", "models/" + model.removesuffix(".ee")
    if name.uptrained:
        before, variant = model.split(".up", 1)
        return f"logs/uptrain/{base}{variant}.log", f"models/{before}"
    if name.kind == "full-size":
        return "logs/pretrain/source.log", None
    rule = LOG_RULES.get(name.kind)
    log = f"logs/{rule}/{base.split('-', 1)[1]}.log" if rule else None
    return log, f"models/recursive-B{name.loops}-{name.init}" if name.kind == "relaxed" else None


def missing_reason(root: Path, relative: str) -> str:
    """Why ``relative`` is missing: the failed job's last log line, or what it waits for."""
    if (root / (relative + ".work")).is_dir():
        return f"training interrupted or still running ({relative}.work holds its checkpoints)"
    log, source = job(relative)
    if log is not None and (root / log).is_file():
        return f"its job failed: {log} ends with: {_last_line(root / log)}"
    if source is not None and not (root / source).exists():
        return f"not run: {source} is missing ({missing_reason(root, source)})"
    return "not run yet (no result and no job log)"


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("rrt ") and ": error:" in line]
    line = (errors or lines or ["(an empty log)"])[-1]
    return line if len(line) <= 200 else line[:197] + "..."


def load(root: str | Path) -> Results:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--results {root}: no such folder")
    if not any((root / part).exists() for part in (RECORD, "eval", "models", "benchmarks")):
        inside = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / RECORD).is_file())
        hint = f"; its experiments: {', '.join(inside)}" if inside else ""
        raise UserError(
            f"--results {root} holds no results (no {RECORD}, eval/, models/ or benchmarks/): "
            f"give an experiment's folder, results/<experiment>{hint}"
        )
    record = read_json(root / RECORD, root) if (root / RECORD).is_file() else None
    paths = [*sorted((root / "eval").glob("*.json")), *sorted((root / "eval/exits").glob("*.json"))]
    evaluations = {(e.name, e.exit_loop): e for e in (read_evaluation(p, root) for p in paths)}
    folders = sorted((root / "models").glob("[!.]*"))  # not hidden, nor checkpoints (NAME.work)
    present = {f.name for f in folders if f.is_dir() and not f.name.endswith(".work")}
    trainings = {n: t for n in sorted(present) if (t := read_training(root / "models" / n, root))}
    benchmarks = {
        p.stem: BenchmarkResult.read(p, _rel(p, root))
        for p in sorted((root / "benchmarks").glob("*.json"))
    }
    return Results(root, record, evaluations, trainings, benchmarks, present)
