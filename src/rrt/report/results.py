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

from rrt.errors import UserError
from rrt.report.record import RECORD

INITS = ("stepwise", "average", "lower", "random")
NAME = re.compile(
    r"^(?P<base>source"
    r"|reduced-B(?P<reduced_loops>\d+)-(?P<budget>uptrain|source)"
    r"|recursive-B(?P<loops>\d+)-(?P<init>[a-z]+)"
    r"|relaxed-B(?P<relaxed_loops>\d+)-(?P<relaxed_init>[a-z]+)-r(?P<rank>\d+|full))"
    r"(?P<up>\.up(?:-t(?P<tokens>\d+)-w(?P<kd>[0-9.]+)-s(?P<seed>\d+))?)?"
    r"(?P<ee>\.ee)?$"
)


class ResultError(UserError):
    """A result file that is there but malformed: one line naming it."""


@dataclass(frozen=True)
class Name:
    """What a model's name says (the workflow names every model after what it is)."""

    name: str
    kind: str  # full-size, reduced, recursive, relaxed, other
    loops: int | None = None
    init: str | None = None
    rank: str | None = None  # "8", "full"; None without LoRA
    budget: str | None = None  # reduced-size: uptrain or source tokens
    uptrained: bool = False
    early_exit: bool = False
    sweep: tuple[int, float, int] | None = None  # tokens, KD weight, seed

    @property
    def rank_value(self) -> float:
        """For ordering: 0 without LoRA, full above every number."""
        if self.rank is None:
            return 0.0
        return math.inf if self.rank == "full" else float(self.rank)

    @property
    def order(self) -> tuple:
        kinds = ("full-size", "reduced", "recursive", "relaxed", "other")
        init = INITS.index(self.init) if self.init in INITS else len(INITS)
        budget = ("uptrain", "source").index(self.budget) if self.budget else 0
        return (
            kinds.index(self.kind), self.loops or 0, self.early_exit, init, self.rank_value,
            budget, self.uptrained, self.sweep or (0, 0.0, 0), self.name,
        )  # fmt: skip


def parse_name(name: str) -> Name:
    m = NAME.match(name)
    if m is None:
        return Name(name, "other")
    g = m.groupdict()
    sweep = (int(g["tokens"]), float(g["kd"]), int(g["seed"])) if g["tokens"] else None
    common = {"uptrained": bool(g["up"]), "early_exit": bool(g["ee"]), "sweep": sweep}
    if g["base"] == "source":
        return Name(name, "full-size", **common)
    if g["reduced_loops"]:
        return Name(name, "reduced", int(g["reduced_loops"]), budget=g["budget"], **common)
    if g["loops"]:
        return Name(name, "recursive", int(g["loops"]), g["init"], **common)
    return Name(name, "relaxed", int(g["relaxed_loops"]), g["relaxed_init"], g["rank"], **common)


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


