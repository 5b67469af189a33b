"""The summary: the paper's claims, each checked against this run's numbers (none is written in
by hand), and the comparisons behind each verdict.

A comparison holds when the model is better than its reference on every measure the run has for
both: the suite average (with the p-value of a paired test over the same items) and the held-out
CE. A claim is reproduced when all its comparisons hold, not reproduced when none does (or, for a
claim about the best, when any fails), partly otherwise, and not tested when the experiment makes
none of the models it needs (with what would test it).
"""

from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import NamedTuple

from rrt.report import fmt
from rrt.report.context import Context, label
from rrt.report.document import Section, frame, table
from rrt.report.results import Name, parse_name
from rrt.report.stats import Paired
from rrt.report.tables import exits, kd, rank
from rrt.report.tables.init import groups as init_groups

CE = "held-out CE, model vs reference"
HEADERS = ("claim", "model", "reference", "Δ avg (points)", CE, "holds", "note")
DATA = (
    "claim", "model", "reference", "delta_average", "p_average", "held_out_ce_model",
    "held_out_ce_reference", "holds", "note",
)  # fmt: skip


class Check(NamedTuple):
    """One comparison of a claim: the model against its reference, and whether it holds."""

    model: str
    reference: str
    average: Paired | None  # model minus reference (fraction)
    ce: tuple[float, float] | None  # (model, reference), nats per token
    holds: bool
    note: str = ""


def better(ctx: Context, model: Name, reference: Name, relation: str) -> Check | None:
    """``model`` better than ``reference`` on the suite average and the held-out CE."""
    average = ctx.compare(ctx.evaluation(model.name), ctx.evaluation(reference.name), relation)
    ce = (ctx.ce(model.name), ctx.ce(reference.name))
    ce = None if None in ce else ce
    verdicts = [average.delta > 0] if average else []
    verdicts += [ce[0] < ce[1]] if ce else []
    if not verdicts:
        return None
    note = "the two measures disagree" if len(set(verdicts)) > 1 else ""
    return Check(model.name, reference.name, average, ce, all(verdicts), note)


def lower_ce(
    model: str, reference: str, ce: float | None, ce_ref: float | None, note: str = ""
) -> Check | None:
    """Held-out CE alone (models that are not evaluated, or an exit's): holds when lower."""
    if ce is not None and ce_ref is not None:
        return Check(model, reference, None, (ce, ce_ref), ce < ce_ref, note)
    return None


def kept(model: str, reference: str, result: Paired | None, alpha: float) -> Check | None:
    """Accuracy kept: holds unless significantly lower."""
    if result is None:
        return None
    holds = result.delta >= 0 or result.p >= alpha
    return Check(model, reference, result, None, holds, "kept: not significantly lower")


Checks = Iterator[Check | None]


def relaxed_checks(ctx: Context) -> Checks:
    for (loops, init), names in sorted(rank.groups(ctx).items()):
        # the recursive model it relaxes; else the paper's recursive baseline (stepwise)
        recursive = rank.recursive_of(ctx, loops, init) or rank.recursive_of(ctx, loops, "stepwise")
        if recursive is None:
            continue
        for name in names:
            same = recursive.init == init
            check = better(ctx, name, recursive, "vs rank 0" if same else "vs recursive")
            if check is not None and not same:
                notes = [check.note, f"no recursive model of init {init}"]
                check = check._replace(note="; ".join(filter(None, notes)))
            yield check


def rank_checks(ctx: Context) -> Checks:
    for _, names in sorted(rank.groups(ctx).items()):
        for low, high in pairwise(sorted(names, key=lambda n: n.rank_value)):
            yield better(ctx, high, low, "vs lower rank")


def reduced_checks(ctx: Context) -> Checks:
    for name in ctx.models:
        if name.kind == "recursive" and name.uptrained and (matched := ctx.matched_reduced(name)):
            yield better(ctx, name, parse_name(matched.name), "vs reduced, matched tokens")


