"""How numbers read in the report: accuracies in percent (as the paper's tables), parameters and
tokens with K/M/B, differences with their p-value and a star where significant."""

from __future__ import annotations

import math

from rrt.report.stats import Paired

DASH = "—"


def pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def pct_pm(value: float | None, stderr: float | None) -> str:
    if value is None:
        return DASH
    return pct(value) if stderr is None else f"{100 * value:.1f} ± {100 * stderr:.1f}"


def count(value: float | None) -> str:
    """1,410,176 -> 1.41 M; 262,144 -> 262 K."""
    if value is None:
        return DASH
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            scaled = value / scale
            return f"{scaled:.3g} {unit}" if scaled < 100 else f"{scaled:.0f} {unit}"
    return f"{value:.0f}"


def number(value: float | None, digits: int = 4) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def p_value(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def delta(result: Paired | None, alpha: float, scale: float = 100.0, digits: int = 1) -> str:
    """``+3.1* (p=0.002)``: a difference (in points by default), starred below ``alpha``."""
    if result is None:
        return DASH
    star = "*" if result.p < alpha else ""
    return f"{scale * result.delta:+.{digits}f}{star} ({p_value(result.p)})"


def signed(value: float | None, digits: int = 4) -> str:
    return DASH if value is None else f"{value:+.{digits}f}"
