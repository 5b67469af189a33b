"""Few-shot evaluation through lm-eval (paper app. E) of every model the workflow makes.

The model is evaluated in memory through lm-eval's ``HFLM``, so the source, reduced-size,
converted, relaxed and uptrained models all take the same path. One JSON at a fixed path holds
per-task metrics, each suite's headline metric and average, and everything needed to reproduce
the run; per-sample log-likelihoods go beside it as JSONL for pairwise comparison of models.
Suites are data (``suites.yaml``). ``--exit-loop b`` evaluates a recursive model as if every
token exited after loop b (sec. 3.7), which gives the per-depth accuracy curve.

lm-eval is imported inside functions: it takes seconds to import and ``rrt --help`` must not.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rrt import store
from rrt.config import section
from rrt.contracts import EvaluationReport
from rrt.errors import UserError
from rrt.evaluation.suites import SUITES_FILE, Suite, SuiteTask, load_suites
from rrt.io import atomic_path, write_json
from rrt.model.sizes import count_parameters

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# lm-eval's own seed defaults (simple_evaluate), kept unless --seed sets all four.
DEFAULT_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}

# Headline of a task that no suite names: the paper's rule (acc_norm where the task has it, else
# acc), then the perplexities of loglikelihood_rolling tasks.
HEADLINE_PREFERENCE = ["acc_norm", "acc", "word_perplexity", "perplexity", "exact_match"]

# Split file stem -> the lm-eval config key that names it.
SPLIT_KEYS = {"train": "training_split", "validation": "validation_split", "test": "test_split"}


@section("evaluate")
class EvaluateConfig:
    """How a model is evaluated (``evaluate`` in the config schema)."""

    tasks: list[str]
    paper_data: str | None
    limit: int | None
    num_fewshot: int | None
    batch_size: int | str
    cpu_batch_size: int
    bootstrap_iters: int
    seed: int | None


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: the report (one JSON) and per-sample rows (JSONL)."""

    report: dict[str, Any]
    samples: list[dict[str, Any]] = field(default_factory=list)


