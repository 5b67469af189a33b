"""The evaluation suites (``suites.yaml``): which lm-eval tasks each suite runs and which metric of
each is its headline (paper app. E). Read here only, by the evaluation, the config check and the
workflow; light (yaml alone), since the Snakefile imports it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

SUITES_FILE = Path(__file__).with_name("suites.yaml")


@dataclass(frozen=True)
class SuiteTask:
    """A suite's task: its headline metric and, for hub tasks, how to read it from local files."""

    name: str
    metric: str
    in_average: bool = True
    lm_eval_yaml: str | None = None
    hub_dataset: str | None = None
    splits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    hint: str
    tasks: tuple[SuiteTask, ...]


def load_suites(path: str | os.PathLike[str] = SUITES_FILE) -> dict[str, Suite]:
    raw = yaml.safe_load(Path(path).read_text())
    suites = {}
    for name, spec in raw.items():
        tasks = tuple(
            SuiteTask(
                name=task,
                metric=t["metric"],
                in_average=t.get("in_average", True),
                lm_eval_yaml=t.get("lm_eval_yaml"),
                hub_dataset=t.get("hub_dataset"),
                splits=tuple(t.get("splits", ())),
            )
            for task, t in spec["tasks"].items()
        )
        suites[name] = Suite(name, spec.get("description", ""), spec.get("hint", ""), tasks)
    return suites


def task_names(suites: dict[str, Suite]) -> set[str]:
    """Every suite's name and every task a suite names."""
    return set(suites) | {t.name for suite in suites.values() for t in suite.tasks}
