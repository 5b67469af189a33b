"""Every model, one row each: the paper-style summary (tables/models.csv) with its differences to
the full-size and the matched reduced-size model, each task's accuracy, every score of every
evaluation (tables/scores.csv), and the results the experiment misses (tables/gaps.csv)."""

import polars as pl

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import TEXT, Section, frame, table
from rrt.report.results import Name

DATA = (
    "model", "kind", "loops", "init", "rank", "early_exit", "non_embedding_params", "lora_params",
    "trained_tokens", "kd_weight", "suite_average", "suite_average_stderr", "held_out_ce",
    "delta_average_vs_full_size", "p_vs_full_size", "full_size_reference",
    "delta_average_vs_reduced", "p_vs_reduced", "reduced_reference", "status",
)  # fmt: skip
SCORES = ["model", "exit_loop", "task", "metric", "value", "stderr", "items", "in_average"]
FULL, REDUCED = "Δ avg vs full-size", "Δ avg vs reduced (matched tokens)"


def training_text(ctx: Context, name: Name) -> str:
    """How the model was trained, and on how many tokens."""
    if (trained := ctx.tokens(name.name)) is None:
        return fmt.DASH
    tokens = fmt.count(trained)
    if name.kind == "reduced":
        return f"from scratch {tokens}"
    if name.kind == "full-size" and not name.uptrained:
        return f"pretrained {tokens}"
    if name.early_exit:
        base = ctx.tokens(name.name.removesuffix(".ee"))
        return f"uptrained {fmt.count(base) if base is not None else '?'} + early exit {tokens}"
    return f"uptrained {tokens}"


def section(ctx: Context) -> Section:
    full = ctx.full_size()
    rows = []
    for name in ctx.models:
        evaluation, reduced = ctx.evaluation(name.name), ctx.matched_reduced(name)
        mine = full is not None and full.name == name.name
        rows.append(
            ctx.facts(name)
            | ctx.versus("full_size", evaluation, None if mine else full, "vs full-size")
            | ctx.versus("reduced", evaluation, reduced, "vs reduced, matched tokens", REDUCED)
            | ctx.task_cells(evaluation, averaged=False)
            | ctx.task_cells(evaluation, averaged=True)
            | {
                "training (tokens)": training_text(ctx, name),
                "full_size_reference": full.name if full else None,
                "reduced_reference": reduced.name if reduced else None,
            }
        )
    summary = ["model", "B", "init", "rank", "non-emb. params", "LoRA params"]
    summary += ["training (tokens)", "KD w", "average", *ctx.task_cells(None, averaged=False)]
    summary += ["held-out CE", FULL, REDUCED, "status"]
    per_task = ["model", *ctx.task_cells(None, averaged=True), "average", "status"]
    text = TEXT["models"]
    notes = [n.format(full=full.name if full else "none", alpha=ctx.alpha) for n in text["notes"]]
    evaluations = sorted(ctx.results.evaluations.values(), key=lambda e: (e.name, e.exit_loop or 0))
    scores = [(e.name, e.exit_loop, *score) for e in evaluations for score in e.scores.values()]
    section = Section("models", text["title"], data={"models": frame(rows, DATA)})
    section.data["scores"] = frame([dict(zip(SCORES, s, strict=True)) for s in scores], SCORES)
    section.blocks += [
        table("models", text["caption"], [fmt.cells(r, summary) for r in rows], notes),
        table("tasks", text["tasks"], [fmt.cells(r, per_task) for r in rows]),
    ]
    said = TEXT["gaps"]
    missing = [{"missing result": g.path, "reason": g.reason} for g in ctx.results.gaps]
    if not missing:  # else each gap shows in its table, and all of them in a list
        section.blocks.append(said["none" if ctx.results.record else "no_record"])
        return section
    section.data["gaps"] = pl.DataFrame(missing)
    listed = table("gaps", said["caption"], missing)
    section.blocks += [said["some"].format(count=len(missing)), listed]
    return section