def own_data(task_dir: str | os.PathLike[str], into: Path) -> Path:
    """``task_dir``'s task YAMLs, written into ``into``, each reading the data files that lie
    in ``task_dir`` itself: the YAMLs hold absolute paths (lm-eval resolves relative ones
    against the working directory), so a copied task folder would read the original's data."""
    task_dir = Path(task_dir).resolve()
    into.mkdir(parents=True)
    for path in sorted(task_dir.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        files = (
            (spec.get("dataset_kwargs") or {}).get("data_files") if isinstance(spec, dict) else None
        )
        if isinstance(files, dict):
            for split, value in files.items():
                if isinstance(value, str):
                    files[split] = str(_here(Path(value), task_dir))
            (into / path.name).write_text(yaml.safe_dump(spec, sort_keys=False))
        else:
            shutil.copyfile(path, into / path.name)
    return into


def _here(path: Path, folder: Path) -> Path:
    """``path``, or the file at the same place under ``folder`` (``data/x.jsonl`` of a copied
    folder) when ``path`` lies outside it."""
    if not path.is_absolute() or path.is_relative_to(folder):
        return path
    for k in range(1, len(path.parts)):
        candidate = folder.joinpath(*path.parts[-k:])
        if candidate.is_file():
            return candidate
    return path


def expand_tasks(names: Sequence[str], suites: dict[str, Suite]) -> list[str]:
    """Suite names become their tasks, other names are lm-eval tasks; order kept, no repeats."""
    tasks: list[str] = []
    for name in names:
        for task in [t.name for t in suites[name].tasks] if name in suites else [name]:
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise UserError(f"--tasks names no task; give task names or suites {sorted(suites)}")
    return tasks


def _suite_task(name: str, suites: dict[str, Suite]) -> tuple[Suite, SuiteTask] | None:
    for suite in suites.values():
        for task in suite.tasks:
            if task.name == name:
                return suite, task
    return None


# --- the paper's task definitions over local files ------------------------------------------


def write_paper_overrides(
    paper_data: str | os.PathLike[str],
    tasks: Sequence[str],
    out_dir: str | os.PathLike[str],
    suites: dict[str, Suite] | None = None,
) -> list[str]:
    """For each requested task with a shipped lm-eval definition, write a YAML that includes it
    and reads ``paper_data/<task>/<split>.jsonl`` instead of the hub; return the tasks covered.

    Data paths are absolute because lm-eval resolves relative ones against the working directory.
    """
    import lm_eval.tasks

    suites = load_suites() if suites is None else suites
    shipped = Path(lm_eval.tasks.__file__).parent
    root = Path(paper_data).resolve()
    if not root.is_dir():
        raise UserError(f"--paper-data {paper_data} is not a directory")
    covered = []
    for name in tasks:
        found = _suite_task(name, suites)
        if found is None or found[1].lm_eval_yaml is None:
            continue
        task = found[1]
        files = {s: root / name / f"{s}.jsonl" for s in task.splits}
        eval_split = task.splits[-1]
        if not files[eval_split].is_file():
            raise UserError(
                f"--paper-data {paper_data} lacks {name}/{eval_split}.jsonl ({name} evaluates on "
                f"its {eval_split} split; rows in the schema of hub dataset {task.hub_dataset})"
            )
        override = {
            "include": str(shipped / task.lm_eval_yaml),
            "task": name,
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {
                "data_files": {s: str(p) for s, p in files.items() if p.is_file()},
            },
        }
        for split, path in files.items():
            override[SPLIT_KEYS[split]] = split if path.is_file() else None
        (Path(out_dir) / f"{name}.yaml").write_text(yaml.safe_dump(override, sort_keys=False))
        covered.append(name)
    return covered


# --- finding and loading tasks ---------------------------------------------------------------


@cache
def _default_task_manager() -> TaskManager:
    """The harness's own task index: ~10-20 s to build, so built once and only when needed."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _offline_hint(name: str, suites: dict[str, Suite]) -> str:
    found = _suite_task(name, suites)
    if found is None:
        return "provide the data as local files and a task YAML with dataset_path: json"
    suite, task = found
    if task.lm_eval_yaml is None:
        return suite.hint
    split = task.splits[-1]
    return f"{suite.hint} (here DIR/{name}/{split}.jsonl in the schema of {task.hub_dataset})"


def load_tasks(
    names: Sequence[str], include_paths: Sequence[Path], suites: dict[str, Suite]
) -> dict[str, Task]:
    """Build each named task (groups and tags expand to their tasks), failing with one clear line.

    Names are looked up in the local include paths first (instant); the harness's default index
    is built only for names not found there.
    """
    from lm_eval.tasks import TaskManager

    local = (
        TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False)
        if include_paths
        else None
    )
    managers: dict[str, TaskManager] = {}
    for name in names:
        if local is not None and name in local.all_tasks:
            managers[name] = local
            continue
        found = _suite_task(name, suites)
        if found is not None and found[1].lm_eval_yaml is None:
            suite = found[0]
            where = ", ".join(map(str, include_paths)) or "no --task-dir"
            raise UserError(
                f"task {name!r} of suite {suite.name!r} is not in ({where}); {suite.hint}"
            )
        default = _default_task_manager()
        if name not in default.all_tasks:
            known = set(default.all_tasks) | set(suites) | set(local.all_tasks if local else ())
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            raise UserError(
                f"unknown task {name!r}; close matches: {', '.join(close) or 'none'}; "
                f"suites: {', '.join(suites)}"
            )
        managers[name] = default

    tasks: dict[str, Task] = {}
    for name in names:
        manager = managers[name]
        try:
            loaded = manager.load([name])
        except ConnectionError as err:
            cfg = manager.task_index[name].cfg or {}
            dataset = cfg.get("dataset_path", "?")
            raise UserError(
                f"task {name!r} needs dataset {dataset!r}, which is not reachable offline and "
                f"not in the local datasets cache; {_offline_hint(name, suites)}"
            ) from err
        except FileNotFoundError as err:
            raise UserError(f"task {name!r}: data file not found: {err}") from err
        tasks.update(loaded["tasks"])
    return tasks


# --- the model -------------------------------------------------------------------------------


def check_exit_loop(model: PreTrainedModel, exit_loop: int | None) -> None:
    if exit_loop is None:
        return
    num_loops = getattr(model.config, "num_loops", None)
    if num_loops is None or not hasattr(model, "exiting_after"):
        raise UserError(
            f"--exit-loop {exit_loop} needs a recursive model (model_type 'rrt' with num_loops); "
            f"this one is model_type {model.config.model_type!r}"
        )
    if not 1 <= exit_loop <= num_loops:
        raise UserError(f"--exit-loop {exit_loop} is outside 1..{num_loops} (the model's loops)")


def exit_after_loop(model: PreTrainedModel, exit_loop: int | None) -> PreTrainedModel:
    """The model lm-eval runs: ``model``, or for ``exit_loop`` b the same weights with every
    forward through the first b loops, then the final norm and head. HFLM calls
    ``model(input_ids)`` itself, so the exit is fixed in that model's config, not per call;
    ``model`` is left as it was."""
    if exit_loop is None:
        return model
    check_exit_loop(model, exit_loop)
    return model.exiting_after(exit_loop)


# --- the run ---------------------------------------------------------------------------------


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    *,
    task_dir: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    paper_data: str | os.PathLike[str] | None = None,
    num_fewshot: int | None = EvaluateConfig.num_fewshot,
    limit: int | None = EvaluateConfig.limit,
    batch_size: int | str = EvaluateConfig.batch_size,
    cpu_batch_size: int = EvaluateConfig.cpu_batch_size,
    max_batch_size: int = 64,
    exit_loop: int | None = None,
    seed: int | None = EvaluateConfig.seed,
    bootstrap_iters: int = EvaluateConfig.bootstrap_iters,
    suites_file: str | os.PathLike[str] = SUITES_FILE,
) -> Evaluation:
    """Evaluate ``model`` on task or suite names with ``lm_eval.simple_evaluate``.

    ``task_dir`` is one or more lm-eval include paths (``rrt tasks``: the embedded or text
    tasks); ``paper_data`` points the paper's own task definitions at local JSONL (see
    :func:`write_paper_overrides`).
    """
    import lm_eval
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    suites = load_suites(suites_file)
    names = expand_tasks(tasks, suites)
    EvaluateConfig(  # the schema's checks of every setting
        list(tasks), None if paper_data is None else str(paper_data), limit, num_fewshot,
        batch_size, cpu_batch_size, bootstrap_iters, seed,
    )  # fmt: skip
    include_paths = []
    task_dirs = [task_dir] if isinstance(task_dir, str | os.PathLike) else list(task_dir or [])
    for folder in task_dirs:
        if not Path(folder).is_dir():
            raise UserError(f"--task-dir {folder} is not a directory")
    seeds = dict.fromkeys(DEFAULT_SEEDS, seed) if seed is not None else dict(DEFAULT_SEEDS)
    check_exit_loop(model, exit_loop)

    with tempfile.TemporaryDirectory(prefix="rrt-paper-tasks-") as overrides:
        for i, folder in enumerate(task_dirs):
            include_paths.append(own_data(folder, Path(overrides) / f"local{i}"))
        if paper_data is not None and write_paper_overrides(paper_data, names, overrides, suites):
            include_paths.append(Path(overrides))
        task_objs = load_tasks(names, include_paths, suites)
        used = cpu_batch_size if batch_size == "auto" and model.device.type == "cpu" else batch_size
        lm = HFLM(
            backend="causal",  # every model the workflow makes is a causal LM, rrt included
            pretrained=exit_after_loop(model, exit_loop),
            tokenizer=tokenizer,
            batch_size=used,
            max_batch_size=max_batch_size,
        )
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(task_objs.values()),
            # Tasks come built; an empty manager keeps lm-eval from indexing its defaults.
            task_manager=TaskManager(include_defaults=False),
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=True,
            random_seed=seeds["random"],
            numpy_random_seed=seeds["numpy"],
            torch_random_seed=seeds["torch"],
            fewshot_random_seed=seeds["fewshot"],
        )
        elapsed = time.perf_counter() - start

    headlines = {name: _headline_metric(name, results, suites) for name in task_objs}
    report = {
        "tasks": {
            name: _task_report(name, results, headlines[name], task_objs[name])
            for name in task_objs
        },
        "suites": _suite_averages(tasks, task_objs, results, headlines, suites),
        "model": {
            "name_or_path": getattr(model, "name_or_path", None),
            "tokenizer": getattr(tokenizer, "name_or_path", None),
            "model_type": model.config.model_type,
            "class": type(model).__name__,
            "dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
            "num_loops": getattr(model.config, "num_loops", None),
            "exit_loop": exit_loop,
            "parameters": count_parameters(model),
        },
        "run": {
            "requested": list(tasks),
            "task_dir": ", ".join(map(str, task_dirs)) or None,
            "paper_data": str(paper_data) if paper_data is not None else None,
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "batch_sizes": results["config"].get("batch_sizes") or [used],
            "max_length": lm.max_length,
            "torch_threads": torch.get_num_threads(),
            "bootstrap_iters": bootstrap_iters,
            "seeds": seeds,
            "elapsed_s": round(elapsed, 3),
        },
        "versions": store.versions(),
        "git_commit": store.git_commit(),
    }
    samples = [
        row
        for name, task in task_objs.items()
        for row in _sample_rows(name, task, results["samples"].get(name, []), headlines[name])
    ]
    return Evaluation(report=report, samples=samples)


def _metric_key(key: str) -> str:
    """lm-eval keys metrics as 'name,filter'; the default filter 'none' is dropped."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else key


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _headline_metric(name: str, results: dict[str, Any], suites: dict[str, Suite]) -> str:
    found = _suite_task(name, suites)
    if found is not None:
        return found[1].metric
    metrics = list(results["higher_is_better"].get(name, {}))
    for metric in HEADLINE_PREFERENCE:
        if metric in metrics:
            return metric
    return metrics[0] if metrics else ""


