"""Reading an experiment's results folder: evaluations, per-sample files, training metrics and
step logs, benchmarks and the experiment's record. Only files under ``results/<experiment>/``
are read (never MLflow), so the same folder always gives the same report.

A file that is there but cannot be read is one line naming it (:class:`ResultError`); a result
that is not there is a gap with its reason (:mod:`rrt.report.tables.gaps`), never an error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rrt.contracts import BenchmarkResult, ContractError, EvaluationReport, TrainingMetrics
from rrt.errors import UserError
from rrt.names import Name, parse_exit_evaluation
from rrt.names import parse as parse_name
from rrt.report.record import RECORD

__all__ = ["Name", "parse_name"]  # what a model's name says: rrt.names, re-exported for the report


class ResultError(ContractError):
    """A result file that is there but malformed: one line naming it."""


def _read(path: Path, root: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ResultError(f"{_rel(path, root)}: cannot be read ({err})") from None


def _object(text: str, where: str) -> dict[str, Any]:
    """One JSON object, or one line: ``where`` and what is wrong with it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultError(f"{where} not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{where} not a JSON object")
    return data


def read_json(path: Path, root: Path) -> dict[str, Any]:
    return _object(_read(path, root), f"{_rel(path, root)}:")


def read_jsonl(path: Path, root: Path) -> list[dict[str, Any]]:
    where, lines = _rel(path, root), _read(path, root).splitlines()
    return [
        _object(line, f"{where}: line {n} is") for n, line in enumerate(lines, 1) if line.strip()
    ]


def _rel(path: Path, root: Path) -> str:
    try:
        return (root.name / path.relative_to(root)).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Score:
    task: str
    metric: str
    value: float | None
    stderr: float | None
    higher_is_better: bool
    n: int | None
    averaged: bool


@dataclass(frozen=True)
class Sample:
    doc_hash: str
    correct: bool | None
    loglikelihood: float | None  # summed over the item's continuation(s)


@dataclass
class Evaluation:
    """One ``rrt evaluate`` report (a model at full depth, or after ``exit_loop`` loops)."""

    name: str
    exit_loop: int | None
    path: Path
    root: Path
    scores: dict[str, Score]
    averages: dict[str, float | None]
    parameters: dict[str, int]
    versions: dict[str, str]
    git_commit: str | None
    device: str | None
    dtype: str | None
    threads: int | None
    samples_file: Path | None

    @property
    def average(self) -> float | None:
        """The average of the first suite evaluated (the embedded or the paper suite)."""
        return next(iter(self.averages.values()), None)

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
        where = _rel(self.samples_file, self.root)
        out: dict[str, dict[int, Sample]] = {}
        for number, row in enumerate(read_jsonl(self.samples_file, self.root), 1):
            task = row.get("task")
            doc = row.get("doc_id")
            lls = row.get("loglikelihoods")
            if not isinstance(task, str) or not isinstance(doc, int) or not isinstance(lls, list):
                raise ResultError(
                    f"{where}: line {number} lacks task, doc_id or loglikelihoods "
                    "(not an rrt evaluate samples file)"
                )
            correct = row.get("correct")
            total = math.fsum(float(v) for v in lls) if lls else None
            out.setdefault(task, {})[doc] = Sample(
                str(row.get("doc_hash", "")), correct if isinstance(correct, bool) else None, total
            )
        return out


