"""What the tables share, computed once from one results folder: the models in order, the gaps,
each model's numbers, and every comparison made (tables/comparisons.csv): paired item by item
where the per-sample files allow, else on the unpaired stderrs (and then said so)."""

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import polars as pl

from rrt.report import fmt, stats
from rrt.report.document import frame
from rrt.report.results import Evaluation, Name, Results, Training, missing_reason, parse_name
from rrt.report.stats import Paired

UNPAIRED = "unpaired z (no per-sample file or different items)"
COLUMNS = (
    "model", "reference", "relation", "measure", "delta", "stderr", "p", "n", "test",
    "significant",
)  # fmt: skip
Measures = dict[str, tuple[Paired, str]]  # measure (average, a task) -> the result, how tested


def label(evaluation: Evaluation) -> str:
    loop = evaluation.exit_loop
    return evaluation.name if loop is None else f"{evaluation.name} (loop {loop})"


def compare(model: Evaluation, reference: Evaluation) -> Measures:
    """``model`` minus ``reference``: the suite average (paired where every averaged task is),
    then each task by the best test the files allow: accuracy (fractions), or per-document
    log-likelihood for perplexity tasks (nats; positive: the model is better)."""
    tasks: Measures = {}
    correct: dict[str, tuple[list[bool], list[bool]]] = {}
    for task, score in model.scores.items():
        if (other := reference.scores.get(task)) is None:
            continue
        a, b = model.samples.get(task, {}), reference.samples.get(task, {})
        pairs = [(a[d], b[d]) for d in sorted(set(a) & set(b))]
        paired = bool(pairs) and all(x.doc_hash == y.doc_hash for x, y in pairs)
        if paired and all(None not in (x.correct, y.correct) for x, y in pairs):
            correct[task] = (
                [bool(x.correct) for x, _ in pairs],
                [bool(y.correct) for _, y in pairs],
            )
            tasks[task] = (stats.mcnemar(*correct[task]), "McNemar exact, paired")
        elif paired and all(None not in (x.loglikelihood, y.loglikelihood) for x, y in pairs):
            diffs = [x.loglikelihood - y.loglikelihood for x, y in pairs]  # type: ignore[operator]
            tasks[task] = (stats.paired_t(diffs), "paired t on per-document log-likelihood (nats)")
        elif result := stats.unpaired(score.value, score.stderr, other.value, other.stderr):
            tasks[task] = (result, UNPAIRED)
    averaged = [t for t, s in model.scores.items() if s.averaged and t in reference.scores]
    if averaged and all(t in correct for t in averaged):
        average = stats.suite_average({t: correct[t] for t in averaged})
        return {"average": (average, "paired z over every item of the averaged tasks")} | tasks
    average = stats.unpaired(
        model.average, model.average_stderr, reference.average, reference.average_stderr
    )
    return ({"average": (average, UNPAIRED)} if average else {}) | tasks


