"""The initialisation ablation (paper app. F): models that differ only in how their shared layers
were initialised, each against the stepwise one of the same kind, loops and rank."""

from collections import defaultdict

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, frame, one_table
from rrt.report.results import Name

HEADERS = ["model", "kind", "B", "rank", "init", "average", "held-out CE", "Δ avg vs stepwise"]
HEADERS += ["Δ CE vs stepwise", "status"]
DATA = (
    "model", "kind", "loops", "rank", "init", "suite_average", "held_out_ce",
    "delta_average_vs_stepwise", "p_vs_stepwise",
)  # fmt: skip


def groups(ctx: Context) -> dict[tuple[str, int, str | None], list[Name]]:
    """(kind, loops, rank) -> its uptrained models, where they have two or more inits; sorted."""
    found: dict[tuple[str, int, str | None], list[Name]] = defaultdict(list)
    for name in ctx.uptrained("recursive", "relaxed"):
        found[(name.kind, name.loops or 0, name.rank)].append(name)
    mixed = {k: v for k, v in found.items() if len({n.init for n in v}) >= 2}
    return dict(sorted(mixed.items(), key=lambda kv: str(kv[0])))  # a rank may be None


def section(ctx: Context) -> Section:
    rows = []
    for names in groups(ctx).values():
        stepwise = next((n for n in names if n.init == "stepwise"), None)
        rows += ctx.against(names, stepwise, "stepwise", "vs stepwise")
    shown = [fmt.cells(r, HEADERS) for r in rows]
    return one_table("init", frame(rows, DATA), shown, alpha=ctx.alpha)
