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
    """(loops, init) -> the uptrained relaxed models of that recursive model, every rank."""
    found: dict[tuple[int, str], list[Name]] = defaultdict(list)
    for name in ctx.models:
        if name.kind == "relaxed" and name.uptrained and not name.early_exit:
            found[(name.loops or 0, name.init or "")].append(name)
    return dict(found)


def recursive_of(ctx: Context, loops: int, init: str) -> Name | None:
    """The uptrained recursive model of ``loops`` and ``init`` (the relaxed models' rank 0)."""
    found = (n for n in ctx.models if n.kind == "recursive" and (n.loops, n.init) == (loops, init))
    return next((n for n in found if n.uptrained and not n.early_exit), None)


def section(ctx: Context) -> Section:
    rows = []
    for (loops, init), names in sorted(groups(ctx).items()):
        recursive = recursive_of(ctx, loops, init)
        base = ctx.evaluation(recursive.name) if recursive else None
        for name in ([recursive] if recursive else []) + names:
            row = ctx.facts(name) | {"rank": name.rank or "0"}
            if name is not recursive:
                row |= ctx.versus(
                    "rank0", "Δ avg vs rank 0", ctx.evaluation(name.name), base, "vs rank 0"
                )
            rows.append(row)
    shown = [fmt.cells(r, HEADERS) for r in rows]
    if rows and (full := ctx.full_size()):
        reference = ctx.facts(Name(full.name, "full-size")) | {"lora_params": None}
        shown.append(fmt.cells(reference, HEADERS) | {"model": f"{full.name} (reference)"})
    return one_table("rank", frame(rows, DATA), shown, alpha=ctx.alpha)