def field_of(data: dict[str, Any], dotted: str, kind: Any, where: str, what: str) -> Any:
    """``data[a][b]`` for ``"a.b"``, checked against ``kind`` (a type or tuple; None allowed when
    ``type(None)`` is in it), or one line naming the file, the key and what the file should be."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ResultError(f"{where}: no {dotted!r} (not {what})")
        value = value[part]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ResultError(f"{where}: {dotted!r} is {value!r}, not a number ({what})")
    if not isinstance(value, kind):
        raise ResultError(f"{where}: {dotted!r} is {value!r}, of the wrong type ({what})")
    return value


NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))


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


WHAT_EVAL = "an rrt evaluate report"


def read_evaluation(path: Path, root: Path) -> Evaluation:
    where = _rel(path, root)
    data = read_json(path, root)
    tasks = field_of(data, "tasks", dict, where, WHAT_EVAL)
    suites = field_of(data, "suites", dict, where, WHAT_EVAL)
    averaged = {t for s in suites.values() if isinstance(s, dict) for t in s.get("averaged", [])}
    scores = {}
    for task, spec in tasks.items():
        metric = field_of(spec, "headline.metric", str, f"{where}: tasks.{task}", WHAT_EVAL)
        value = field_of(
            spec, "headline.value", OPTIONAL_NUMBER, f"{where}: tasks.{task}", WHAT_EVAL
        )
        stderr = (spec.get("stderr") or {}).get(metric)
        higher = (spec.get("higher_is_better") or {}).get(metric, True)
        n = (spec.get("samples") or {}).get("effective")
        scores[task] = Score(
            task, metric, _finite(value), _finite(stderr), bool(higher),
            n if isinstance(n, int) else None, task in averaged,
        )  # fmt: skip
    averages = {}
    for suite, spec in suites.items():
        averages[suite] = _finite(
            field_of(spec, "average", OPTIONAL_NUMBER, f"{where}: suites.{suite}", WHAT_EVAL)
        )
    model = field_of(data, "model", dict, where, WHAT_EVAL)
    parameters = field_of(model, "parameters", dict, f"{where}: model", WHAT_EVAL)
    field_of(parameters, "non_embedding", int, f"{where}: model.parameters", WHAT_EVAL)
    exit_loop = model.get("exit_loop")
    samples = data.get("samples_file")
    name = path.name.removesuffix(".json")
    if exit_loop is not None:
        name = re.sub(rf"-exit{exit_loop}$", "", name)
    return Evaluation(
        name=name,
        exit_loop=exit_loop if isinstance(exit_loop, int) else None,
        path=path,
        root=root,
        scores=scores,
        averages=averages,
        parameters={k: v for k, v in parameters.items() if isinstance(v, int)},
        versions=data.get("versions") or {},
        git_commit=data.get("git_commit"),
        device=model.get("device"),
        dtype=model.get("dtype"),
        threads=(data.get("run") or {}).get("torch_threads"),
        samples_file=path.with_name(samples) if isinstance(samples, str) else None,
    )


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


WHAT_METRICS = "an rrt training metrics.json"


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
    where = _rel(path, root)
    data = read_json(path, root)
    tokens = field_of(data, "tokens", int, where, WHAT_METRICS)
    config = data.get("config") or {}
    run = data.get("run") or {}
    loss = run.get("loss") or {}
    exits: dict[int, dict[str, float]] = {}
    for key, value in (data.get("held_out_exits") or {}).items():
        m = re.fullmatch(r"(ce|acc)_loop(\d+)", key)
        if m and _finite(value) is not None:
            exits.setdefault(int(m[2]), {})[m[1]] = float(value)
    parameters = run.get("parameters")
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
        tokens=tokens,
        tokens_per_step=config.get("tokens_per_step"),
        kd_weight=_finite(loss.get("kd_weight")) if isinstance(loss, dict) else None,
        early_exit=bool(loss.get("early_exit")) if isinstance(loss, dict) else False,
        validation_ce=_finite((data.get("validation") or {}).get("ce")),
        exits=exits,
        parameters={k: v for k, v in (parameters or {}).items() if isinstance(v, int)},
        steps=steps,
        provenance=provenance,
    )


WHAT_BENCHMARK = "an rrt benchmark result"
BENCHMARK_FIELDS = (
    "tokens_per_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s", "mean_exit_loop",
    "agreement", "peak_mem_mb",
)  # fmt: skip


@dataclass
class Benchmark:
    name: str
    workload: dict[str, Any]
    hardware: dict[str, Any]
    systems: dict[str, dict[str, Any]]
    model: str | None = None  # the recursive model served (its folder's name)


def read_benchmark(path: Path, root: Path) -> Benchmark:
    where = _rel(path, root)
    data = read_json(path, root)
    systems = field_of(data, "systems", dict, where, WHAT_BENCHMARK)
    checked = {}
    for system, values in systems.items():
        if not isinstance(values, dict):
            raise ResultError(f"{where}: systems.{system} is not an object ({WHAT_BENCHMARK})")
        if "error" not in values:  # a system that failed keeps its error instead of numbers
            field_of(values, "tokens_per_s", NUMBER, f"{where}: systems.{system}", WHAT_BENCHMARK)
        checked[system] = values
    model = data.get("model")
    return Benchmark(
        path.stem,
        data.get("workload") or {},
        data.get("hardware") or {},
        checked,
        Path(model).name if isinstance(model, str) else None,
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
