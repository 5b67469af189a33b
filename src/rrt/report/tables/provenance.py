"""Provenance: where the numbers come from (the config's hash, the git commits, library versions
and hardware of the result files and of the workflow run), counted over the files that say."""

from collections import Counter
from importlib import metadata
from itertools import groupby
from typing import Any

from rrt.report.context import Context
from rrt.report.document import Section
from rrt.report.record import RECORD


def _machine(info: dict[str, Any]) -> str:
    parts = [str(info.get("cpu", "?")), f"{info.get('cores', '?')} cores"]
    if info.get("memory_gb"):
        parts.append(f"{info['memory_gb']} GB")
    if info.get("gpus"):
        parts.append("GPUs: " + ", ".join(map(str, info["gpus"])))
    return ", ".join(parts)


def _counted(values: list[str], what: str) -> str:
    """The one value, or each value with how many ``what`` have it."""
    counter = Counter(values)
    if len(counter) == 1:
        return next(iter(counter))
    return "; ".join(f"{k} ({n} {what})" for k, n in sorted(counter.items()))


def section(ctx: Context) -> Section:
    results = ctx.results
    record = results.record or {}
    workflow = record.get("workflow") or {}
    evaluations = [e.report for e in results.evaluations.values()]
    trained = [t.provenance for t in results.trainings.values() if t.provenance]
    files = [(e.git_commit, e.versions) for e in evaluations]
    files += [(p.get("git_commit"), p.get("versions") or {}) for p in trained]
    versions = sorted((lib, str(v)) for _, libraries in files for lib, v in libraries.items())
    devices = [
        f"{e.model.device or '?'}, {e.model.dtype or '?'}, "
        f"{e.run.get('torch_threads') or '?'} torch threads"
        for e in evaluations
    ]
    root = f"{results.root.parent.name}/{results.root.name}"
    config = (
        f"sha256 `{record['config_sha256']}` (the resolved config is in `{root}/{RECORD}`)"
        if record
        else f"unknown: `{root}/{RECORD}` (written when the workflow starts) is missing"
    )
    machine = _machine(workflow["hardware"]) if workflow.get("hardware") else "not recorded"
    by_library = groupby(versions, key=lambda pair: pair[0])
    libraries = "; ".join(f"{lib} {_counted([v for _, v in p], 'files')}" for lib, p in by_library)
    hardware = [_machine(p["hardware"]) for p in trained if p.get("hardware")]
    hosts = [str(p["host"]) for p in trained if p.get("host")]
    built = ", ".join(f"{lib} {metadata.version(lib)}" for lib in ("polars", "matplotlib"))
    items = [
        f"Experiment: **{results.experiment}**, results read from `{root}/` only.",
        f"Config: {config}",
        f"Git commit of the results: "
        f"{_counted([str(c or 'not recorded') for c, _ in files], 'result files')}",
        f"Git commit of the workflow run: {workflow.get('git_commit') or 'not recorded'}",
        f"Library versions: {libraries}",
        f"Hardware of the workflow run: {machine}",
        f"Hardware of the training jobs: {_counted(hardware, 'models') or 'not recorded'}",
        f"Hosts of the training jobs: {_counted(hosts, 'models') or 'not recorded'}",
        f"Evaluations ran on: {_counted(devices, 'evaluations') or 'no evaluations'}",
        f"Report built with: {built}",
    ]
    return Section("provenance", "Provenance", [items])
