"""The summary: the paper's claims, each checked against this run's numbers (none is written in
by hand), and the comparisons behind each verdict."""

from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any, NamedTuple

from rrt.report import fmt
from rrt.report.context import Context, label
from rrt.report.document import TEXT, Section, frame, table
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
OUTCOMES = ("reproduced", "partly reproduced", "not reproduced", "not tested")


class Check(NamedTuple):
    """One comparison of a claim: the model against its reference, and whether it holds."""

    model: str
    reference: str
    average: Paired | None  # model minus reference (fraction)
    ce: tuple[float, float] | None  # (model, reference), nats per token
    holds: bool
    note: str = ""


def check(
    model: str, reference: str, average: Paired | None, ce: tuple[float | None, ...], note: str = ""
) -> Check | None:
    """Holds when the model is better on every measure the run has for both: the suite average
    (higher) and the held-out CE (model, reference: lower); None where it has neither."""
    ce = None if None in ce else ce
    verdicts = ([average.delta > 0] if average else []) + ([ce[0] < ce[1]] if ce else [])
    disagree = "the two measures disagree" if len(set(verdicts)) > 1 else ""
    note = "; ".join(filter(None, [disagree, note]))
    return Check(model, reference, average, ce, all(verdicts), note) if verdicts else None


def better(
    ctx: Context, model: Name, reference: Name, relation: str, note: str = ""
) -> Check | None:
    average = ctx.compare(ctx.evaluation(model.name), ctx.evaluation(reference.name), relation)
    ce = (ctx.ce(model.name), ctx.ce(reference.name))
    return check(model.name, reference.name, average, ce, note)


def kept(model: str, reference: str, result: Paired | None, alpha: float) -> Check | None:
    """Accuracy kept: holds unless significantly lower."""
    if result is None:
        return None
    holds = result.delta >= 0 or result.p >= alpha
    return Check(model, reference, result, None, holds, "kept: not significantly lower")


Checks = Iterator[Check | None]


def relaxed_checks(ctx: Context) -> Checks:
    for (loops, init), names in rank.groups(ctx).items():
        # the recursive model it relaxes; else the paper's recursive baseline (stepwise)
        recursive = rank.recursive_of(ctx, loops, init) or rank.recursive_of(ctx, loops, "stepwise")
        if recursive is None:
            continue
        for name in names:
            same = recursive.init == init
            note = "" if same else f"no recursive model of init {init}"
            yield better(ctx, name, recursive, "vs rank 0" if same else "vs recursive", note)


def rank_checks(ctx: Context) -> Checks:
    for _, names in rank.groups(ctx).items():
        for low, high in pairwise(sorted(names, key=lambda n: n.rank_value)):
            yield better(ctx, high, low, "vs lower rank")


def reduced_checks(ctx: Context) -> Checks:
    for name in ctx.models:
        if name.kind == "recursive" and name.uptrained and (matched := ctx.matched_reduced(name)):
            yield better(ctx, name, parse_name(matched.name), "vs reduced, matched tokens")


def stepwise_checks(ctx: Context) -> Checks:
    for (kind, _, _), names in init_groups(ctx).items():
        best = next((n for n in names if n.init == "stepwise"), None)
        if kind == "recursive" and best is not None:
            yield from (
                better(ctx, best, o, "stepwise vs other init") for o in names if o is not best
            )


def kd_checks(ctx: Context) -> Checks:
    for _, weights in sorted(kd.groups(ctx).items()):
        low = min(weights)
        for weight, seeds in sorted(weights.items()):
            for seed, training in sorted(seeds.items()):
                if weight != low and (reference := weights[low].get(seed)) is not None:
                    yield check(training.name, reference.name, None, (training.ce, reference.ce))


def exit_checks(ctx: Context) -> Checks:
    for name in exits.models(ctx):
        full, base = ctx.evaluation(name.name), name.name.removesuffix(".ee")
        before, after = ctx.training(base), ctx.training(name.name)
        # 1. loop 1's exit improves with post-training (held-out CE at that exit)
        ce = [(t.exits.get(1) or {}).get("ce") if t else None for t in (after, before)]
        note = "loop 1's exit, after against before post-training"
        yield check(f"{name.name} (loop 1)", f"{base} (loop 1)", None, tuple(ce), note)
        # 2. full depth is kept: not significantly worse than before post-training
        result = ctx.compare(full, ctx.evaluation(base), "after vs before post-training")
        yield kept(name.name, base, result, ctx.alpha)
        # 3. loop 1 keeps the full depth's accuracy: not significantly worse
        if (name.loops or 1) > 1 and (first := ctx.evaluation(name.name, 1)):
            result = ctx.compare(first, full, "vs full depth")
            yield kept(label(first), name.name, result, ctx.alpha)