@dataclass
class Context:
    """One results folder and the report's alpha; every table of one report shares it."""

    results: Results
    alpha: float
    # (model, reference, relation) -> their labels and every measure compared
    comparisons: dict[tuple[str, str, str], tuple[str, str, Measures]] = field(default_factory=dict)

    @cached_property
    def models(self) -> list[Name]:
        """Every model the experiment evaluates at full depth (present or expected), in order."""
        names = {name for name, loop in self.results.evaluations if loop is None}
        gaps = [gap.path for gap in self.results.gaps]
        for path in (self.results.expected("evaluations") or []) + gaps:
            if path.startswith("eval/") and path.count("/") == 1:
                names.add(path.removeprefix("eval/").removesuffix(".json"))
        return sorted((parse_name(n) for n in names), key=lambda n: n.order)

    @cached_property
    def tasks(self) -> list[tuple[str, str, bool]]:
        """(task, headline metric, averaged) over every evaluation, in first-seen order."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for evaluation in self.results.evaluations.values():
            for s in evaluation.scores.values():
                seen.setdefault(s.task, (s.task, s.metric, s.averaged))
        return list(seen.values())

    @cached_property
    def perplexity_task(self) -> tuple[str, str] | None:
        """The first task (and metric) the suite does not average whose headline is a perplexity."""
        found = ((t, m) for t, m, averaged in self.tasks if not averaged and "perplexity" in m)
        return next(found, None)

    def perplexity(self, evaluation: Evaluation | None) -> float | None:
        """The evaluation's value of :attr:`perplexity_task` (None without one)."""
        task = self.perplexity_task
        score = evaluation.scores.get(task[0]) if evaluation and task else None
        return score.value if score else None

    def uptrained(self, *kinds: str) -> list[Name]:
        """The uptrained models of ``kinds``, not post-trained for early exit, in order."""
        return [n for n in self.models if n.kind in kinds and n.uptrained and not n.early_exit]

    def evaluation(self, name: str, loop: int | None = None) -> Evaluation | None:
        return self.results.evaluations.get((name, loop))

    def training(self, name: str) -> Training | None:
        return self.results.trainings.get(name)

    def ce(self, name: str) -> float | None:
        return training.ce if (training := self.training(name)) else None

    def tokens(self, name: str) -> int | None:
        return training.metrics.tokens if (training := self.training(name)) else None

    def status(self, name: str, loop: int | None = None) -> str:
        """Empty for a result that is there; else 'missing: why' (a gap's reason, if one)."""
        if self.evaluation(name, loop) is not None:
            return ""
        path = f"eval/{name}.json" if loop is None else f"eval/exits/{name}-exit{loop}.json"
        return f"missing: {missing_reason(self.results.root, path)}"

    def facts(self, name: Name) -> dict[str, Any]:
        """A model's numbers, named as the tables' data name them, and its status."""
        evaluation, training = self.evaluation(name.name), self.training(name.name)
        params = training.parameters if training else {}
        params = evaluation.report.model.parameters if evaluation else params
        return {
            "model": name.name,
            "kind": name.kind,
            "loops": name.loops,
            "init": name.init,
            "rank": name.rank,
            "early_exit": name.early_exit,
            "non_embedding_params": params.get("non_embedding"),
            "lora_params": params.get("lora"),
            "trained_tokens": training.metrics.tokens if training else None,
            "kd_weight": training.kd_weight if training else None,
            "suite_average": evaluation.average if evaluation else None,
            "suite_average_stderr": evaluation.average_stderr if evaluation else None,
            "held_out_ce": training.ce if training else None,
            "status": self.status(name.name),
        }

    def task_cells(self, evaluation: Evaluation | None, averaged: bool) -> dict[str, str]:
        """A cell of each averaged task (accuracy ± stderr, in percent) or each other one
        (perplexity), headed by task (less the tasks' common prefix) and metric."""
        names = [t for t, _, _ in self.tasks]
        common = os.path.commonprefix(names) if len(names) > 1 else ""
        prefix = common[: common.rfind("_") + 1]
        show = fmt.pct if averaged else fmt.value_pm
        scores = evaluation.scores.values() if evaluation else []
        shown = {s.task: show(s.value, s.stderr) for s in scores}
        tasks = [(t, m) for t, m, in_average in self.tasks if in_average == averaged]
        return {f"{t.removeprefix(prefix)} ({m})": shown.get(t, fmt.DASH) for t, m in tasks}

    def full_size(self) -> Evaluation | None:
        """The full-size model uptrained on the same tokens, else the source itself."""
        return self.evaluation("source.up") or self.evaluation("source")

    def matched_reduced(self, name: Name) -> Evaluation | None:
        """The reduced-size baseline of the same depth trained on as many tokens as ``name`` was
        uptrained on (the paper's matched budget); none for early exit (more tokens)."""
        if name.kind not in ("recursive", "relaxed") or name.early_exit:
            return None
        if (tokens := self.tokens(name.name)) is None:
            return None
        matched = (
            self.evaluation(other.name)
            for other in self.models
            if other.kind == "reduced" and other.loops == name.loops
            if self.tokens(other.name) == tokens
        )
        return next(matched, None)

    def compare(
        self, model: Evaluation | None, reference: Evaluation | None, relation: str
    ) -> Paired | None:
        """The paired difference of the suite averages (comparisons.csv keeps every task's)."""
        if model is None or reference is None:
            return None
        key = (_key(model), _key(reference), relation)
        if key not in self.comparisons:
            self.comparisons[key] = (label(model), label(reference), compare(model, reference))
        average = self.comparisons[key][2].get("average")
        return average[0] if average else None

    def versus(
        self,
        key: str,
        model: Evaluation | None,
        reference: Evaluation | None,
        relation: str,
        header: str | None = None,
    ) -> dict[str, Any]:
        """A difference of suite averages as data (delta_average_vs_KEY, p_vs_KEY) and as a cell
        (headed ``Δ avg RELATION`` unless ``header`` says otherwise)."""
        result = self.compare(model, reference, relation)
        return {
            f"delta_average_vs_{key}": result.delta if result else None,
            f"p_vs_{key}": result.p if result else None,
            header or f"Δ avg {relation}": fmt.delta(result, self.alpha),
        }

    def against(
        self, names: list[Name], reference: Name | None, key: str, relation: str
    ) -> list[dict[str, Any]]:
        """Each model's facts and its differences to ``reference`` (Δ avg and Δ CE RELATION), but
        on the reference's own row."""
        base = self.evaluation(reference.name) if reference else None
        ce = self.ce(reference.name) if reference else None
        rows = []
        for name in names:
            row = self.facts(name)
            if name != reference:
                row |= self.versus(key, self.evaluation(name.name), base, relation)
                if row["held_out_ce"] is not None and ce is not None:
                    row[f"Δ CE {relation}"] = f"{row['held_out_ce'] - ce:+.4f}"
            rows.append(row)
        return rows

    def comparisons_frame(self) -> pl.DataFrame:
        """tables/comparisons.csv: every measure of every comparison the report made."""
        rows = [
            (model, reference, relation, measure, r.delta, r.se, r.p, r.n, test, r.p < self.alpha)
            for (_, _, relation), (model, reference, measures) in sorted(self.comparisons.items())
            for measure, (r, test) in measures.items()
        ]
        return frame([dict(zip(COLUMNS, row, strict=True)) for row in rows], COLUMNS)


def _key(evaluation: Evaluation) -> str:
    return f"{evaluation.name}@{evaluation.exit_loop or 0}"
