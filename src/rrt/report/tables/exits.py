"""Early exit (paper sec. 3.7): each early-exit model with every token leaving after loop b, its
accuracy against full depth and the held-out CE at each exit before and after post-training."""

from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, frame, one_table
from rrt.report.results import Name

DATA = ["model", "exit_loop", "measure", "metric", "value", "stderr"]
CE, ACC = "held-out CE before → after post-training", "next-token acc before → after"


def models(ctx: Context) -> list[Name]:
    """The early-exit models (post-trained), in the report's order."""
    return [n for n in ctx.models if n.early_exit]


def section(ctx: Context) -> Section:
    rows, data = [], []
    for name in models(ctx):
        full, after = ctx.evaluation(name.name), ctx.training(name.name)
        before = ctx.training(name.name.removesuffix(".ee"))
        for loop in range(1, (name.loops or 1) + 1):
            at = None if loop == (name.loops or 1) else loop
            evaluation = ctx.evaluation(name.name, at)
            result = ctx.compare(evaluation, full, "vs full depth") if at is not None else None
            ce_before = (before.exits.get(loop) or {}) if before else {}
            ce_after = (after.exits.get(loop) or {}) if after else {}
            rows.append(
                {"model": name.name, "exit after loop": str(loop)}
                | ctx.task_cells(evaluation, averaged=True)
                | ctx.task_cells(evaluation, averaged=False)
                | {
                    "average": fmt.pct(evaluation.average, evaluation.average_stderr)
                    if evaluation
                    else fmt.DASH,
                    "Δ avg vs full depth": fmt.delta(result, ctx.alpha),
                    CE: f"{fmt.number(ce_before.get('ce'))} → {fmt.number(ce_after.get('ce'))}",
                    ACC: f"{fmt.pct(ce_before.get('acc'))} → {fmt.pct(ce_after.get('acc'))}",
                    "status": ctx.status(name.name, at),
                }
            )
            scores = evaluation.scores.values() if evaluation else []
            measures = [(s.task, s.metric, s.value, s.stderr) for s in scores]
            if evaluation is not None:
                average = (evaluation.average, evaluation.average_stderr)
                measures.append(("average", "suite average", *average))
            for stage, values in (("before", ce_before), ("after", ce_after)):
                measures += [(f"held-out {m} ({stage})", m, v, None) for m, v in values.items()]
            data += [dict(zip(DATA, (name.name, loop, *m), strict=True)) for m in measures]
    return one_table("exits", frame(data, DATA), rows, alpha=ctx.alpha)
