"""The files one stage writes and another reads, each defined once.

``metrics.json`` (training), the evaluation report (``rrt evaluate``) and the benchmark result
(``rrt benchmark``) are dataclasses here. Their writers build them (so a field the writer misses
or misnames fails at once), their readers parse them with :meth:`Contract.read` (one line naming
the file and the key when a value is missing or of the wrong type), and the test fixtures build
them too, so a renamed field breaks a test instead of silently passing on an old file shape.
Light: plain dataclasses and JSON.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

from rrt.errors import UserError
from rrt.io import read_json

C = TypeVar("C", bound="Contract")


class ContractError(UserError):
    """A file that is there but is not what its contract says: one line naming it and the key."""


class Contract:
    """A JSON object with declared fields (subclasses are dataclasses)."""

    WHAT: ClassVar[str] = "a JSON object"

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Contract):
                value = value.to_dict()
            elif isinstance(value, dict):
                value = {k: v.to_dict() if isinstance(v, Contract) else v for k, v in value.items()}
            out[f.metadata.get("json", f.name)] = value
        return out

    @classmethod
    def from_dict(cls: type[C], data: Any, where: str, strict: bool = False) -> C:
        """Check ``data`` against the fields: a missing key, a wrong type or a non-finite number
        is one line naming ``where`` and the key. Readers ignore keys the contract does not
        declare; writers (``strict``) refuse them, so a renamed field fails where it is written.
        """
        if not isinstance(data, dict):
            raise ContractError(f"{where}: not a JSON object ({cls.WHAT})")
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        keys = {f.metadata.get("json", f.name): f for f in fields}
        if strict and set(data) - set(keys):
            unknown = sorted(set(data) - set(keys))[0]
            raise ContractError(f"{where}: {unknown!r} is not a field of {cls.WHAT}")
        values = {}
        for key, f in keys.items():
            if key not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise ContractError(f"{where}: no {key!r} (not {cls.WHAT})")
                continue
            value = _check(data[key], hints[f.name], f"{where}: {key}", cls.WHAT, strict)
            low = f.metadata.get("min")
            if low is not None and value is not None and value < low:
                raise ContractError(f"{where}: {key} is {value!r}, below {low} ({cls.WHAT})")
            values[f.name] = value
        return cls(**values)

    @classmethod
    def owns(cls, path: str | Path) -> bool:
        """Whether ``path`` holds a file of this contract (an output its command may replace)."""
        try:
            cls.read(path)
        except ContractError:
            return False
        return True

    @classmethod
    def read(cls: type[C], path: str | Path, where: str | None = None) -> C:
        where = where or str(path)
        return cls.from_dict(read_json(path, where, ContractError), where)


def _check(value: Any, kind: Any, where: str, what: str, strict: bool) -> Any:
    """``value`` as ``kind`` (a class, a Contract, ``X | None``, ``dict[str, X]``, ``list[X]``)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        errors = []
        for k in kinds:
            try:
                return _check(value, k, where, what, strict)
            except ContractError as err:
                errors.append(err)
        raise errors[0] if len(kinds) == 1 else _wrong(value, where, what)
    if isinstance(kind, type) and issubclass(kind, Contract):
        return kind.from_dict(value, where, strict)
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(value, where, what)
        return {k: _check(v, args[1], f"{where}.{k}", what, strict) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise _wrong(value, where, what)
        return [_check(v, args[0], f"{where}[{i}]", what, strict) for i, v in enumerate(value)]
    if kind is Any:
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _wrong(value, where, what)
        if not math.isfinite(value):
            raise ContractError(f"{where} is {value!r}, not a finite number ({what})")
        return float(value)
    if kind is int and isinstance(value, bool):
        raise _wrong(value, where, what)
    if not isinstance(value, kind):
        raise _wrong(value, where, what)
    return value


def _wrong(value: Any, where: str, what: str) -> ContractError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return ContractError(f"{where} is {shown}, of the wrong type ({what})")


COUNT = {"min": 0}  # a field's metadata: a count or a measure, never negative


# --- training: metrics.json --------------------------------------------------------------------


@dataclasses.dataclass
class TrainingMetrics(Contract):
    """What ``rrt pretrain`` and ``rrt uptrain`` write beside a trained model."""

    WHAT: ClassVar[str] = "an rrt training metrics.json"

    steps: int = dataclasses.field(metadata=COUNT)
    tokens: int = dataclasses.field(metadata=COUNT)
    train_seconds: float = dataclasses.field(metadata=COUNT)
    tokens_per_second: float | None = dataclasses.field(metadata=COUNT)
    processes: int = dataclasses.field(metadata={"min": 1})
    peak_memory_mb: float | None = dataclasses.field(metadata=COUNT)
    config: dict[str, Any]  # the train recipe (TrainConfig)
    run: dict[str, Any]  # what the run was: model, data, loss, parameters
    wall_seconds_this_run: float | None = None
    resumed_from_step: int | None = None
    final_step: dict[str, Any] | None = None
    validation: dict[str, float] | None = None  # held-out loss components (ce, kd, ...)
    validation_tokens: int | None = None
    held_out_exits: dict[str, float] | None = None  # ce_loop1, acc_loop1, ... (recursive models)


# --- evaluation: eval/NAME.json ----------------------------------------------------------------


@dataclasses.dataclass
class TaskScore(Contract):
    """One task's results as lm-eval reports them, with the headline the suite uses."""

    WHAT: ClassVar[str] = "an rrt evaluate report"

    metrics: dict[str, float | None]
    stderr: dict[str, float | None]
    higher_is_better: dict[str, bool]
    headline: dict[str, Any]  # {"metric": name, "value": number or None}
    num_fewshot: int | None = None
    samples: dict[str, int] | None = None  # lm-eval's n-samples: original, effective
    version: Any = None
    output_type: str | None = None
    dataset: dict[str, Any] | None = None


@dataclasses.dataclass
class SuiteAverage(Contract):
    WHAT: ClassVar[str] = "an rrt evaluate report"

    tasks: dict[str, str]  # task -> headline metric
    averaged: list[str]
    average: float | None


@dataclasses.dataclass
class EvaluatedModel(Contract):
    WHAT: ClassVar[str] = "an rrt evaluate report"

    model_type: str
    parameters: dict[str, int]  # total, non_embedding (shared tensors counted once)
    exit_loop: int | None = None
    num_loops: int | None = None
    name_or_path: str | None = None
    dir: str | None = None  # the model folder evaluated (absolute)
    tokenizer: str | None = None
    dtype: str | None = None
    device: str | None = None
    # the class name, as "class" in the JSON (a keyword here)
    model_class: str | None = dataclasses.field(default=None, metadata={"json": "class"})


@dataclasses.dataclass
class EvaluationReport(Contract):
    """``rrt evaluate``'s report: per-task scores, suite averages, the model and the run."""

    WHAT: ClassVar[str] = "an rrt evaluate report"

    tasks: dict[str, TaskScore]
    suites: dict[str, SuiteAverage]
    model: EvaluatedModel
    run: dict[str, Any]
    versions: dict[str, str]
    git_commit: str | None
    samples_file: str | None = None  # per-sample rows (JSONL) beside the report


# --- benchmark: benchmarks/NAME.json -----------------------------------------------------------

ROOFLINE_FIELDS = (
    "flops_per_token",
    "bytes_per_token",
    "roofline_tokens_per_s",
    "roofline_bound",
    "roofline_fraction",
    "decode_steps",
    "decode_step_ms",
    "decode_bytes_per_step",
    "decode_gb_per_s",
    "decode_bandwidth_fraction",
    "decode_gflop_per_s",
    "decode_compute_fraction",
)


@dataclasses.dataclass
class ServedSystem(Contract):
    """One system's run of the workload (a failed system has only ``error``)."""

    WHAT: ClassVar[str] = "an rrt benchmark result"

    tokens_per_s: float | None = dataclasses.field(default=None, metadata=COUNT)
    seconds: float | None = dataclasses.field(default=None, metadata=COUNT)
    seconds_runs: list[float] | None = None  # each run's (repeats); seconds is the median's
    output_tokens: int | None = dataclasses.field(default=None, metadata=COUNT)
    latency_p50_s: float | None = None
    latency_p90_s: float | None = None
    latency_p99_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    mean_exit_loop: float | None = None
    exit_loop_histogram: dict[str, int] | None = None
    agreement: float | None = None  # teacher-forced, against full depth
    sequence_agreement: float | None = None  # positional, against the full-depth system's output
    peak_mem_mb: float | None = None
    threshold: float | None = None  # real early exit: the confidence threshold
    kv_fill: str | None = None  # ride, propagate; skipped for the simulated estimate
    agreement_target: float | None = None
    speedup_vs_vanilla: float | None = None
    x_depthwise: float | None = None  # an exit system's tokens/s over depth-wise's
    x_depthwise_counted: float | None = None  # the same for their rooflines: what counts predict
    steps: int | None = None
    rows_per_step: float | None = None
    compile_s: float | None = None  # torch.compile's time, before and outside ``seconds``
    estimate: str | None = None  # how the simulated row is computed
    flops_per_token: float | None = None
    bytes_per_token: float | None = None
    roofline_tokens_per_s: float | None = None
    roofline_bound: str | None = None
    roofline_fraction: float | None = None
    decode_steps: int | None = None
    decode_step_ms: float | None = None
    decode_bytes_per_step: float | None = None
    decode_gb_per_s: float | None = None
    decode_bandwidth_fraction: float | None = None
    decode_gflop_per_s: float | None = None
    decode_compute_fraction: float | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str, strict: bool = False) -> ServedSystem:
        system = super().from_dict(data, where, strict)
        if system.error is None and system.tokens_per_s is None:
            raise ContractError(f"{where}: no 'tokens_per_s' and no 'error' (not {cls.WHAT})")
        return system

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        out = super().to_dict()
        del out["error"]
        return out


@dataclasses.dataclass
class ExitCeiling(Contract):
    """What the counts allow early exit at best (:func:`rrt.benchmark.bench.exit_ceiling`):
    roofline tokens/s of decode steps of ``rows`` rows at position ``position``."""

    WHAT: ClassVar[str] = "an rrt benchmark result"

    rows: int
    position: int
    depthwise_tokens_per_s: float
    all_exit_tokens_per_s: float
    sequence_continuous_tokens_per_s: float | None  # None without the full-size model
    all_exit_x_depthwise: float
    all_exit_x_sequence_continuous: float | None


@dataclasses.dataclass
class BenchmarkResult(Contract):
    """``rrt benchmark``'s result: one workload, every system, the machine's ceilings."""

    WHAT: ClassVar[str] = "an rrt benchmark result"

    model: str
    baseline: str | None
    loops: int
    workload: dict[str, Any]
    hardware: dict[str, Any]
    calibration: dict[str, Any] | None
    systems: dict[str, ServedSystem]
    exit_ceiling: ExitCeiling | None = None  # None in results written before it
