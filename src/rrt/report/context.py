"""What the tables share, computed once from one results folder: the models in order, the gaps,
each model's numbers, and every paired comparison made (tables/comparisons.csv)."""

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rrt.report import fmt
from rrt.report.compare import Comparison, compare
from rrt.report.results import Evaluation, Name, Results, Training, parse_name
from rrt.report.stats import Paired
from rrt.report.tables.gaps import Gap, find_gaps, missing_reason


@dataclass
class Context:
    """One results folder and the report's alpha; every table of one report shares it."""

    results: Results
    alpha: float
    comparisons: dict[tuple[str, str, str], Comparison] = field(default_factory=dict)

    @cached_property
    def gaps(self) -> list[Gap]:
        return find_gaps(self.results)

    @cached_property
    def models(self) -> list[Name]:
        """Every model the experiment evaluates at full depth (present or expected), in order."""
        names = {name for name, loop in self.results.evaluations if loop is None}
        paths = (self.results.expected("evaluations") or []) + [g.path for g in self.gaps]
        names |= {
            p.removeprefix("eval/").removesuffix(".json")
            for p in paths
            if p.startswith("eval/") and p.count("/") == 1
        }
        return sorted((parse_name(n) for n in names), key=lambda n: n.order)

    @cached_property
    def tasks(self) -> list[tuple[str, str, bool]]:
        """(task, headline metric, averaged) over every evaluation, in first-seen order."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for evaluation in self.results.evaluations.values():
            for s in evaluation.scores.values():
                seen.setdefault(s.task, (s.task, s.metric, s.averaged))
        return list(seen.values())

    def evaluation(self, name: str, loop: int | None = None) -> Evaluation | None:
        return self.results.evaluations.get((name, loop))

    def training(self, name: str) -> Training | None:
        return self.results.trainings.get(name)

    def ce(self, name: str) -> float | None:
        training = self.training(name)
        return training.ce if training else None

    def status(self, name: str, loop: int | None = None) -> str:
        """Empty for a result that is there; else 'missing: why'."""
        if self.evaluation(name, loop) is not None:
            return ""
        path = f"eval/{name}.json" if loop is None else f"eval/exits/{name}-exit{loop}.json"
        gap = next((g for g in self.gaps if g.path == path), None)
        return f"missing: {gap.reason if gap else missing_reason(self.results, path)}"

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
        """The averaged tasks (accuracy ± stderr, in percent) or the others (perplexities), one
        cell each, headed by task (less the tasks' common prefix) and metric."""
        names = [t for t, _, _ in self.tasks]
        common = os.path.commonprefix(names) if len(names) > 1 else ""
        prefix = common[: common.rfind("_") + 1]
        cells = {}
        for task, metric, in_average in self.tasks:
            if in_average == averaged:
                score = evaluation.scores.get(task) if evaluation else None
                value, stderr = (score.value, score.stderr) if score else (None, None)
                show = fmt.pct_pm if averaged else fmt.value_pm
                cells[f"{task.removeprefix(prefix)} ({metric})"] = show(value, stderr)
        return cells

    def full_size(self) -> Evaluation | None:
        """The full-size model uptrained on the same tokens, else the source itself."""
        return self.evaluation("source.up") or self.evaluation("source")

    def matched_reduced(self, name: Name) -> Evaluation | None:
        """The reduced-size baseline of the same depth trained on as many tokens as ``name`` was
        uptrained on (the paper's matched budget); none for early exit (more tokens)."""
        if name.kind not in ("recursive", "relaxed") or name.early_exit:
            return None
        tokens = _tokens(self.training(name.name))
        matched = (
            self.evaluation(other.name)
            for other in self.models
            if other.kind == "reduced" and other.loops == name.loops and tokens is not None
            if _tokens(self.training(other.name)) == tokens
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
            self.comparisons[key] = compare(model, reference)
        return self.comparisons[key].average


def _key(evaluation: Evaluation) -> str:
    return f"{evaluation.name}@{evaluation.exit_loop or 0}"


def _tokens(training: Training | None) -> int | None:
    return training.metrics.tokens if training else None
