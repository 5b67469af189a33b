"""Before and after uptraining (evaluate.at_init): each recursive and relaxed model at its
initialisation and once uptrained, on held-out perplexity and the suite average. The paper's
claim under test: the SVD initialisation of the LoRAs pays off after uptraining (app. F, I),
though on a real model no relaxation is close to the source before it."""

from rrt import names
from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, frame, one_table

HEADERS = ["model", "B", "init", "rank", "perplexity at init", "perplexity uptrained"]
HEADERS += ["average at init", "average uptrained", "status"]
DATA = (
    "model", "loops", "init", "rank", "perplexity_task", "perplexity_init",
    "perplexity_uptrained", "average_init", "average_uptrained",
)  # fmt: skip


def section(ctx: Context) -> Section:
    task = ctx.perplexity_task
    rows = []
    for name in ctx.models:
        if name.kind not in ("recursive", "relaxed") or name.uptrained:
            continue
        uptrained = names.uptrained(name).name
        row = {"model": name.name, "kind": name.kind, "loops": name.loops, "init": name.init}
        row |= {"rank": str(name.rank or 0), "perplexity_task": task and task[0]}
        for stage, model in (("init", name.name), ("uptrained", uptrained)):
            evaluation, said = ctx.evaluation(model), "at init" if stage == "init" else stage
            ppl, average = ctx.perplexity(evaluation), evaluation.average if evaluation else None
            row |= {f"perplexity_{stage}": ppl, f"perplexity {said}": fmt.value_pm(ppl, None, 2)}
            row |= {f"average_{stage}": average, f"average {said}": fmt.pct(average)}
        rows.append(row | {"status": ctx.status(name.name) or ctx.status(uptrained)})
    notes = [
        f"Perplexity: {task[0]} ({task[1]}); lower is better." if task else "No perplexity task."
    ]
    if source := ctx.evaluation("source"):
        ppl = fmt.value_pm(ctx.perplexity(source), None, 2)
        notes.append(f"The source: perplexity {ppl}, average {fmt.pct(source.average)}.")
    return one_table("uptraining", frame(rows, DATA), [fmt.cells(r, HEADERS) for r in rows], notes)