def read_evaluation(path: Path, root: Path) -> Evaluation:
    report = EvaluationReport.from_dict(read_json(path, root), _rel(path, root))
    averaged = {t for suite in report.suites.values() for t in suite.averaged}
    scores = {}
    for task, spec in report.tasks.items():
        metric = spec.headline.get("metric")
        if not isinstance(metric, str):
            raise ResultError(f"{_rel(path, root)}: tasks.{task}.headline has no metric name")
        n = (spec.samples or {}).get("effective")
        scores[task] = Score(
            task, metric, _finite(spec.headline.get("value")), spec.stderr.get(metric),
            bool(spec.higher_is_better.get(metric, True)), n, task in averaged,
        )  # fmt: skip
    name, exit_loop = parse_exit_evaluation(path.name.removesuffix(".json"))
    if exit_loop != report.model.exit_loop:  # a full-depth model whose name ends in -exitN
        name, exit_loop = path.name.removesuffix(".json"), report.model.exit_loop
    return Evaluation(
        name=name,
        exit_loop=exit_loop,
        path=path,
        root=root,
        scores=scores,
        averages={suite: spec.average for suite, spec in report.suites.items()},
        parameters=report.model.parameters,
        versions=report.versions,
        git_commit=report.git_commit,
        device=report.model.device,
        dtype=report.model.dtype,
        threads=report.run.get("torch_threads"),
        samples_file=path.with_name(report.samples_file) if report.samples_file else None,
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class Training:
    """A trained model's ``metrics.json`` and step log (``steps.jsonl``)."""

    name: str
    tokens: int
    tokens_per_step: int | None
    kd_weight: float | None
    early_exit: bool
    validation_ce: float | None
    exits: dict[int, dict[str, float]]  # loop -> {"ce": ..., "acc": ...} (held-out)
    parameters: dict[str, int]
    steps: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


def read_training(folder: Path, root: Path) -> Training | None:
    """A model folder's training results; None for a model that was not trained (converted)."""
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    metrics = TrainingMetrics.from_dict(read_json(path, root), _rel(path, root))
    loss = metrics.run.get("loss") or {}
    exits: dict[int, dict[str, float]] = {}
    for key, value in (metrics.held_out_exits or {}).items():
        m = re.fullmatch(r"(ce|acc)_loop(\d+)", key)
        if m:
            exits.setdefault(int(m[2]), {})[m[1]] = value
    parameters = metrics.run.get("parameters")
    if isinstance(parameters, int):  # the embedded pretraining records the total only
        parameters = {"total": parameters}
    steps_file = folder / "steps.jsonl"
    steps = read_jsonl(steps_file, root) if steps_file.is_file() else []
    for number, step in enumerate(steps, 1):
        if not isinstance(step.get("step"), int):
            raise ResultError(f"{_rel(steps_file, root)}: line {number} has no integer 'step'")
    provenance_file = folder / "provenance.json"
    provenance = read_json(provenance_file, root) if provenance_file.is_file() else {}
    return Training(
        name=folder.name,
        tokens=metrics.tokens,
        tokens_per_step=metrics.config.get("tokens_per_step"),
        kd_weight=_finite(loss.get("kd_weight")) if isinstance(loss, dict) else None,
        early_exit=bool(loss.get("early_exit")) if isinstance(loss, dict) else False,
        validation_ce=(metrics.validation or {}).get("ce"),
        exits=exits,
        parameters={k: v for k, v in (parameters or {}).items() if isinstance(v, int)},
        steps=steps,
        provenance=provenance,
    )


@dataclass
class Benchmark:
    name: str
    workload: dict[str, Any]
    hardware: dict[str, Any]
    systems: dict[str, dict[str, Any]]
    model: str | None = None  # the recursive model served (its folder's name)


def read_benchmark(path: Path, root: Path) -> Benchmark:
    result = BenchmarkResult.from_dict(read_json(path, root), _rel(path, root))
    return Benchmark(
        path.stem,
        result.workload,
        result.hardware,
        {name: system.to_dict() for name, system in result.systems.items()},
        Path(result.model).name,
    )


@dataclass
class Results:
    root: Path
    record: dict[str, Any] | None
    evaluations: dict[tuple[str, int | None], Evaluation]
    trainings: dict[str, Training]
    benchmarks: list[Benchmark]
    models_present: set[str]

    def evaluation(self, name: str, exit_loop: int | None = None) -> Evaluation | None:
        return self.evaluations.get((name, exit_loop))

    @property
    def experiment(self) -> str:
        return (self.record or {}).get("experiment") or self.root.name

    def expected(self, kind: str) -> list[str] | None:
        """Relative paths the record says the experiment makes (None without a record)."""
        if self.record is None:
            return None
        return list((self.record.get("expected") or {}).get(kind, []))


def load(root: str | Path) -> Results:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--results {root}: no such folder")
    record = read_json(root / RECORD, root) if (root / RECORD).is_file() else None
    evaluations = {}
    for path in sorted((root / "eval").glob("*.json")) + sorted(
        (root / "eval" / "exits").glob("*.json")
    ):
        evaluation = read_evaluation(path, root)
        evaluations[(evaluation.name, evaluation.exit_loop)] = evaluation
    trainings, present = {}, set()
    models = root / "models"
    for folder in sorted(models.iterdir()) if models.is_dir() else []:
        if not folder.is_dir() or folder.name.endswith(".work") or folder.name.startswith("."):
            continue
        present.add(folder.name)
        training = read_training(folder, root)
        if training is not None:
            trainings[folder.name] = training
    benchmarks = [read_benchmark(p, root) for p in sorted((root / "benchmarks").glob("*.json"))]
    return Results(root, record, evaluations, trainings, benchmarks, present)
