"""The LoRA rank sweep (paper sec. 2.3, app. I): each recursive model (rank 0) and its relaxations,
each against it, and the full-size model for reference."""

from collections import defaultdict

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, frame, one_table
from rrt.report.results import Name

HEADERS = ["model", "B", "init", "rank", "non-emb. params", "LoRA params", "average"]
HEADERS += ["Δ avg vs rank 0", "held-out CE", "status"]
DATA = (
    "model", "loops", "init", "rank", "non_embedding_params", "lora_params", "suite_average",
    "held_out_ce", "delta_average_vs_rank0", "p_vs_rank0",
)  # fmt: skip


def groups(ctx: Context) -> dict[tuple[int, str], list[Name]]:
    """(loops, init) -> the uptrained relaxed models of that recursive model, every rank; sorted."""
    found: dict[tuple[int, str], list[Name]] = defaultdict(list)
    for name in ctx.uptrained("relaxed"):
        found[(name.loops or 0, name.init or "")].append(name)
    return dict(sorted(found.items()))


def recursive_of(ctx: Context, loops: int, init: str) -> Name | None:
    """The uptrained recursive model of ``loops`` and ``init`` (the relaxed models' rank 0)."""
    found = (n for n in ctx.uptrained("recursive") if (n.loops, n.init) == (loops, init))
    return next(found, None)


def section(ctx: Context) -> Section:
    rows = []
    for (loops, init), names in groups(ctx).items():
        recursive = recursive_of(ctx, loops, init)
        models = [recursive, *names] if recursive else names
        rows += ctx.against(models, recursive, "rank0", "vs rank 0")
    for row in rows:
        row["rank"] = row["rank"] or "0"
    shown = [fmt.cells(r, HEADERS) for r in rows]
    if rows and (full := ctx.full_size()):
        reference = ctx.facts(Name(full.name, "full-size")) | {"lora_params": None}
        shown.append(fmt.cells(reference, HEADERS) | {"model": f"{full.name} (reference)"})
    return one_table("rank", frame(rows, DATA), shown, alpha=ctx.alpha)
