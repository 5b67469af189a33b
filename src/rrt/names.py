"""Names of models and serving systems: formatted and parsed here only.

The workflow names every model folder after what it is (``relaxed-B2-average-r32.up.ee``) and
the benchmark names every system after how it serves (``depthwise_exit_0.37_ride``); the report
reads both back. One module makes and reads them, so a name the workflow writes is one the report
understands (a test round-trips every name an experiment makes). Light: the Snakefile imports it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import NamedTuple

INITS = ("stepwise", "average", "lower", "random")  # paper sec. 3.1 and app. F
BUDGETS = ("uptrain", "source")  # the reduced-size baseline's tokens: uptraining's or the source's
KV_FILLS = ("ride", "propagate")  # how an exited token's deeper KV is computed (serving)
FULL_RANK = "full"
KINDS = ("full-size", "reduced", "recursive", "relaxed", "other")

# Wildcard patterns of the workflow (one per part of a name), built from the same constants.
PATTERNS = {
    "loops": r"\d+",
    "init": "|".join(INITS),
    "rank": rf"\d+|{FULL_RANK}",
    "budget": "|".join(BUDGETS),
    "variant": r"(-t\d+-w[0-9.]+-s\d+)?",
}
_NAME = re.compile(
    r"^(?P<base>source"
    rf"|reduced-B(?P<reduced_loops>\d+)-(?P<budget>{PATTERNS['budget']})"
    r"|recursive-B(?P<loops>\d+)-(?P<init>[a-z]+)"
    r"|relaxed-B(?P<relaxed_loops>\d+)-(?P<relaxed_init>[a-z]+)-r(?P<rank>\d+|full))"
    r"(?P<up>\.up(?:-t(?P<tokens>\d+)-w(?P<kd>[0-9.]+)-s(?P<seed>\d+))?)?"
    r"(?P<ee>\.ee)?$"
)
_EXIT_EVALUATION = re.compile(r"^(?P<model>.+)-exit(?P<loop>\d+)$")
_EXIT_SYSTEM = re.compile(r"^depthwise_exit_(?P<threshold>[^_]+)_(?P<fill>[a-z]+)$")
DTYPES = ("auto", "bf16", "fp32")  # what the benchmark serves in
_BENCHMARK = re.compile(rf"^(?P<model>[^@]+)(@b(?P<batch>\d+)-(?P<dtype>{'|'.join(DTYPES)}))?$")


class Sweep(NamedTuple):
    """An uptraining sweep's point: its token budget, distillation weight and seed."""

    tokens: int
    kd_weight: float
    seed: int

    @property
    def suffix(self) -> str:
        return f"-t{self.tokens}-w{self.kd_weight}-s{self.seed}"


@dataclass(frozen=True)
class Name:
    """What a model's name says (the workflow names every model after what it is)."""

    name: str
    kind: str  # one of KINDS
    loops: int | None = None
    init: str | None = None
    rank: str | None = None  # "8", "full"; None without LoRA
    budget: str | None = None  # reduced-size: uptrain or source tokens
    uptrained: bool = False
    early_exit: bool = False
    sweep: Sweep | None = None

    @property
    def base(self) -> str:
        """The name before training: what ``convert``, ``relax`` or the source rule made."""
        return self.name.split(".", 1)[0]

    @property
    def rank_value(self) -> float:
        """For ordering: 0 without LoRA, full above every number."""
        if self.rank is None:
            return 0.0
        return math.inf if self.rank == FULL_RANK else float(self.rank)

    @property
    def order(self) -> tuple:
        init = INITS.index(self.init) if self.init in INITS else len(INITS)
        budget = BUDGETS.index(self.budget) if self.budget else 0
        return (
            KINDS.index(self.kind), self.loops or 0, self.early_exit, init, self.rank_value,
            budget, self.uptrained, self.sweep or (0, 0.0, 0), self.name,
        )  # fmt: skip


def source() -> Name:
    return Name("source", "full-size")


def reduced(loops: int, budget: str) -> Name:
    """The reduced-size baseline: N/B layers trained from scratch on ``budget``'s tokens."""
    return Name(f"reduced-B{loops}-{budget}", "reduced", loops, budget=budget)


def recursive(loops: int, init: str) -> Name:
    return Name(f"recursive-B{loops}-{init}", "recursive", loops, init)


