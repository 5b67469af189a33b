"""The paper's tables from an experiment's results: one row per model, then the initialisation
ablation, the rank sweep, the distillation comparison, the per-exit-loop table and throughput.

Each table is built from the results (``Results``) with Polars: a frame of numbers written to
``tables/ID.csv`` (long form, what the table and its plot show) and a frame of display strings.
Differences between models come with a paired test over the same items (``compare``).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import polars as pl

from rrt.report import fmt, stats
from rrt.report.compare import Comparison, compare
from rrt.report.document import Section, Table, strings
from rrt.report.results import Evaluation, Name, Results, Training, missing_reason, parse_name

SYSTEM_ORDER = (
    "vanilla", "hf_continuous", "sequence_continuous", "recursive_sequence", "depthwise",
)  # fmt: skip
SYSTEM_LABELS = {
    "vanilla": "full-size, static batching (HF generate)",
    "hf_continuous": "full-size, HF continuous batching",
    "sequence_continuous": "full-size, continuous sequence-wise",
    "recursive_sequence": "recursive, continuous sequence-wise",
    "depthwise": "recursive, continuous depth-wise",
    "simulated": "depth-wise, simulated (paper's oracle)",
}


@dataclass(frozen=True)
class Gap:
    path: str
    reason: str


class Analysis:
    """Everything the report says, computed once from one results folder."""

    def __init__(self, results: Results, alpha: float) -> None:
        self.results = results
        self.alpha = alpha
        self.data: dict[str, pl.DataFrame] = {}  # tables/NAME.csv
        self._comparisons: dict[tuple[str, str, str], Comparison] = {}
        self.gaps = self._gaps()

    # --- what there is ----------------------------------------------------------------------

    def _gaps(self) -> list[Gap]:
        r = self.results
        gaps: dict[str, Gap] = {}
        for kind in ("evaluations", "models", "benchmarks"):
            for path in r.expected(kind) or []:
                if not (r.root / path).exists():
                    gaps[path] = Gap(path, missing_reason(r, path))
        if r.record is None:  # without the record, only models present but not evaluated
            for name in sorted(r.models_present):
                n = parse_name(name)
                evaluated = n.kind in ("full-size", "reduced") or n.uptrained
                if evaluated and n.sweep is None and r.evaluation(name) is None:
                    path = f"eval/{name}.json"
                    gaps[path] = Gap(path, missing_reason(r, path))
        return sorted(gaps.values(), key=lambda g: g.path)

    def gap(self, path: str) -> Gap | None:
        return next((g for g in self.gaps if g.path == path), None)

    def model_names(self) -> list[Name]:
        """Every model the experiment evaluates at full depth (present or expected), in order."""
        names = {name for name, loop in self.results.evaluations if loop is None}
        for path in self.results.expected("evaluations") or []:
            if path.startswith("eval/") and path.count("/") == 1:
                names.add(path.removeprefix("eval/").removesuffix(".json"))
        for gap in self.gaps:
            if gap.path.startswith("eval/") and gap.path.count("/") == 1:
                names.add(gap.path.removeprefix("eval/").removesuffix(".json"))
        return sorted((parse_name(n) for n in names), key=lambda n: n.order)

    def evaluation(self, name: str, loop: int | None = None) -> Evaluation | None:
        return self.results.evaluation(name, loop)

    def training(self, name: str) -> Training | None:
        return self.results.trainings.get(name)

    def status(self, name: str, loop: int | None = None) -> str:
        """Empty for a result that is there; else 'missing: why'."""
        if self.evaluation(name, loop) is not None:
            return ""
        path = f"eval/{name}.json" if loop is None else f"eval/exits/{name}-exit{loop}.json"
        gap = self.gap(path)
        return f"missing: {gap.reason if gap else missing_reason(self.results, path)}"

    def ce(self, name: str) -> float | None:
        training = self.training(name)
        return training.validation_ce if training else None

    def parameters(self, name: str) -> dict[str, int]:
        evaluation = self.evaluation(name)
        if evaluation is not None:
            return evaluation.parameters
        training = self.training(name)
        return training.parameters if training else {}

    def tasks(self) -> list[tuple[str, str, bool]]:
        """(task, headline metric, averaged) over every evaluation, in first-seen order."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for evaluation in self.results.evaluations.values():
            for score in evaluation.scores.values():
                seen.setdefault(score.task, (score.task, score.metric, score.averaged))
        return list(seen.values())

    def task_header(self, task: str, metric: str) -> str:
        prefix = _common_prefix([t for t, _, _ in self.tasks()])
        return f"{task.removeprefix(prefix)} ({metric})"

    # --- references -------------------------------------------------------------------------

    def full_size(self) -> Evaluation | None:
        """The full-size model uptrained on the same tokens, else the source itself."""
        return self.evaluation("source.up") or self.evaluation("source")

    def uptrain_tokens(self, name: Name) -> int | None:
        """The tokens a model was uptrained (or, reduced-size, trained) on."""
        base = name.name.removesuffix(".ee") if name.early_exit else name.name
        training = self.training(base)
        return training.tokens if training else None

    def matched_reduced(self, name: Name) -> Evaluation | None:
        """The reduced-size baseline of the same depth trained on as many tokens as ``name`` was
        uptrained on (the paper's matched budget)."""
        if name.kind not in ("recursive", "relaxed") or name.early_exit:
            return None  # an early-exit model trained on more tokens than it was uptrained on
        tokens = self.uptrain_tokens(name)
        for other in self.model_names():
            if other.kind == "reduced" and other.loops == name.loops:
                training = self.training(other.name)
                if training is not None and training.tokens == tokens:
                    return self.evaluation(other.name)
        return None

    def compare(self, model: Evaluation, reference: Evaluation, relation: str) -> Comparison:
        key = (_key(model), _key(reference), relation)
        if key not in self._comparisons:
            self._comparisons[key] = compare(model, reference)
        return self._comparisons[key]

    # --- the tables -------------------------------------------------------------------------

    def training_text(self, name: Name) -> str:
        training = self.training(name.name)
        if training is None:
            return fmt.DASH
        if name.kind == "full-size" and not name.uptrained:
            return f"pretrained {fmt.count(training.tokens)}"
        if name.kind == "reduced":
            return f"from scratch {fmt.count(training.tokens)}"
        if name.early_exit:
            base = self.training(name.name.removesuffix(".ee"))
            before = fmt.count(base.tokens) if base else "?"
            return f"uptrained {before} + early exit {fmt.count(training.tokens)}"
        return f"uptrained {fmt.count(training.tokens)}"

    def models_tables(self) -> list[Table]:
        """One row per model: the paper-style summary, and each task's accuracy."""
        names = self.model_names()
        full = self.full_size()
        rows, per_task, data, scores = [], [], [], []
        for name in names:
            evaluation = self.evaluation(name.name)
            training = self.training(name.name)
            params = self.parameters(name.name)
            vs_full = vs_reduced = None
            if evaluation is not None and full is not None and full.name != name.name:
                vs_full = self.compare(evaluation, full, "vs full-size").average
            reduced = self.matched_reduced(name)
            if evaluation is not None and reduced is not None:
                vs_reduced = self.compare(evaluation, reduced, "vs reduced, matched tokens").average
            row = {
                "model": name.name,
                "B": str(name.loops) if name.kind in ("recursive", "relaxed") else fmt.DASH,
                "init": name.init or fmt.DASH,
                "rank": name.rank or ("0" if name.kind == "recursive" else fmt.DASH),
                "non-emb. params": fmt.count(params.get("non_embedding")),
                "LoRA params": fmt.count(params.get("lora")) if params.get("lora") else fmt.DASH,
                "training (tokens)": self.training_text(name),
                "KD w": fmt.number(training.kd_weight, 2)
                if training and training.kd_weight is not None
                else fmt.DASH,
            }
            row["average"] = _avg(evaluation)
            row |= self.task_cells(evaluation, averaged=False)
            row["held-out CE"] = fmt.number(self.ce(name.name))
            per_task.append(
                {"model": name.name, **self.task_cells(evaluation, averaged=True),
                 "average": row["average"], "status": self.status(name.name)}
            )  # fmt: skip
            row["Δ avg vs full-size"] = fmt.delta(vs_full, self.alpha)
            row["Δ avg vs reduced (matched tokens)"] = fmt.delta(vs_reduced, self.alpha)
            row["status"] = self.status(name.name)
            rows.append(row)
            data.append(
                {
                    "model": name.name,
                    "kind": name.kind,
                    "loops": name.loops,
                    "init": name.init,
                    "rank": name.rank,
                    "early_exit": name.early_exit,
                    "non_embedding_params": params.get("non_embedding"),
                    "lora_params": params.get("lora"),
                    "trained_tokens": training.tokens if training else None,
                    "kd_weight": training.kd_weight if training else None,
                    "suite_average": evaluation.average if evaluation else None,
                    "suite_average_stderr": evaluation.average_stderr if evaluation else None,
                    "held_out_ce": self.ce(name.name),
                    "delta_average_vs_full_size": vs_full.delta if vs_full else None,
                    "p_vs_full_size": vs_full.p if vs_full else None,
                    "full_size_reference": full.name if full else None,
                    "delta_average_vs_reduced": vs_reduced.delta if vs_reduced else None,
                    "p_vs_reduced": vs_reduced.p if vs_reduced else None,
                    "reduced_reference": reduced.name if reduced else None,
                    "status": row["status"],
                }
            )
        for evaluation in sorted(
            self.results.evaluations.values(), key=lambda e: (e.name, e.exit_loop or 0)
        ):
            for score in evaluation.scores.values():
                scores.append(
                    {
                        "model": evaluation.name,
                        "exit_loop": evaluation.exit_loop,
                        "task": score.task,
                        "metric": score.metric,
                        "value": score.value,
                        "stderr": score.stderr,
                        "items": score.n,
                        "in_average": score.averaged,
                    }
                )
        self.data["models"] = pl.DataFrame(data, schema=MODEL_SCHEMA)
        self.data["scores"] = pl.DataFrame(scores, schema=SCORE_SCHEMA)
        columns = list(rows[0]) if rows else ["model"]
        if not any(row["status"] for row in rows):
            columns = [c for c in columns if c != "status"]
        reference = full.name if full else "none"
        notes = [
            "Accuracies in percent ± stderr (lm-eval); the average is the suite's "
            "(its tasks' stderrs added in quadrature). Held-out CE: nats per token on the "
            "validation split after training (metrics.json).",
            f"Δ avg: difference of the suite average in points against the full-size model "
            f"({reference}) and against the reduced-size model of the same depth trained on the "
            f"same number of tokens, with the p-value of a paired test over the same items; "
            f"* marks p < {self.alpha:g}.",
        ]
        return [
            Table("models", "Every model, paper-style", strings(rows, columns), notes),
            Table(
                "tasks",
                "Every model, task by task (accuracy in percent ± stderr)",
                strings(per_task, _drop_empty_status(per_task, list(per_task[0]))),
            ),
        ]

    def task_cells(self, evaluation: Evaluation | None, averaged: bool) -> dict[str, str]:
        """The suite's averaged tasks (accuracy ± stderr, in percent) or its other tasks
        (perplexities), one cell each, headed by task and metric."""
        cells = {}
        for task, metric, in_average in self.tasks():
            if in_average != averaged:
                continue
            score = evaluation.scores.get(task) if evaluation else None
            value, stderr = (score.value, score.stderr) if score else (None, None)
            cells[self.task_header(task, metric)] = (
                fmt.pct_pm(value, stderr) if averaged else _value_pm(value, stderr, 3)
            )
        return cells

    def gaps_block(self) -> list:
        if not self.gaps and self.results.record is None:
            return [
                "No experiment record (experiment.json, written when the workflow starts): "
                "configurations that never ran cannot be listed; every model present here that "
                "is evaluated has its evaluation."
            ]
        if not self.gaps:
            return ["Every result the experiment's record lists is here."]
        rows = [{"missing result": g.path, "reason": g.reason} for g in self.gaps]
        self.data["gaps"] = pl.DataFrame(
            rows, schema={"missing result": pl.String, "reason": pl.String}
        )
        return [
            f"{len(self.gaps)} result(s) the experiment makes are missing; each shows as a gap "
            "in its table:",
            Table("gaps", "Missing results and why", strings(rows, ["missing result", "reason"])),
        ]

    # --- initialisation ---------------------------------------------------------------------

    def init_groups(self) -> dict[tuple[str, int, str | None], list[Name]]:
        groups: dict[tuple[str, int, str | None], list[Name]] = defaultdict(list)
        for name in self.model_names():
            if name.kind in ("recursive", "relaxed") and name.uptrained and not name.early_exit:
                groups[(name.kind, name.loops or 0, name.rank)].append(name)
        return {k: v for k, v in groups.items() if len({n.init for n in v}) >= 2}

    def init_section(self) -> Section:
        section = Section("init", "Initialisation of the shared layers (paper app. F)")
        groups = self.init_groups()
        if not groups:
            return _absent(
                section,
                "Not in this experiment: it makes no two models that differ only in their "
                "initialisation (config recursive.inits / relaxed.inits).",
            )
        rows, data = [], []
        for (kind, loops, rank), names in sorted(groups.items(), key=lambda kv: str(kv[0])):
            stepwise = next((n for n in names if n.init == "stepwise"), None)
            reference = self.evaluation(stepwise.name) if stepwise else None
            for name in names:
                evaluation = self.evaluation(name.name)
                result = None
                if evaluation and reference and name.init != "stepwise":
                    result = self.compare(evaluation, reference, "vs stepwise").average
                ce, ce_ref = self.ce(name.name), self.ce(stepwise.name) if stepwise else None
                rows.append(
                    {
                        "model": name.name,
                        "kind": kind,
                        "B": str(loops),
                        "rank": rank or "0",
                        "init": name.init or "",
                        "average": _avg(evaluation),
                        "held-out CE": fmt.number(ce),
                        "Δ avg vs stepwise": fmt.delta(result, self.alpha),
                        "Δ CE vs stepwise": fmt.signed(ce - ce_ref)
                        if ce is not None and ce_ref is not None and name.init != "stepwise"
                        else fmt.DASH,
                        "status": self.status(name.name),
                    }
                )
                data.append(
                    {
                        "model": name.name,
                        "kind": kind,
                        "loops": loops,
                        "rank": rank,
                        "init": name.init,
                        "suite_average": evaluation.average if evaluation else None,
                        "held_out_ce": ce,
                        "delta_average_vs_stepwise": result.delta if result else None,
                        "p_vs_stepwise": result.p if result else None,
                    }
                )
        self.data["init"] = pl.DataFrame(data, infer_schema_length=None)
        columns = _drop_empty_status(rows, list(rows[0]))
        section.blocks.append(
            Table(
                "init",
                "Initialisation ablation",
                strings(rows, columns),
                [
                    "Paper (Gemma 2B, recursive, 15 B tokens): stepwise 51.7, average 46.7, "
                    "lower 47.1, random 37.6; average is best once LoRA is added.",
                    f"Δ: against the stepwise model of the same kind, loops and rank (paired "
                    f"test; * p < {self.alpha:g}). Lower CE is better.",
                ],
            )
        )
        return section

    # --- rank -------------------------------------------------------------------------------

    def rank_groups(self) -> dict[tuple[int, str], list[Name]]:
        groups: dict[tuple[int, str], list[Name]] = defaultdict(list)
        for name in self.model_names():
            if name.kind == "relaxed" and name.uptrained and not name.early_exit:
                groups[(name.loops or 0, name.init or "")].append(name)
        return dict(groups)

    def recursive_of(self, loops: int, init: str) -> Name | None:
        return next(
            (
                n
                for n in self.model_names()
                if n.kind == "recursive" and n.loops == loops and n.init == init and n.uptrained
                if not n.early_exit
            ),
            None,
        )

    def rank_section(self) -> Section:
        section = Section("rank", "LoRA rank (paper sec. 2.3, app. I)")
        groups = self.rank_groups()
        if not groups:
            section.blocks.append("Not in this experiment: it relaxes no model (relaxed.ranks).")
            return section
        rows, data = [], []
        full = self.full_size()
        for (loops, init), names in sorted(groups.items()):
            recursive = self.recursive_of(loops, init)
            base = self.evaluation(recursive.name) if recursive else None
            for name in ([recursive] if recursive else []) + names:
                evaluation = self.evaluation(name.name)
                params = self.parameters(name.name)
                result = None
                if evaluation and base and name is not recursive:
                    result = self.compare(evaluation, base, "vs rank 0").average
                rows.append(
                    {
                        "model": name.name,
                        "B": str(loops),
                        "init": init,
                        "rank": name.rank or "0",
                        "non-emb. params": fmt.count(params.get("non_embedding")),
                        "LoRA params": fmt.count(params.get("lora") or None),
                        "average": _avg(evaluation),
                        "Δ avg vs rank 0": fmt.delta(result, self.alpha),
                        "held-out CE": fmt.number(self.ce(name.name)),
                        "status": self.status(name.name),
                    }
                )
                data.append(
                    {
                        "model": name.name,
                        "loops": loops,
                        "init": init,
                        "rank": name.rank or "0",
                        "non_embedding_params": params.get("non_embedding"),
                        "lora_params": params.get("lora"),
                        "suite_average": evaluation.average if evaluation else None,
                        "held_out_ce": self.ce(name.name),
                        "delta_average_vs_rank0": result.delta if result else None,
                        "p_vs_rank0": result.p if result else None,
                    }
                )
        if full is not None:
            params = full.parameters
            rows.append(
                {
                    "model": f"{full.name} (reference)",
                    "B": fmt.DASH,
                    "init": fmt.DASH,
                    "rank": fmt.DASH,
                    "non-emb. params": fmt.count(params.get("non_embedding")),
                    "LoRA params": fmt.DASH,
                    "average": _avg(full),
                    "Δ avg vs rank 0": fmt.DASH,
                    "held-out CE": fmt.number(self.ce(full.name)),
                    "status": "",
                }
            )
        self.data["rank"] = pl.DataFrame(data, infer_schema_length=None)
        section.blocks.append(
            Table(
                "rank",
                "Rank sweep: the recursive model (rank 0) and its relaxations",
                strings(rows, _drop_empty_status(rows, list(rows[0]))),
                [
                    "Paper (Gemma 2B, B = 2, average init): 55.8 / 56.6 / 57.0 / 58.4 at "
                    "r = 64 / 128 / 256 / 512 (1.07 / 1.15 / 1.30 / 1.60 B non-embedding "
                    "parameters), recursive 54.9 (0.99 B), full-size 58.6 uptrained.",
                    f"Δ: against the recursive model of the same loops and init (paired test; "
                    f"* p < {self.alpha:g}).",
                ],
            )
        )
        return section

    # --- distillation -----------------------------------------------------------------------

    def kd_groups(self) -> dict[tuple[str, int], dict[float, dict[int, Training]]]:
        """(base model, tokens) -> KD weight -> seed -> the swept model's training."""
        groups: dict[tuple[str, int], dict[float, dict[int, Training]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        for name, training in self.results.trainings.items():
            n = parse_name(name)
            if n.sweep is not None:
                tokens, weight, seed = n.sweep
                groups[(name.split(".up", 1)[0], tokens)][weight][seed] = training
        return {k: dict(v) for k, v in groups.items() if len(v) >= 2}

    def kd_section(self) -> Section:
        section = Section("kd", "Distillation (paper app. E, I)")
        groups = self.kd_groups()
        if not groups:
            return _absent(
                section,
                "Not in this experiment: it sweeps no distillation weights (config "
                "sweep.kd_weights with two or more values; "
                "config/experiments/uptrain-ablation.yaml has one).",
            )
        rows, data = [], []
        for (base, tokens), weights in sorted(groups.items()):
            reference_weight = min(weights)
            reference = weights[reference_weight]
            for weight, seeds in sorted(weights.items()):
                ces = {s: t.validation_ce for s, t in seeds.items() if t.validation_ce is not None}
                for seed, training in sorted(seeds.items()):
                    data.append(
                        {
                            "model": base,
                            "tokens": tokens,
                            "kd_weight": weight,
                            "seed": seed,
                            "held_out_ce": training.validation_ce,
                            **{
                                f"{m}_loop{loop}": v
                                for loop, values in sorted(training.exits.items())
                                for m, v in values.items()
                            },
                        }
                    )
                shared = sorted(
                    s for s in ces if s in reference and reference[s].validation_ce is not None
                )
                diffs = [ces[s] - reference[s].validation_ce for s in shared]  # type: ignore[operator]
                test = stats.paired_t(diffs) if weight != reference_weight and diffs else None
                values = list(ces.values())
                rows.append(
                    {
                        "model": base,
                        "tokens": fmt.count(tokens),
                        "KD w": f"{weight:g}",
                        "seeds": str(len(seeds)),
                        "held-out CE (mean ± sd)": _mean_sd(values),
                        f"Δ CE vs w={reference_weight:g} per seed": ", ".join(
                            f"{d:+.4f}" for d in diffs
                        )
                        if test
                        else fmt.DASH,
                        "better on": f"{sum(d < 0 for d in diffs)} of {len(diffs)} seeds"
                        if test
                        else fmt.DASH,
                        "paired t over seeds": fmt.delta(test, self.alpha, scale=1.0, digits=4)
                        if test
                        else fmt.DASH,
                    }
                )
        self.data["kd"] = pl.DataFrame(data, infer_schema_length=None)
        section.blocks.append(
            Table(
                "kd",
                "Uptraining with and without distillation (held-out CE, lower is better)",
                strings(rows, list(rows[0])),
                [
                    "Each swept model is uptrained once per seed of the data order from the same "
                    "weights; the seeds pair the runs. Swept models are not evaluated with "
                    "lm-eval: held-out CE (nats per token) is their measure."
                ],
            )
        )
        return section

    # --- early exit -------------------------------------------------------------------------

    def exit_models(self) -> list[Name]:
        return [n for n in self.model_names() if n.early_exit]

    def exit_section(self) -> Section:
        section = Section("exits", "Early exit: every loop's exit (paper sec. 3.7)")
        names = self.exit_models()
        if not names:
            return _absent(
                section,
                "Not in this experiment: no model is post-trained for early exit "
                "(config early_exit.models).",
            )
        rows, data = [], []
        for name in names:
            loops = name.loops or 1
            full = self.evaluation(name.name)
            after = self.training(name.name)
            before = self.training(name.name.removesuffix(".ee"))
            for loop in range(1, loops + 1):
                at = None if loop == loops else loop
                evaluation = self.evaluation(name.name, at)
                result = None
                if evaluation is not None and full is not None and at is not None:
                    result = self.compare(evaluation, full, "vs full depth").average
                row = {"model": name.name, "exit after loop": str(loop)}
                row |= self.task_cells(evaluation, averaged=True)
                row |= self.task_cells(evaluation, averaged=False)
                for score in evaluation.scores.values() if evaluation else []:
                    data.append(
                        _exit_row(name.name, loop, score.task, score.metric, score.value,
                                  score.stderr)
                    )  # fmt: skip
                row["average"] = _avg(evaluation)
                row["Δ avg vs full depth"] = fmt.delta(result, self.alpha)
                ce_after = (after.exits.get(loop) or {}) if after else {}
                ce_before = (before.exits.get(loop) or {}) if before else {}
                row["held-out CE before → after post-training"] = (
                    f"{fmt.number(ce_before.get('ce'))} → {fmt.number(ce_after.get('ce'))}"
                )
                row["next-token acc before → after"] = (
                    f"{fmt.pct(ce_before.get('acc'))} → {fmt.pct(ce_after.get('acc'))}"
                )
                row["status"] = self.status(name.name, at)
                rows.append(row)
                if evaluation is not None:
                    data.append(
                        _exit_row(name.name, loop, "average", "suite average",
                                  evaluation.average, evaluation.average_stderr)
                    )  # fmt: skip
                for stage, values in (("before", ce_before), ("after", ce_after)):
                    for measure, value in values.items():
                        data.append(
                            _exit_row(name.name, loop, f"held-out {measure} ({stage})",
                                      measure, value, None)
                        )  # fmt: skip
        self.data["exits"] = pl.DataFrame(data, schema=EXIT_SCHEMA)
        section.blocks.append(
            Table(
                "exits",
                "Each early-exit model with every token leaving after loop b",
                strings(rows, _drop_empty_status(rows, list(rows[0]))),
                [
                    "The last loop is the model at full depth. Held-out CE (nats per token) and "
                    "next-token accuracy at each loop's exit come from the uptrained model "
                    "before early-exit post-training and from the post-trained model after it.",
                    f"Δ: against the same model at full depth (paired test; * p < {self.alpha:g}).",
                ],
            )
        )
        return section

    # --- throughput -------------------------------------------------------------------------

    def throughput_section(self) -> Section:
        section = Section("throughput", "Throughput (paper sec. 3.8, app. K)")
        benchmarks = self.results.benchmarks
        missing = [g for g in self.gaps if g.path.startswith("benchmarks/")]
        for gap in missing:
            section.blocks.append(f"Missing {gap.path}: {gap.reason}.")
        if not benchmarks:
            if not missing:
                section.blocks.append(
                    "No throughput results: the results folder holds no benchmarks/*.json "
                    "(written by rrt benchmark)."
                )
            return section
        data = []
        for benchmark in benchmarks:
            vanilla = (benchmark.systems.get("vanilla") or {}).get("tokens_per_s")
            rows = []
            for system, values in sorted(benchmark.systems.items(), key=_system_order):
                speed = _float(values.get("tokens_per_s"))
                ratio = speed / vanilla if speed is not None and vanilla else None
                failed = values.get("error")
                rows.append(
                    {
                        "system": system,
                        "what it is": _system_label(system, values)
                        + (f" (missing: this system failed: {failed})" if failed else ""),
                        "tokens/s": f"{speed:,.1f}" if speed is not None else fmt.DASH,
                        "× vanilla": fmt.number(ratio, 2),
                        "latency p50 (s)": fmt.number(values.get("latency_p50_s"), 3),
                        "latency p99 (s)": fmt.number(values.get("latency_p99_s"), 3),
                        "TTFT p50 (s)": fmt.number(values.get("ttft_p50_s"), 3),
                        "mean exit loop": fmt.number(values.get("mean_exit_loop"), 2),
                        "agreement": fmt.pct(values.get("agreement")),
                        "peak memory (MB)": fmt.number(values.get("peak_mem_mb"), 0),
                    }
                )
                data.append(
                    {
                        "benchmark": benchmark.name,
                        "system": system,
                        "threshold": _float(values.get("threshold")),
                        "kv_mode": _kv(values),
                        "tokens_per_s": speed,
                        "ratio_to_vanilla": ratio,
                        **{k: _float(values.get(k)) for k in BENCH_NUMBERS},
                        "error": failed,
                    }
                )
            workload = ", ".join(f"{k} {v}" for k, v in sorted(benchmark.workload.items()))
            peaks = benchmark.hardware.get("peaks")
            hardware = ", ".join(
                f"{k} {v}" for k, v in sorted(benchmark.hardware.items()) if k != "peaks"
            )
            served = f" (serving {benchmark.model})" if benchmark.model else ""
            section.blocks.append(
                Table(
                    f"throughput-{_slug(benchmark.name)}",
                    f"Throughput: benchmarks/{benchmark.name}.json{served}",
                    strings(rows, list(rows[0])),
                    [
                        f"Workload: {workload or 'not recorded'}. Hardware: "
                        f"{hardware or 'not recorded'}.",
                        "Agreement: share of generated tokens equal to full-depth decoding (in "
                        "percent). Paper (Gemma, simulated, oracle exit): sequence-wise ×1.41, "
                        "recursive B=2 depth-wise ×2.66, relaxed r=64..512 ×2.00..×1.59.",
                    ],
                )
            )
            roofline = _roofline_rows(benchmark.systems)
            if roofline and isinstance(peaks, dict):
                section.blocks.append(
                    Table(
                        f"roofline-{_slug(benchmark.name)}",
                        f"Roofline: benchmarks/{benchmark.name}.json",
                        strings(roofline, list(roofline[0])),
                        [
                            "FLOPs and bytes each output token needed (every linear a row ran, "
                            "attention over the keys it may see, the exit head; weights read "
                            "once a layer call, keys and values read and written), and the "
                            "tokens/s the machine's measured ceilings allow at those counts: "
                            f"{_float(peaks.get('memory_gb_per_s')) or 0:,.1f} GB/s memory, "
                            f"{_float(peaks.get('matmul_gflop_per_s')) or 0:,.1f} GFLOP/s "
                            f"matmul ({peaks.get('measured_by', 'not recorded')}). Decode "
                            "columns: steps with no prompt chunk, their counts over their "
                            "measured time.",
                        ],
                    )
                )
        self.data["throughput"] = pl.DataFrame(data, infer_schema_length=None)
        return section

    def comparisons_frame(self) -> pl.DataFrame:
        rows = [
            row
            for (_, _, relation), comparison in sorted(self._comparisons.items())
            for row in comparison.rows(relation, self.alpha)
        ]
        return pl.DataFrame(rows, schema=COMPARISON_SCHEMA)


# --- helpers -------------------------------------------------------------------------------

BENCH_NUMBERS = (
    "latency_p50_s", "latency_p99_s", "ttft_p50_s", "mean_exit_loop", "agreement", "peak_mem_mb",
    "flops_per_token", "bytes_per_token", "roofline_tokens_per_s", "roofline_fraction",
    "decode_step_ms", "decode_gb_per_s", "decode_bandwidth_fraction", "decode_gflop_per_s",
    "decode_compute_fraction",
)  # fmt: skip


def _roofline_rows(systems: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per system whose steps were counted (rrt benchmark's roofline fields)."""
    rows = []
    for system, values in sorted(systems.items(), key=_system_order):
        flops, size = _float(values.get("flops_per_token")), _float(values.get("bytes_per_token"))
        if flops is None or size is None:
            continue
        roof = _float(values.get("roofline_tokens_per_s"))
        rows.append(
            {
                "system": system,
                "MFLOP/token": fmt.number(flops / 1e6, 2),
                "KB/token": fmt.number(size / 1e3, 1),
                "roofline tokens/s": f"{roof:,.0f}" if roof is not None else fmt.DASH,
                "bound": str(values.get("roofline_bound") or fmt.DASH),
                "% of roofline": fmt.pct(_float(values.get("roofline_fraction"))),
                "decode step (ms)": fmt.number(_float(values.get("decode_step_ms")), 2),
                "decode GB/s": fmt.number(_float(values.get("decode_gb_per_s")), 2),
                "% of bandwidth": fmt.pct(_float(values.get("decode_bandwidth_fraction"))),
                "decode GFLOP/s": fmt.number(_float(values.get("decode_gflop_per_s")), 1),
                "% of matmul": fmt.pct(_float(values.get("decode_compute_fraction"))),
            }
        )
    return rows


MODEL_SCHEMA = {
    "model": pl.String, "kind": pl.String, "loops": pl.Int64, "init": pl.String,
    "rank": pl.String, "early_exit": pl.Boolean, "non_embedding_params": pl.Int64,
    "lora_params": pl.Int64, "trained_tokens": pl.Int64, "kd_weight": pl.Float64,
    "suite_average": pl.Float64, "suite_average_stderr": pl.Float64, "held_out_ce": pl.Float64,
    "delta_average_vs_full_size": pl.Float64, "p_vs_full_size": pl.Float64,
    "full_size_reference": pl.String, "delta_average_vs_reduced": pl.Float64,
    "p_vs_reduced": pl.Float64, "reduced_reference": pl.String, "status": pl.String,
}  # fmt: skip
SCORE_SCHEMA = {
    "model": pl.String, "exit_loop": pl.Int64, "task": pl.String, "metric": pl.String,
    "value": pl.Float64, "stderr": pl.Float64, "items": pl.Int64, "in_average": pl.Boolean,
}  # fmt: skip
EXIT_SCHEMA = {
    "model": pl.String, "exit_loop": pl.Int64, "measure": pl.String, "metric": pl.String,
    "value": pl.Float64, "stderr": pl.Float64,
}  # fmt: skip
COMPARISON_SCHEMA = {
    "model": pl.String, "reference": pl.String, "relation": pl.String, "measure": pl.String,
    "delta": pl.Float64, "stderr": pl.Float64, "p": pl.Float64, "n": pl.Int64,
    "test": pl.String, "significant": pl.Boolean,
}  # fmt: skip


def _absent(section: Section, why: str) -> Section:
    """A section of a kind of result this experiment does not make, saying so."""
    section.blocks.append(why)
    return section


def _key(evaluation: Evaluation) -> str:
    return f"{evaluation.name}@{evaluation.exit_loop or 0}"


def _avg(evaluation: Evaluation | None) -> str:
    if evaluation is None:
        return fmt.DASH
    return fmt.pct_pm(evaluation.average, evaluation.average_stderr)


def _value_pm(value: float | None, stderr: float | None, digits: int) -> str:
    """A perplexity (± stderr): fixed digits, or four significant ones where it is huge."""
    if value is None:
        return fmt.DASH

    def show(v: float) -> str:
        return f"{v:.4g}" if abs(v) >= 1e4 else fmt.number(v, digits)

    return show(value) if stderr is None else f"{show(value)} ± {show(stderr)}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return fmt.DASH
    if len(values) == 1:
        return fmt.number(values[0])
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def _common_prefix(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix[: prefix.rfind("_") + 1] if "_" in prefix else ""


def _drop_empty_status(rows: list[dict[str, str]], columns: list[str]) -> list[str]:
    if any(row.get("status") for row in rows):
        return columns
    return [c for c in columns if c != "status"]


def _exit_row(model, loop, measure, metric, value, stderr) -> dict[str, Any]:
    return {
        "model": model,
        "exit_loop": loop,
        "measure": measure,
        "metric": metric,
        "value": value,
        "stderr": stderr,
    }


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _system_order(item: tuple[str, dict[str, Any]]) -> tuple:
    system, values = item
    if system in SYSTEM_ORDER:
        return (SYSTEM_ORDER.index(system), 0.0, "", system)
    if system.startswith("depthwise_exit"):
        threshold = _float(values.get("threshold"))
        return (len(SYSTEM_ORDER), threshold or 0.0, str(values.get("kv_mode")), system)
    return (len(SYSTEM_ORDER) + 1, 0.0, "", system)


def _system_label(system: str, values: dict[str, Any]) -> str:
    if system in SYSTEM_LABELS:
        return SYSTEM_LABELS[system]
    if system.startswith("depthwise_exit"):
        threshold = _float(values.get("threshold"))
        kv = _kv(values) or "?"
        shown = f"{threshold:.3g}" if threshold is not None else "?"
        return f"depth-wise, confidence exit ≥ {shown}, KV of exited tokens: {kv}"
    return system


def _kv(values: dict[str, Any]) -> str | None:
    """How an early-exit system computed exited tokens' deeper KV (kv_mode, or kv_fill)."""
    kv = values.get("kv_mode") or values.get("kv_fill")
    return str(kv) if kv is not None else None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)