CHECKS: dict[str, Callable[[Context], Checks]] = {
    "relaxed": relaxed_checks,
    "rank": rank_checks,
    "reduced": reduced_checks,
    "stepwise": stepwise_checks,
    "kd": kd_checks,
    "exit": exit_checks,
}


class Verdict(NamedTuple):
    """A claim (text.yaml's: id, short, claim, paper, needs; every: a claim about the best, one
    failure refutes it) and this run's comparisons for it."""

    claim: dict[str, Any]
    checks: list[Check]

    @property
    def outcome(self) -> str:
        """Reproduced when every comparison holds, not reproduced when none does (a claim about the
        best: when any fails), partly otherwise; not tested without the models it needs."""
        held = sum(c.holds for c in self.checks)
        if not self.checks:
            return "not tested"
        if held == len(self.checks):
            return "reproduced"
        return "not reproduced" if held == 0 or self.claim.get("every") else "partly reproduced"

    def text(self, alpha: float) -> str:
        if not self.checks:
            return f"not tested: {self.claim['needs']}"
        text = f"{self.outcome} ({sum(c.holds for c in self.checks)} of {len(self.checks)} "
        text += "comparisons hold"
        if tested := [c.average for c in self.checks if c.average is not None]:
            significant = sum(a.p < alpha for a in tested)
            text += f"; {significant} of {len(tested)} accuracy differences significant at "
            text += f"p < {alpha:g}"
        return text + ")"


def claims(ctx: Context) -> list[Verdict]:
    """Every claim, in the order the summary lists them, checked against this run."""
    return [Verdict(c, [x for x in CHECKS[c["id"]](ctx) if x is not None]) for c in TEXT["claims"]]


def section(ctx: Context, found: list[Verdict]) -> Section:
    """The summary: the experiment in a sentence, each claim's verdict, and the comparisons."""
    record, alpha, text = ctx.results.record, ctx.alpha, TEXT["summary"]
    config = f"config sha256 `{record['config_sha256'][:16]}`" if record else "no experiment record"
    rows, data = [], []
    for claim, checks in found:
        for c in checks:
            average = (c.average.delta, c.average.p) if c.average else (None, None)
            values = (claim["id"], c.model, c.reference, *average, *(c.ce or (None, None)))
            data.append(dict(zip(DATA, (*values, c.holds, c.note), strict=True)))
            ce = f"{c.ce[0]:.4f} vs {c.ce[1]:.4f}" if c.ce else fmt.DASH
            shown = (claim["short"], c.model, c.reference, fmt.delta(c.average, alpha), ce)
            rows.append(
                dict(zip(HEADERS, (*shown, "yes" if c.holds else "no", c.note), strict=True))
            )
        if not checks:
            data.append({"claim": claim["id"], "note": f"not tested: {claim['needs']}"})
    verdicts = [
        {"paper's claim": v.claim["claim"], "paper": v.claim["paper"], "this run": v.text(alpha)}
        for v in found
    ]
    said = {o: "; ".join(v.claim["claim"] for v in found if v.outcome == o) for o in OUTCOMES}
    intro = text["intro"].format(
        experiment=ctx.results.experiment, models=len(ctx.models), gaps=len(ctx.results.gaps),
        averaged=sum(averaged for _, _, averaged in ctx.tasks), alpha=alpha, config=config,
    )  # fmt: skip
    blocks = [
        intro,
        f"In this run, {'. '.join(f'**{o}**: {claims}' for o, claims in said.items() if claims)}.",
        table("claims", text["claims"], verdicts, [text["claims_note"]]),
        table("checks", text["checks"], rows, [text["checks_note"].format(alpha=alpha)], HEADERS),
    ]
    return Section("summary", text["title"], blocks, {"checks": frame(data, DATA)})