def _task_report(name: str, results: dict[str, Any], headline: str, task: Task) -> dict[str, Any]:
    raw = results["results"][name]
    metrics, stderr = {}, {}
    for key, value in raw.items():
        if "," not in key:
            continue
        if "_stderr," in key:
            stderr[_metric_key(key.replace("_stderr,", ",", 1))] = _number(value)
        else:
            metrics[_metric_key(key)] = _number(value)
    config = results["configs"][name]
    return {
        "metrics": metrics,
        "stderr": stderr,
        "higher_is_better": results["higher_is_better"].get(name, {}),
        "headline": {"metric": headline, "value": metrics.get(headline)},
        "num_fewshot": results["n-shot"][name],
        "samples": results["n-samples"][name],
        "version": results["versions"][name],
        "output_type": task.OUTPUT_TYPE,
        "dataset": {
            "path": config.get("dataset_path"),
            "name": config.get("dataset_name"),
            "kwargs": config.get("dataset_kwargs"),
        },
    }


def _suite_averages(
    requested: Sequence[str],
    task_objs: dict[str, Task],
    results: dict[str, Any],
    headlines: dict[str, str],
    suites: dict[str, Suite],
) -> dict[str, Any]:
    """The mean headline over each requested suite's averaged tasks (the paper's '7-task avg')."""
    out = {}
    for suite in (suites[n] for n in requested if n in suites):
        averaged = [t.name for t in suite.tasks if t.in_average and t.name in task_objs]
        values = [_number(results["results"][t].get(f"{headlines[t]},none")) for t in averaged]
        out[suite.name] = {
            "tasks": {t.name: t.metric for t in suite.tasks},
            "averaged": averaged,
            "average": sum(values) / len(values) if values and None not in values else None,
        }
    return out


