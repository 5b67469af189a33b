"""How numbers read in the report: accuracies in percent (as the paper's tables), counts with
K/M/B, differences with their p-value and a star where significant, and the cells every table
about models shares (from a row of :meth:`Context.facts`)."""

import math
from collections.abc import Callable, Sequence
from typing import Any

from rrt.report.stats import Paired

DASH = "—"
UNITS = (("B", 1e9), ("M", 1e6), ("K", 1e3))


def _pm(show: Callable[[float], str], value: float | None, stderr: float | None) -> str:
    if value is None:
        return DASH
    return show(value) if stderr is None else f"{show(value)} ± {show(stderr)}"


def pct(value: float | None, stderr: float | None = None) -> str:
    """A share in percent (± its stderr)."""
    return _pm(lambda v: f"{100 * v:.1f}", value, stderr)


def value_pm(value: float | None, stderr: float | None = None, digits: int = 3) -> str:
    """A perplexity (± stderr): fixed digits, or four significant ones where it is huge."""
    return _pm(lambda v: f"{v:.4g}" if abs(v) >= 1e4 else number(v, digits), value, stderr)


def unit(value: float) -> tuple[float, str]:
    """The scale and unit (B, M, K, or none) a count of ``value`` reads in."""
    return next(((scale, unit) for unit, scale in UNITS if abs(value) >= scale), (1.0, ""))


def count(value: float | None) -> str:
    """1,410,176 -> 1.41 M; 262,144 -> 262 K."""
    if value is None:
        return DASH
    scale, name = unit(value)
    if not name:
        return f"{value:.0f}"
    scaled = value / scale
    return f"{scaled:.3g} {name}" if scaled < 100 else f"{scaled:.0f} {name}"


def number(value: float | None, digits: int = 4) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def delta(result: Paired | None, alpha: float, scale: float = 100.0, digits: int = 1) -> str:
    """``+3.1* (p=0.002)``: a difference (in points by default), starred below ``alpha``."""
    if result is None:
        return DASH
    star = "*" if result.p < alpha else ""
    p = "p<0.001" if result.p < 0.001 else f"p={result.p:.2g}"
    return f"{scale * result.delta:+.{digits}f}{star} ({p})"


SHOWN: dict[str, Callable[[dict[str, Any]], str]] = {
    "B": lambda r: str(r["loops"]) if r["kind"] in ("recursive", "relaxed") else DASH,
    "init": lambda r: r["init"] or DASH,
    "rank": lambda r: r["rank"] or ("0" if r["kind"] == "recursive" else DASH),
    "non-emb. params": lambda r: count(r["non_embedding_params"]),
    "LoRA params": lambda r: count(r["lora_params"] or None),
    "KD w": lambda r: number(r["kd_weight"], 2),
    "average": lambda r: pct(r["suite_average"], r["suite_average_stderr"]),
    "held-out CE": lambda r: number(r["held_out_ce"]),
}


def cells(row: dict[str, Any], headers: Sequence[str]) -> dict[str, str]:
    """A row's cells: the shared ones from its numbers, the others as the table set them."""
    return {h: SHOWN[h](row) if h in SHOWN else row.get(h, DASH) for h in headers}