def stepwise_checks(ctx: Context) -> Checks:
    for (kind, _, _), names in sorted(init_groups(ctx).items(), key=lambda kv: str(kv[0])):
        best = next((n for n in names if n.init == "stepwise"), None)
        if kind == "recursive" and best is not None:
            for other in names:
                if other is not best:
                    yield better(ctx, best, other, "stepwise vs other init")


def kd_checks(ctx: Context) -> Checks:
    for _, weights in sorted(kd.groups(ctx).items()):
        low = min(weights)
        for weight, seeds in sorted(weights.items()):
            for seed, training in sorted(seeds.items()):
                if weight != low and (reference := weights[low].get(seed)) is not None:
                    yield lower_ce(training.name, reference.name, training.ce, reference.ce)


def exit_checks(ctx: Context) -> Checks:
    for name in exits.models(ctx):
        full, base = ctx.evaluation(name.name), name.name.removesuffix(".ee")
        before, after = ctx.training(base), ctx.training(name.name)
        # 1. loop 1's exit improves with post-training (held-out CE at that exit)
        ce_before = (before.exits.get(1) or {}).get("ce") if before else None
        ce_after = (after.exits.get(1) or {}).get("ce") if after else None
        note = "loop 1's exit, after against before post-training"
        yield lower_ce(f"{name.name} (loop 1)", f"{base} (loop 1)", ce_after, ce_before, note)
        # 2. full depth is kept: not significantly worse than before post-training
        result = ctx.compare(full, ctx.evaluation(base), "after vs before post-training")
        yield kept(name.name, base, result, ctx.alpha)
        # 3. loop 1 keeps the full depth's accuracy: not significantly worse
        first = ctx.evaluation(name.name, 1) if (name.loops or 1) > 1 else None
        if first:
            yield kept(
                label(first), name.name, ctx.compare(first, full, "vs full depth"), ctx.alpha
            )


class Claim(NamedTuple):
    """One of the paper's claims: its short name, what the paper reports, what it takes to test
    it and the comparisons that do; ``every``: a claim about the best, one failure refutes it."""

    id: str
    short: str  # in the table of comparisons
    claim: str
    paper: str
    needs: str  # what the experiment must make to test it
    checks: Callable[[Context], Checks]
    every: bool = False


CLAIMS = (
    Claim(
        "relaxed",
        "relaxed beats recursive",
        "Relaxing the recursive model with layer-wise LoRA improves it",
        "Gemma 2B, B = 2: relaxed 55.8 to 58.4 (r = 64 to 512) against recursive 54.9 (app. I)",
        "needs a relaxed model and a recursive model of the same loops "
        "(relaxed.ranks, recursive.loops)",
        relaxed_checks,
    ),
    Claim(
        "rank",
        "higher rank is better",
        "A higher LoRA rank scores higher",
        "55.8 / 56.6 / 57.0 / 58.4 at r = 64 / 128 / 256 / 512 (Gemma 2B, app. I)",
        "needs two or more ranks of one relaxed model (relaxed.ranks)",
        rank_checks,
    ),
    Claim(
        "reduced",
        "recursive beats reduced-size",
        "The recursive model beats a reduced-size model of its size trained on the same tokens",
        "Gemma 54.9 against 44.9, TinyLlama 44.3 against 40.5, Pythia 45.2 against 39.5 "
        "(app. I, reduced-size with the same recipe and KD)",
        "needs a recursive model and the reduced-size model of the same depth trained on its "
        "uptraining tokens (baselines.reduced_budgets: uptrain)",
        reduced_checks,
    ),
    Claim(
        "stepwise",
        "stepwise is the best init",
        "Stepwise is the best initialisation of the pure recursive model",
        "Gemma 2B, 15 B tokens: stepwise 51.7, average 46.7, lower 47.1, random 37.6 (app. F)",
        "needs recursive models of stepwise and another init (recursive.inits)",
        stepwise_checks,
        every=True,
    ),
    Claim(
        "kd",
        "distillation helps",
        "Distillation from the full-size model improves uptraining",
        "forward-KL distillation, the best of the divergences tried (app. E, I)",
        "needs an uptraining sweep over distillation weights (sweep.kd_weights, e.g. "
        "[0.0, 0.5], and sweep.seeds)",
        kd_checks,
    ),
    Claim(
        "exit",
        "early exit",
        "Early-exit post-training makes loop 1 usable and keeps the full depth's accuracy",
        "post-training with the aggressive loss (final loop 1, others 0.1, self-distillation) "
        "beats co-training and keeps the final loop close (sec. 3.7, app. J)",
        "needs an early-exit model (early_exit.models)",
        exit_checks,
    ),
)


