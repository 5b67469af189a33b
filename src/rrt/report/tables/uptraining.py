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
        before, after = ctx.evaluation(name.name), ctx.evaluation(uptrained)
        ppl = [ctx.perplexity(before), ctx.perplexity(after)]
        average = [before.average if before else None, after.average if after else None]
        rows.append(
            {
                "model": name.name, "loops": name.loops, "B": str(name.loops), "init": name.init,
                "rank": str(name.rank or 0), "perplexity_task": task and task[0],
                "perplexity_init": ppl[0], "perplexity at init": fmt.value_pm(ppl[0], None, 2),
                "perplexity_uptrained": ppl[1],
                "perplexity uptrained": fmt.value_pm(ppl[1], None, 2),
                "average_init": average[0], "average at init": fmt.pct(average[0]),
                "average_uptrained": average[1], "average uptrained": fmt.pct(average[1]),
                "status": ctx.status(name.name) or ctx.status(uptrained),
            }
        )  # fmt: skip
    notes = [
        f"Perplexity: {task[0]} ({task[1]}); lower is better." if task else "No perplexity task."
    ]
    if source := ctx.evaluation("source"):
        ppl = fmt.value_pm(ctx.perplexity(source), None, 2)
        notes.append(f"The source: perplexity {ppl}, average {fmt.pct(source.average)}.")
    shown = [{h: r[h] for h in HEADERS} for r in rows]
    return one_table("uptraining", frame(rows, DATA), shown, notes)
