"""Distillation (paper app. E, I): an uptraining sweep over KD weights, each seed of the data
order paired with the same seed at the lowest weight; held-out CE is the swept models' measure."""

import statistics
from collections import defaultdict

import polars as pl

from rrt.report import fmt, stats
from rrt.report.context import Context
from rrt.report.document import Section, one_table
from rrt.report.results import Training, parse_name


def groups(ctx: Context) -> dict[tuple[str, int], dict[float, dict[int, Training]]]:
    """(base model, tokens) -> KD weight -> seed -> the swept model's training."""
    found: defaultdict = defaultdict(lambda: defaultdict(dict))
    for name, training in ctx.results.trainings.items():
        if (sweep := parse_name(name).sweep) is not None:
            tokens, weight, seed = sweep
            found[(name.split(".up", 1)[0], tokens)][weight][seed] = training
    return {k: dict(v) for k, v in found.items() if len(v) >= 2}


def _mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return fmt.number(values[0]) if values else fmt.DASH
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def section(ctx: Context) -> Section:
    rows, data = [], []
    for (base, tokens), weights in sorted(groups(ctx).items()):
        low = min(weights)
        for weight, seeds in sorted(weights.items()):
            for seed, t in sorted(seeds.items()):
                row = {"model": base, "tokens": tokens, "kd_weight": weight, "seed": seed}
                row["held_out_ce"] = t.ce
                data.append(
                    row
                    | {f"{m}_loop{n}": v for n, e in sorted(t.exits.items()) for m, v in e.items()}
                )
            ces = {s: t.ce for s, t in seeds.items() if t.ce is not None}
            reference = {s: weights[low][s].ce for s in ces if s in weights[low]}
            diffs = [ces[s] - ref for s, ref in sorted(reference.items()) if ref is not None]
            test = stats.paired_t(diffs) if weight != low and diffs else None
            tested = {
                f"Δ CE vs w={low:g} per seed": ", ".join(f"{d:+.4f}" for d in diffs),
                "better on": f"{sum(d < 0 for d in diffs)} of {len(diffs)} seeds",
            }
            mean_sd = _mean_sd(list(ces.values()))
            rows.append(
                {"model": base, "tokens": fmt.count(tokens), "KD w": f"{weight:g}"}
                | {"seeds": str(len(seeds)), "held-out CE (mean ± sd)": mean_sd}
                | {k: v if test else fmt.DASH for k, v in tested.items()}
                | {"paired t over seeds": fmt.delta(test, ctx.alpha, scale=1.0, digits=4)}
            )
    return one_table("kd", pl.DataFrame(data, infer_schema_length=None), rows)