class Verdict(NamedTuple):
    """A claim and this run's comparisons for it."""

    claim: Claim
    checks: list[Check]

    @property
    def outcome(self) -> str:
        held = sum(bool(c.holds) for c in self.checks)
        if not self.checks:
            return "not tested"
        if held == len(self.checks):
            return "reproduced"
        return "not reproduced" if held == 0 or self.claim.every else "partly reproduced"

    def text(self, alpha: float) -> str:
        if not self.checks:
            return f"not tested: {self.claim.needs}"
        held = sum(bool(c.holds) for c in self.checks)
        text = f"{self.outcome} ({held} of {len(self.checks)} comparisons hold"
        if tested := [c.average for c in self.checks if c.average is not None]:
            significant = sum(a.p < alpha for a in tested)
            text += f"; {significant} of {len(tested)} accuracy differences significant at "
            text += f"p < {alpha:g}"
        return text + ")"


def claims(ctx: Context) -> list[Verdict]:
    """Every claim, in the order the summary lists them, checked against this run."""
    return [Verdict(c, [x for x in c.checks(ctx) if x is not None]) for c in CLAIMS]


def section(ctx: Context, found: list[Verdict]) -> Section:
    """The summary: the experiment in a sentence, each claim's verdict, and the comparisons."""
    record, alpha = ctx.results.record, ctx.alpha
    config = f"config sha256 `{record['config_sha256'][:16]}`" if record else "no experiment record"
    averaged = sum(averaged for _, _, averaged in ctx.tasks)
    outcomes = ("reproduced", "partly reproduced", "not reproduced", "not tested")
    by_outcome = {o: "; ".join(v.claim.claim for v in found if v.outcome == o) for o in outcomes}
    rows, data = [], []
    for claim, checks in found:
        for c in checks:
            ce = f"{c.ce[0]:.4f} vs {c.ce[1]:.4f}" if c.ce else fmt.DASH
            shown = (claim.short, c.model, c.reference, fmt.delta(c.average, alpha), ce)
            rows.append(
                dict(zip(HEADERS, (*shown, "yes" if c.holds else "no", c.note), strict=True))
            )
            average = (c.average.delta, c.average.p) if c.average else (None, None)
            values = (claim.id, c.model, c.reference, *average, *(c.ce or (None, None)))
            data.append(dict(zip(DATA, (*values, bool(c.holds), c.note), strict=True)))
        if not checks:
            data.append({"claim": claim.id, "note": f"not tested: {claim.needs}"})
    verdicts = [
        {"paper's claim": v.claim.claim, "paper": v.claim.paper, "this run": v.text(alpha)}
        for v in found
    ]
    return Section(
        "summary",
        "Summary: the paper's claims in this run",
        [
            f"Experiment **{ctx.results.experiment}** ({config}): {len(ctx.models)} models, "
            f"{len(ctx.gaps)} missing results. Accuracy is the suite average over {averaged} "
            "tasks; every verdict below is computed from the numbers in this report (paired "
            f"tests at alpha {alpha:g}), none is written in by hand.",
            "In this run, "
            + ". ".join(f"**{o}**: {text}" for o, text in by_outcome.items() if text)
            + ".",
            table(
                "claims",
                "Which of the paper's claims this run reproduces",
                verdicts,
                [
                    "A comparison holds when the model is better than its reference on every "
                    "measure this run has for both: the suite average and the held-out CE (early "
                    "exit's 'keeps' comparisons: not significantly lower). The comparisons are "
                    "listed below."
                ],
            ),
            table(
                "checks",
                "The comparisons behind each verdict",
                rows,
                [f"Δ avg: paired test over the same items; * p < {alpha:g}."],
                HEADERS,
            ),
        ],
        {"checks": frame(data, DATA)},
    )