def _sample_rows(
    name: str, task: Task, logged: list[dict[str, Any]], headline: str
) -> Iterator[dict[str, Any]]:
    """One JSON-safe row per document: what two models' runs are compared on, pairwise."""
    for sample in logged:
        if sample.get("filter", "none") != "none":
            continue
        resps = sample["filtered_resps"]
        row: dict[str, Any] = {
            "task": name,
            "doc_id": sample["doc_id"],
            "doc_hash": sample["doc_hash"],
            "prompt_hash": sample["prompt_hash"],
            "target": sample["target"],
        }
        if task.OUTPUT_TYPE == "loglikelihood_rolling":
            row["loglikelihoods"] = [float(r) for r in resps]
        else:
            row["loglikelihoods"] = [float(r[0]) for r in resps]
            row["is_greedy"] = [bool(r[1]) for r in resps]
        if task.OUTPUT_TYPE == "multiple_choice":
            choices = task.doc_to_choice(sample["doc"])
            lls = row["loglikelihoods"][: len(choices)]
            row["choices"] = choices
            row["pred"] = max(range(len(lls)), key=lls.__getitem__)
            row["pred_norm"] = max(range(len(lls)), key=lambda i: lls[i] / len(choices[i]))
        value = sample.get(headline)
        row["correct"] = bool(value) if isinstance(value, int | float) else None
        row["metrics"] = {m: sample[m] for m in sample["metrics"]}
        yield json.loads(json.dumps(row, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_evaluation(evaluation: Evaluation, out: str | os.PathLike[str]) -> Path:
    """Write the report to ``out`` and the samples to ``<out stem>.samples.jsonl``, atomically."""
    out = Path(out)
    samples_path = out.with_name(out.name.removesuffix(".json") + ".samples.jsonl")
    evaluation.report["samples_file"] = samples_path.name
    with atomic_path(samples_path) as tmp, tmp.open("w") as fh:
        for row in evaluation.samples:
            fh.write(json.dumps(row) + "\n")
    EvaluationReport.from_dict(evaluation.report, str(out), strict=True)  # the readers' contract
    write_json(out, evaluation.report)
    return samples_path


# --- CLI -------------------------------------------------------------------------------------