def relaxed(loops: int, init: str, rank: int | str) -> Name:
    """Rank 0 is the pure recursive model (no LoRA)."""
    if rank in (0, "0"):
        return recursive(loops, init)
    return Name(f"relaxed-B{loops}-{init}-r{rank}", "relaxed", loops, init, str(rank))


def uptrained(name: Name, sweep: Sweep | None = None) -> Name:
    """``NAME.up`` (or ``NAME.up-tT-wW-sS`` for a sweep's point)."""
    suffix = ".up" + (sweep.suffix if sweep else "")
    return replace(name, name=name.name + suffix, uptrained=True, sweep=sweep)


def early_exit(name: Name) -> Name:
    """``NAME.up.ee``: the early-exit post-training of an uptrained model (paper sec. 3.7)."""
    return replace(name, name=name.name + ".ee", early_exit=True)


def parse(name: str) -> Name:
    """What ``name`` says; a name the workflow does not make is of kind ``other``."""
    m = _NAME.match(name)
    if m is None:
        return Name(name, "other")
    g = m.groupdict()
    sweep = Sweep(int(g["tokens"]), float(g["kd"]), int(g["seed"])) if g["tokens"] else None
    common = {"uptrained": bool(g["up"]), "early_exit": bool(g["ee"]), "sweep": sweep}
    if g["base"] == "source":
        return Name(name, "full-size", **common)
    if g["reduced_loops"]:
        return Name(name, "reduced", int(g["reduced_loops"]), budget=g["budget"], **common)
    if g["loops"]:
        return Name(name, "recursive", int(g["loops"]), g["init"], **common)
    return Name(name, "relaxed", int(g["relaxed_loops"]), g["relaxed_init"], g["rank"], **common)


def parse_variant(variant: str) -> Sweep | None:
    """A sweep suffix (``-t131072-w0.5-s1``) as its point; None for the plain uptraining."""
    if not variant:
        return None
    sweep = parse(f"source.up{variant}").sweep
    if sweep is None:
        raise ValueError(f"not a sweep suffix: {variant!r} (expected -tTOKENS-wKD-sSEED)")
    return sweep


# --- evaluations -----------------------------------------------------------------------------


def exit_evaluation(model: str, loop: int) -> str:
    """The evaluation of ``model`` with every token leaving after loop ``loop``."""
    return f"{model}-exit{loop}"


def parse_exit_evaluation(stem: str) -> tuple[str, int | None]:
    """An evaluation file's stem as (model, exit loop); None for a full-depth evaluation."""
    m = _EXIT_EVALUATION.match(stem)
    return (m["model"], int(m["loop"])) if m else (stem, None)


# --- benchmarks and serving systems ----------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """A benchmark file's stem: the served model, and for a run at a size of its own (the
    config's ``benchmark.sizes``) its ``max_batch`` and dtype: ``relaxed-B2-average-r32.up.ee``,
    ``relaxed-B2-average-r32.up.ee@b4-bf16``."""

    model: str
    max_batch: int | None = None
    dtype: str | None = None

    @property
    def stem(self) -> str:
        if self.max_batch is None:
            return self.model
        return f"{self.model}@b{self.max_batch}-{self.dtype}"


def parse_benchmark(stem: str) -> Benchmark:
    m = _BENCHMARK.match(stem)
    if m is None:
        raise ValueError(f"{stem!r} is not a benchmark's name (MODEL or MODEL@b<batch>-<dtype>)")
    if m["batch"] is None:
        return Benchmark(m["model"])
    return Benchmark(m["model"], int(m["batch"]), m["dtype"])


@dataclass(frozen=True)
class System:
    """A benchmarked system: its base name and, for real early exit, the threshold and KV fill."""

    base: str
    threshold: float | None = None
    kv_fill: str | None = None

    @property
    def name(self) -> str:
        if self.threshold is None:
            return self.base
        return f"{self.base}_{self.threshold:g}_{self.kv_fill}"


def exit_system(threshold: float, kv_fill: str) -> System:
    if kv_fill not in KV_FILLS:
        raise ValueError(f"kv_fill {kv_fill!r} is not one of {', '.join(KV_FILLS)}")
    return System("depthwise_exit", threshold, kv_fill)


def parse_system(name: str) -> System:
    m = _EXIT_SYSTEM.match(name)
    if m is None:
        return System(name)
    return System("depthwise_exit", float(m["threshold"]), m["fill"])
