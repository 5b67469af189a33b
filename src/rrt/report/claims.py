"""The paper's claims, each checked against this run's numbers (none is written in by hand).

A claim is a set of comparisons (model against reference). A comparison holds when the model
is better on every measure the run has for it: the suite average (with the p-value of a paired
test over the same items) and the held-out CE. A claim is reproduced when all its comparisons
hold, not reproduced when none does (or, for a claim about the best, when any fails), partly
otherwise, and not tested when the experiment makes
none of the models it needs (with what would test it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from rrt.report import fmt
from rrt.report.analysis import Analysis
from rrt.report.compare import label
from rrt.report.document import Table, strings
from rrt.report.results import Name, parse_name
from rrt.report.stats import Paired


@dataclass
class Check:
    model: str
    reference: str
    average: Paired | None = None  # model minus reference (fraction)
    ce: tuple[float, float] | None = None  # (model, reference), nats per token
    holds: bool | None = None
    note: str = ""


@dataclass
class Claim:
    id: str
    claim: str
    paper: str
    needs: str = ""  # what the experiment must make to test it
    checks: list[Check] = field(default_factory=list)
    every: bool = False  # a claim about the best: one comparison that fails refutes it

    def add(self, check: Check | None) -> None:
        if check is not None:
            self.checks.append(check)

    @property
    def outcome(self) -> str:
        if not self.checks:
            return "not tested"
        held = sum(bool(c.holds) for c in self.checks)
        if held == len(self.checks):
            return "reproduced"
        return "not reproduced" if held == 0 or self.every else "partly reproduced"

    def verdict(self, alpha: float) -> str:
        if not self.checks:
            return f"not tested: {self.needs}"
        held = sum(bool(c.holds) for c in self.checks)
        text = f"{self.outcome} ({held} of {len(self.checks)} comparisons hold"
        tested = [c for c in self.checks if c.average is not None]
        if tested:
            significant = sum(c.average.p < alpha for c in tested)  # type: ignore[union-attr]
            text += (
                f"; {significant} of {len(tested)} accuracy differences significant at "
                f"p < {alpha:g}"
            )
        return text + ")"


def better(analysis: Analysis, model: Name, reference: Name, relation: str) -> Check | None:
    """``model`` better than ``reference`` on the suite average and the held-out CE."""
    a, b = analysis.evaluation(model.name), analysis.evaluation(reference.name)
    ce_a, ce_b = analysis.ce(model.name), analysis.ce(reference.name)
    check = Check(model.name, reference.name)
    verdicts = []
    if a is not None and b is not None:
        check.average = analysis.compare(a, b, relation).average
        if check.average is not None:
            verdicts.append(check.average.delta > 0)
    if ce_a is not None and ce_b is not None:
        check.ce = (ce_a, ce_b)
        verdicts.append(ce_a < ce_b)
    if not verdicts:
        return None
    check.holds = all(verdicts)
    if len(set(verdicts)) > 1:
        check.note = "the two measures disagree"
    return check


def claims(analysis: Analysis) -> list[Claim]:
    return [
        relaxed_beats_recursive(analysis),
        rank_helps(analysis),
        recursive_beats_reduced(analysis),
        stepwise_best(analysis),
        distillation_helps(analysis),
        early_exit(analysis),
    ]


def relaxed_beats_recursive(analysis: Analysis) -> Claim:
    claim = Claim(
        "relaxed",
        "Relaxing the recursive model with layer-wise LoRA improves it",
        "Gemma 2B, B = 2: relaxed 55.8 to 58.4 (r = 64 to 512) against recursive 54.9 (app. I)",
        needs="needs a relaxed model and a recursive model of the same loops "
        "(relaxed.ranks, recursive.loops)",
    )
    for (loops, init), names in sorted(analysis.rank_groups().items()):
        # the recursive model it relaxes; else the paper's recursive baseline (stepwise)
        recursive = analysis.recursive_of(loops, init) or analysis.recursive_of(loops, "stepwise")
        for name in names:
            if recursive is None:
                continue
            same = recursive.init == init
            check = better(analysis, name, recursive, "vs rank 0" if same else "vs recursive")
            if check is not None and not same:
                check.note = "; ".join(
                    filter(None, [check.note, f"no recursive model of init {init}"])
                )
            claim.add(check)
    return claim


def rank_helps(analysis: Analysis) -> Claim:
    claim = Claim(
        "rank",
        "A higher LoRA rank scores higher",
        "55.8 / 56.6 / 57.0 / 58.4 at r = 64 / 128 / 256 / 512 (Gemma 2B, app. I)",
        needs="needs two or more ranks of one relaxed model (relaxed.ranks)",
    )
    for _, names in sorted(analysis.rank_groups().items()):
        ordered = sorted(names, key=lambda n: n.rank_value)
        for low, high in zip(ordered, ordered[1:], strict=False):
            claim.add(better(analysis, high, low, "vs lower rank"))
    return claim


def recursive_beats_reduced(analysis: Analysis) -> Claim:
    claim = Claim(
        "reduced",
        "The recursive model beats a reduced-size model of its size trained on the same tokens",
        "Gemma 54.9 against 44.9, TinyLlama 44.3 against 40.5, Pythia 45.2 against 39.5 "
        "(app. I, reduced-size with the same recipe and KD)",
        needs="needs a recursive model and the reduced-size model of the same depth trained on "
        "its uptraining tokens (baselines.reduced_budgets: uptrain)",
    )
    for name in analysis.model_names():
        if name.kind == "recursive" and name.uptrained and not name.early_exit:
            reduced = analysis.matched_reduced(name)
            if reduced is not None:
                claim.add(
                    better(analysis, name, parse_name(reduced.name), "vs reduced, matched tokens")
                )
    return claim


def stepwise_best(analysis: Analysis) -> Claim:
    claim = Claim(
        "stepwise",
        "Stepwise is the best initialisation of the pure recursive model",
        "Gemma 2B, 15 B tokens: stepwise 51.7, average 46.7, lower 47.1, random 37.6 (app. F)",
        every=True,
        needs="needs recursive models of stepwise and another init (recursive.inits)",
    )
    for (kind, _, _), names in sorted(analysis.init_groups().items(), key=lambda kv: str(kv[0])):
        stepwise = next((n for n in names if n.init == "stepwise"), None)
        if kind != "recursive" or stepwise is None:
            continue
        for other in names:
            if other is not stepwise:
                claim.add(better(analysis, stepwise, other, "stepwise vs other init"))
    return claim


def distillation_helps(analysis: Analysis) -> Claim:
    claim = Claim(
        "kd",
        "Distillation from the full-size model improves uptraining",
        "forward-KL distillation, the best of the divergences tried (app. E, I)",
        needs="needs an uptraining sweep over distillation weights (sweep.kd_weights, e.g. "
        "[0.0, 0.5], and sweep.seeds)",
    )
    for _, weights in sorted(analysis.kd_groups().items()):
        low = min(weights)
        for weight, seeds in sorted(weights.items()):
            if weight == low:
                continue
            for seed, training in sorted(seeds.items()):
                reference = weights[low].get(seed)
                if reference is None or None in (training.validation_ce, reference.validation_ce):
                    continue
                ce = (training.validation_ce, reference.validation_ce)
                claim.checks.append(
                    Check(
                        training.name,
                        reference.name,
                        ce=ce,  # type: ignore[arg-type]
                        holds=ce[0] < ce[1],  # type: ignore[operator]
                    )
                )
    return claim


def early_exit(analysis: Analysis) -> Claim:
    claim = Claim(
        "exit",
        "Early-exit post-training makes loop 1 usable and keeps the full depth's accuracy",
        "post-training with the aggressive loss (final loop 1, others 0.1, self-distillation) "
        "beats co-training and keeps the final loop close (sec. 3.7, app. J)",
        needs="needs an early-exit model (early_exit.models)",
    )
    alpha = analysis.alpha
    for name in analysis.exit_models():
        full = analysis.evaluation(name.name)
        base_name = name.name.removesuffix(".ee")
        before, after = analysis.training(base_name), analysis.training(name.name)
        # 1. loop 1's exit improves with post-training (held-out CE at that exit)
        ce_before = (before.exits.get(1) or {}).get("ce") if before else None
        ce_after = (after.exits.get(1) or {}).get("ce") if after else None
        if ce_before is not None and ce_after is not None:
            claim.checks.append(
                Check(
                    f"{name.name} (loop 1)",
                    f"{base_name} (loop 1)",
                    ce=(ce_after, ce_before),
                    holds=ce_after < ce_before,
                    note="loop 1's exit, after against before post-training",
                )
            )
        # 2. full depth is kept: not significantly worse than before post-training
        base = analysis.evaluation(base_name)
        if full is not None and base is not None:
            result = analysis.compare(full, base, "after vs before post-training").average
            if result is not None:
                claim.checks.append(_kept(name.name, base_name, result, alpha))
        # 3. loop 1 keeps the full depth's accuracy: not significantly worse
        first = analysis.evaluation(name.name, 1) if (name.loops or 1) > 1 else None
        if first is not None and full is not None:
            result = analysis.compare(first, full, "vs full depth").average
            if result is not None:
                claim.checks.append(_kept(label(first), name.name, result, alpha))
    return claim


def _kept(model: str, reference: str, result: Paired, alpha: float) -> Check:
    """Accuracy kept: holds unless significantly lower."""
    kept = result.delta >= 0 or result.p >= alpha
    return Check(model, reference, result, holds=kept, note="kept: not significantly lower")


# --- as tables -----------------------------------------------------------------------------


def plainly(found: list[Claim]) -> str:
    """One sentence: which claims this run reproduces, partly, not, and which it cannot test."""
    parts = []
    for outcome in ("reproduced", "partly reproduced", "not reproduced", "not tested"):
        claims_ = [c.claim for c in found if c.outcome == outcome]
        if claims_:
            parts.append(f"**{outcome}**: " + "; ".join(claims_))
    return "In this run, " + ". ".join(parts) + "."


def summary_table(found: list[Claim], alpha: float) -> Table:
    rows = [
        {"paper's claim": c.claim, "paper": c.paper, "this run": c.verdict(alpha)} for c in found
    ]
    return Table(
        "claims",
        "Which of the paper's claims this run reproduces",
        strings(rows, ["paper's claim", "paper", "this run"]),
        [
            "A comparison holds when the model is better than its reference on every measure "
            "this run has for both: the suite average and the held-out CE (early exit's "
            "'keeps' comparisons: not significantly lower). The comparisons are listed below."
        ],
    )


def checks_table(found: list[Claim], alpha: float) -> tuple[Table, pl.DataFrame]:
    rows, data = [], []
    for claim in found:
        for check in claim.checks:
            ce = check.ce
            rows.append(
                {
                    "claim": SHORT.get(claim.id, claim.id),
                    "model": check.model,
                    "reference": check.reference,
                    "Δ avg (points)": fmt.delta(check.average, alpha),
                    "held-out CE, model vs reference": f"{ce[0]:.4f} vs {ce[1]:.4f}"
                    if ce
                    else fmt.DASH,
                    "holds": "yes" if check.holds else "no",
                    "note": check.note,
                }
            )
            data.append(
                {
                    "claim": claim.id,
                    "model": check.model,
                    "reference": check.reference,
                    "delta_average": check.average.delta if check.average else None,
                    "p_average": check.average.p if check.average else None,
                    "held_out_ce_model": ce[0] if ce else None,
                    "held_out_ce_reference": ce[1] if ce else None,
                    "holds": bool(check.holds),
                    "note": check.note,
                }
            )
        if not claim.checks:
            data.append({"claim": claim.id, "note": f"not tested: {claim.needs}"})
    columns = ["claim", "model", "reference", "Δ avg (points)", "held-out CE, model vs reference"]
    columns += ["holds", "note"]
    table = Table(
        "checks",
        "The comparisons behind each verdict",
        strings(rows, columns),
        [f"Δ avg: paired test over the same items; * p < {alpha:g}."],
    )
    return table, pl.DataFrame(data, schema=CHECK_SCHEMA)


SHORT = {
    "relaxed": "relaxed beats recursive",
    "rank": "higher rank is better",
    "reduced": "recursive beats reduced-size",
    "stepwise": "stepwise is the best init",
    "kd": "distillation helps",
    "exit": "early exit",
}
CHECK_SCHEMA = {
    "claim": pl.String, "model": pl.String, "reference": pl.String,
    "delta_average": pl.Float64, "p_average": pl.Float64, "held_out_ce_model": pl.Float64,
    "held_out_ce_reference": pl.Float64, "holds": pl.Boolean, "note": pl.String,
}  # fmt: skip
