"""Before and after uptraining (evaluate.at_init): each recursive and relaxed model at its
initialisation and once uptrained, on held-out perplexity and the suite average. The paper's
claim under test: the SVD initialisation of the LoRAs pays off after uptraining (app. F, I),
though on a real model no relaxation is close to the source before it."""

from rrt import names
from rrt.report import fmt
from rrt.report.context import Context
from rrt.report.document import Section, frame, one_table
from rrt.report.results import Evaluation

HEADERS = ["model", "B", "init", "rank", "perplexity at init", "perplexity uptrained"]
HEADERS += ["average at init", "average uptrained", "status"]
DATA = (
    "model", "loops", "init", "rank", "perplexity_task", "perplexity_init",
    "perplexity_uptrained", "average_init", "average_uptrained",
)  # fmt: skip


def score(evaluation: Evaluation | None, task: tuple[str, str] | None) -> float | None:
    found = evaluation.scores.get(task[0]) if evaluation and task else None
    return found.value if found else None


def section(ctx: Context) -> Section:
    task = ctx.perplexity_task
    rows = []
    for name in ctx.models:
        if name.kind not in ("recursive", "relaxed") or name.uptrained:
            continue
        uptrained = names.uptrained(name)
        before, after = ctx.evaluation(name.name), ctx.evaluation(uptrained.name)
        rows.append(
            {
                "model": name.name, "loops": name.loops, "init": name.init,
                "rank": str(name.rank or 0), "perplexity_task": task[0] if task else None,
                "perplexity_init": score(before, task), "perplexity_uptrained": score(after, task),
                "average_init": before.average if before else None,
                "average_uptrained": after.average if after else None,
                "status": ctx.status(name.name) or ctx.status(uptrained.name),
            }
        )  # fmt: skip
    shown = [
        {
            "model": r["model"], "B": str(r["loops"]), "init": r["init"], "rank": str(r["rank"]),
            "perplexity at init": fmt.value_pm(r["perplexity_init"], None, 2),
            "perplexity uptrained": fmt.value_pm(r["perplexity_uptrained"], None, 2),
            "average at init": fmt.pct(r["average_init"]),
            "average uptrained": fmt.pct(r["average_uptrained"]), "status": r["status"],
        }
        for r in rows
    ]  # fmt: skip
    notes = [
        f"Perplexity: {task[0]} ({task[1]}); lower is better." if task else "No perplexity task."
    ]
    if source := ctx.evaluation("source"):
        ppl = fmt.value_pm(score(source, task), None, 2)
        notes.append(f"The source: perplexity {ppl}, average {fmt.pct(source.average)}.")
    return one_table("uptraining", frame(rows, DATA), shown, notes)
