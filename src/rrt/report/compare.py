"""Two evaluations compared item by item (the per-sample files), task by task and on the suite
average; unpaired stderrs only where a per-sample file is missing (and then said so)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rrt.report import stats
from rrt.report.results import Evaluation
from rrt.report.stats import Paired


def label(evaluation: Evaluation) -> str:
    if evaluation.exit_loop is None:
        return evaluation.name
    return f"{evaluation.name} (loop {evaluation.exit_loop})"


@dataclass(frozen=True)
class Comparison:
    """``model`` minus ``reference``: accuracy differences (fractions) and, for perplexity tasks,
    the mean difference of per-document log-likelihood (nats; positive: the model is better)."""

    model: str
    reference: str
    average: Paired | None
    tasks: dict[str, Paired] = field(default_factory=dict)
    test: dict[str, str] = field(default_factory=dict)  # measure -> how it was tested

    def rows(self, relation: str, alpha: float) -> list[dict[str, Any]]:
        """Long-form rows for tables/comparisons.csv."""
        measures = ({"average": self.average} if self.average else {}) | self.tasks
        return [
            {
                "model": self.model,
                "reference": self.reference,
                "relation": relation,
                "measure": measure,
                "delta": result.delta,
                "stderr": result.se,
                "p": result.p,
                "n": result.n,
                "test": self.test.get(measure, ""),
                "significant": result.p < alpha,
            }
            for measure, result in measures.items()
        ]


def compare(model: Evaluation, reference: Evaluation) -> Comparison:
    tasks: dict[str, Paired] = {}
    test: dict[str, str] = {}
    correct: dict[str, tuple[list[bool], list[bool]]] = {}
    mine, theirs = model.samples, reference.samples
    for task, score in model.scores.items():
        other = reference.scores.get(task)
        if other is None:
            continue
        a, b = mine.get(task, {}), theirs.get(task, {})
        docs = sorted(set(a) & set(b))
        same_items = bool(docs) and all(a[d].doc_hash == b[d].doc_hash for d in docs)
        if same_items and all(a[d].correct is not None and b[d].correct is not None for d in docs):
            first = [bool(a[d].correct) for d in docs]
            second = [bool(b[d].correct) for d in docs]
            tasks[task] = stats.mcnemar(first, second)
            test[task] = "McNemar exact, paired"
            if score.averaged:
                correct[task] = (first, second)
        elif same_items and all(
            a[d].loglikelihood is not None and b[d].loglikelihood is not None for d in docs
        ):
            diffs = [a[d].loglikelihood - b[d].loglikelihood for d in docs]  # type: ignore[operator]
            tasks[task] = stats.paired_t(diffs)
            test[task] = "paired t on per-document log-likelihood (nats)"
        else:
            result = _unpaired(score.value, score.stderr, other.value, other.stderr)
            if result is not None:
                tasks[task] = result
                test[task] = "unpaired z (no per-sample file or different items)"
    averaged = [t for t, s in model.scores.items() if s.averaged and t in reference.scores]
    average: Paired | None
    if averaged and all(t in correct for t in averaged):
        average = stats.suite_average({t: correct[t] for t in averaged})
        test["average"] = "paired z over every item of the averaged tasks"
    else:
        average = _unpaired(
            model.average, model.average_stderr, reference.average, reference.average_stderr
        )
        if average is not None:
            test["average"] = "unpaired z (no per-sample file or different items)"
    return Comparison(label(model), label(reference), average, tasks, test)


def _unpaired(a: float | None, se_a: float | None, b: float | None, se_b: float | None):
    if a is None or b is None:
        return None
    se = math.sqrt((se_a or 0.0) ** 2 + (se_b or 0.0) ** 2)
    p = stats.normal_two_sided((a - b) / se) if se > 0 else float(a == b)
    return Paired(a - b, se, p, 0)
