"""Two evaluations compared item by item (the per-sample files), task by task and on the suite
average; unpaired stderrs only where a per-sample file is missing (and then said so)."""

from dataclasses import dataclass, field

import polars as pl

from rrt.report import stats
from rrt.report.document import frame
from rrt.report.results import Evaluation
from rrt.report.stats import Paired

UNPAIRED = "unpaired z (no per-sample file or different items)"
COLUMNS = (
    "model", "reference", "relation", "measure", "delta", "stderr", "p", "n", "test",
    "significant",
)  # fmt: skip


def label(evaluation: Evaluation) -> str:
    loop = evaluation.exit_loop
    return evaluation.name if loop is None else f"{evaluation.name} (loop {loop})"


@dataclass(frozen=True)
class Comparison:
    """``model`` minus ``reference``: accuracy differences (fractions) and, for perplexity tasks,
    the mean difference of per-document log-likelihood (nats; positive: the model is better)."""

    model: str
    reference: str
    average: Paired | None
    tasks: dict[str, Paired] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)  # measure -> how it was tested


def compare(model: Evaluation, reference: Evaluation) -> Comparison:
    """Each task by the best test the files allow, and the suite average (paired where every
    averaged task is)."""
    tasks: dict[str, Paired] = {}
    test: dict[str, str] = {}
    correct: dict[str, tuple[list[bool], list[bool]]] = {}
    for task, score in model.scores.items():
        if (other := reference.scores.get(task)) is None:
            continue
        a, b = model.samples.get(task, {}), reference.samples.get(task, {})
        docs = sorted(set(a) & set(b))
        paired = bool(docs) and all(a[d].doc_hash == b[d].doc_hash for d in docs)
        if paired and all(a[d].correct is not None and b[d].correct is not None for d in docs):
            pair = ([bool(a[d].correct) for d in docs], [bool(b[d].correct) for d in docs])
            tasks[task], test[task] = stats.mcnemar(*pair), "McNemar exact, paired"
            if score.averaged:
                correct[task] = pair
        elif paired and all(None not in (a[d].loglikelihood, b[d].loglikelihood) for d in docs):
            diffs = [a[d].loglikelihood - b[d].loglikelihood for d in docs]  # type: ignore[operator]
            tasks[task] = stats.paired_t(diffs)
            test[task] = "paired t on per-document log-likelihood (nats)"
        elif result := stats.unpaired(score.value, score.stderr, other.value, other.stderr):
            tasks[task], test[task] = result, UNPAIRED
    averaged = [t for t, s in model.scores.items() if s.averaged and t in reference.scores]
    if averaged and all(t in correct for t in averaged):
        average = stats.suite_average({t: correct[t] for t in averaged})
        test["average"] = "paired z over every item of the averaged tasks"
    else:
        average = stats.unpaired(
            model.average, model.average_stderr, reference.average, reference.average_stderr
        )
        if average is not None:
            test["average"] = UNPAIRED
    return Comparison(label(model), label(reference), average, tasks, test)


def comparisons_frame(made: dict[tuple[str, str, str], Comparison], alpha: float) -> pl.DataFrame:
    """tables/comparisons.csv: every measure of every comparison the report made."""
    rows = []
    for (_, _, relation), c in sorted(made.items()):
        for measure, r in (({"average": c.average} if c.average else {}) | c.tasks).items():
            values = (c.model, c.reference, relation, measure, r.delta, r.se, r.p, r.n)
            rows.append(
                dict(zip(COLUMNS, (*values, c.test.get(measure, ""), r.p < alpha), strict=True))
            )
    return frame(rows, COLUMNS)
