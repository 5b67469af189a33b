"""The one home of every default: the experiment schema, ``config.schema.yaml``.

Why one file: a default written in a dataclass, a CLI flag, a config file and a Snakefile drifts
apart. Here the schema holds each setting's type, bounds, default and description, and
everything else is derived from it:

- the stage dataclasses (:func:`section`): their fields must be the section's properties, their
  defaults are the schema's, and constructing one validates it against the schema;
- every subcommand's options (:func:`add_arguments`): one flag per field, typed, with the
  schema's description as help;
- the workflow: the Snakefile fills a config's defaults and checks it with :func:`resolve`
  (one line naming the bad key and what is allowed) before any job runs, then hands the same
  schema to Snakemake's ``validate``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from rrt.errors import UserError
from rrt.evaluation.suites import load_suites, task_names
from rrt.io import read_json
from rrt.model.families import FAMILIES, supported
from rrt.model.shape import check_loops

SCHEMA_FILE = Path(__file__).with_name("config.schema.yaml")
SECTION = "__schema_section__"


class ConfigError(UserError):
    """A configuration value the schema (or a check across values) does not allow."""


@cache
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_FILE.read_text())


def _deref(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` with a local ``$ref`` replaced by its target (the node's own keys win)."""
    while "$ref" in node:
        target: Any = schema()
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def node(path: str) -> dict[str, Any]:
    """The schema of the setting at dotted ``path`` ("" is the whole config)."""
    current = schema()
    for part in filter(None, path.split(".")):
        try:
            current = _deref(current)["properties"][part]
        except KeyError:
            raise KeyError(f"the config schema has no setting {path!r}") from None
    return _deref(current)


def properties(path: str) -> dict[str, dict[str, Any]]:
    """The settings of the section at ``path``, each resolved."""
    return {name: _deref(spec) for name, spec in node(path).get("properties", {}).items()}


def command_settings(path: str) -> dict[str, dict[str, Any]]:
    """The settings of the section at ``path`` that a command takes: all but those marked
    ``x-workflow`` (what only the workflow reads, such as evaluate.at_init)."""
    return {name: spec for name, spec in properties(path).items() if not spec.get("x-workflow")}


def command_values(path: str, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` (the section at ``path``) that its command takes."""
    settings = command_settings(path)
    return {k: v for k, v in values.items() if k in settings}


def defaults(path: str) -> dict[str, Any]:
    """Every default of the section at ``path``, nested sections included."""
    return resolve_defaults({}, path)


def resolve_defaults(values: dict[str, Any], path: str) -> dict[str, Any]:
    """``values`` of the section at ``path`` with the schema's defaults filled in (a copy)."""
    values = copy.deepcopy(values)
    _fill(values, node(path))
    return values


def _fill(value: Any, spec: dict[str, Any]) -> None:
    """Fill defaults in place as Snakemake's ``validate(set_default=True)`` does: a default counts
    where it is written, not through a ``$ref`` (so an override that refers to the train recipe's
    setting inherits no default of its own)."""
    spec = _deref(spec)
    if isinstance(value, dict):
        for name, sub in spec.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill(value[name], sub)
    elif isinstance(value, list) and isinstance(spec.get("items"), dict):
        for item in value:
            _fill(item, spec["items"])


# --- validation --------------------------------------------------------------------------------


def validate(values: Any, path: str = "") -> None:
    """Check ``values`` against the setting at ``path``; the first error as one line."""
    import jsonschema

    target = dict(node(path))
    target["$defs"] = schema()["$defs"]
    validator = jsonschema.Draft202012Validator(target)
    error = jsonschema.exceptions.best_match(validator.iter_errors(values))
    if error is not None:
        raise ConfigError(_one_line(error, path))


def _one_line(error: Any, root: str) -> str:
    """The key and what is allowed, e.g. ``relaxed.ranks.0: -1 is not allowed; ...``."""
    keys = [root, *(str(p) for p in error.absolute_path)]
    key = ".".join(k for k in keys if k) or "the config"
    spec = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"in {key}" if key != "the config" else "at the top level"
        return f"unknown key {', '.join(map(repr, unknown))} {where}; allowed: {allowed}"
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{key}: {error.instance!r} is not allowed; choose one of {allowed}"
    if error.validator == "pattern" and "x-allowed" in spec:  # said in words, not as a regex
        return f"{key}: {error.instance!r} is not allowed; allowed: {spec['x-allowed']}"
    if error.validator in ("oneOf", "anyOf"):
        hint = _deref(spec).get("description") or "see config.schema.yaml"
        return f"{key}: {error.instance!r} is not allowed ({hint})"
    if error.validator == "type":
        kinds = error.validator_value
        kinds = " or ".join(kinds) if isinstance(kinds, list) else kinds
        return f"{key}: {error.instance!r} is not of type {kinds}"
    return f"{key}: {error.message}"


# --- dataclasses --------------------------------------------------------------------------------


def section(path: str) -> Callable[[type], type]:
    """Make ``cls`` the dataclass of the section at ``path``: its annotated fields must be exactly
    the section's settings, their defaults are the schema's, and a new instance is validated."""

    def wrap(cls: type) -> type:
        settings = command_settings(path)
        fields = list(cls.__dict__.get("__annotations__", {}))
        if set(fields) != set(settings):
            raise TypeError(
                f"{cls.__name__} fields {sorted(fields)} are not the settings of {path!r} in "
                f"{SCHEMA_FILE.name}: {sorted(settings)}"
            )
        for name in fields:
            default = settings[name].get("default")
            if isinstance(default, list | dict):
                value = dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d))
            else:
                value = default
            setattr(cls, name, value)
        own_post_init = cls.__dict__.get("__post_init__")

        def __post_init__(self: Any) -> None:
            validate(dataclasses.asdict(self), path)
            if own_post_init is not None:
                own_post_init(self)

        cls.__post_init__ = __post_init__
        setattr(cls, SECTION, path)
        return dataclasses.dataclass(cls)

    return wrap


def from_values(cls: type, values: dict[str, Any]) -> Any:
    """An instance of a :func:`section` dataclass from a config mapping (unknown keys refused)."""
    path = getattr(cls, SECTION)
    validate(values, path)
    return cls(**command_values(path, values))


# --- command-line options ----------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def comma_list(text: str) -> list[str]:
    """A list on the command line, ``a,b``: how every list option of rrt's commands but paths
    (which take separate words) is given, and split here only."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _parser(spec: dict[str, Any], flag: str) -> Callable[[str], Any]:
    kinds = spec.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]

    def parse(text: str) -> Any:
        if "null" in kinds and text.lower() in ("none", "null"):
            return None
        if "array" in kinds:
            item = _parser(spec.get("items", {}), flag)
            return [item(part) for part in comma_list(text)]
        for kind, convert in (("integer", int), ("number", float)):
            if kind in kinds:
                try:
                    return convert(text)
                except ValueError:
                    continue
        if "string" in kinds or not kinds:
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is not of type {' or '.join(kinds)}")

    parse.__name__ = flag
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any = None,
    skip: tuple[str, ...] = (),
    title: str | None = None,
) -> None:
    """One ``--field-name`` option per field of the :func:`section` dataclass ``cls``: typed and
    bounded by the schema, defaulted from ``defaults`` (an instance; else the schema's)."""
    path = getattr(cls, SECTION)
    settings = properties(path)
    defaults = defaults if defaults is not None else cls()
    group = parser.add_argument_group(
        title or path, (_deref(node(path)).get("description") or "").split(";")[0]
    )
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        spec = settings[field.name]
        add_option(group, field.name, spec, getattr(defaults, field.name))


def add_option(group: Any, name: str, spec: dict[str, Any], default: Any) -> None:
    """One option from the schema of one setting."""
    flag = _flag(name)
    text = " ".join((spec.get("description") or "").split())
    if spec.get("type") == "boolean":
        group.add_argument(
            flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=text
        )
        return
    kwargs: dict[str, Any] = {"dest": name, "default": default}
    if "enum" in spec:
        kwargs["choices"] = spec["enum"]
    else:
        kwargs["type"] = _parser(spec, flag)
        kwargs["metavar"] = name.upper()
    group.add_argument(flag, help=f"{text} (default: %(default)s)", **kwargs)


def add_setting(parser: Any, path: str) -> None:
    """An option for one setting (``threads``, ``device``) with its schema default."""
    name = path.rsplit(".", 1)[-1]
    spec = node(path)
    add_option(parser, name, spec, spec.get("default"))


def set_threads(threads: int) -> None:
    """torch's CPU threads (0 leaves torch's default). Two torch processes of two threads each
    starve one another on 2 cores: every workflow job says how many it takes."""
    validate(threads, "threads")
    if threads:
        import torch

        torch.set_num_threads(threads)


def from_arguments(cls: type, args: argparse.Namespace) -> Any:
    """The :func:`section` dataclass ``cls`` from parsed options (validated on creation)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def as_flags(values: dict[str, Any]) -> str:
    """``{"kd_weight": 0.5, "early_exit": True}`` as ``--kd-weight 0.5 --early-exit``: how the
    workflow passes a config section to a subcommand (lists comma-separated, None left out)."""
    parts: list[str] = []
    for name, value in values.items():
        if isinstance(value, bool):
            parts.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, list):
            parts += [_flag(name), shlex.quote(",".join(map(str, value)))]
        elif value is not None and not isinstance(value, dict):
            parts += [_flag(name), shlex.quote(str(value))]
    return " ".join(parts)


def walk(values: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, leaf value) of a nested config."""
    if isinstance(values, dict):
        for key, value in values.items():
            yield from walk(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), values


# --- a whole experiment config (the Snakefile's) ----------------------------------------------


def resolve(values: dict[str, Any]) -> dict[str, Any]:
    """Check an experiment config and fill in its defaults, in place (Snakemake's ``config``).

    Fails with one line naming the key and what is allowed, before any job runs: unknown keys,
    wrong types and bounds (the schema), then what the schema cannot say (:func:`check`).
    """
    _coerce(values, schema())
    validate(values)
    filled = resolve_defaults(values, "")
    validate(filled)
    check(filled)
    values.clear()
    values.update(filled)
    return values


def _coerce(value: Any, spec: dict[str, Any]) -> Any:
    """Snakemake reads the nested values of ``--config key='{...}'`` as strings (YAML's base
    loader): each string where the schema allows a number or a boolean, and no string, becomes
    what YAML reads it as (``'4'`` -> 4), in place. Other values are left to validation."""
    spec = _deref(spec)
    if isinstance(value, dict):
        for name, sub in spec.get("properties", {}).items():
            if name in value:
                value[name] = _coerce(value[name], sub)
    elif isinstance(value, list) and isinstance(spec.get("items"), dict):
        value[:] = [_coerce(v, spec["items"]) for v in value]
    elif isinstance(value, str):
        branches = [spec, *map(_deref, spec.get("oneOf", []) + spec.get("anyOf", []))]
        types = set()
        for b in branches:
            kind = b.get("type", [])
            types |= {kind} if isinstance(kind, str) else set(kind)
        if "string" not in types and types & {"integer", "number", "boolean"}:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if isinstance(parsed, int | float | bool) else value
    return value


# GGUF's architecture names -> the model_type transformers gives what it reads
GGUF_FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma2": "gemma2",
                 "gemma3": "gemma3_text"}  # fmt: skip


def check_experiment(values: dict[str, Any]) -> None:
    """:func:`resolve` for the Snakefile: a bad value exits with one line, no traceback."""
    try:
        resolve(values)
    except ConfigError as err:
        raise SystemExit(f"rrt: bad configuration: {err}") from None


def source_layers(values: dict[str, Any]) -> int:
    """The source model's decoder layers, from the config or the local model's config.json."""
    source = values["source"]
    if source["kind"] == "embedded":
        return source["embedded"]["layers"]
    if source["kind"] == "local":
        if not source["path"]:
            raise ConfigError("source.path: a local source needs the path of its model folder")
        config_file = Path(source["path"]) / "config.json"
        if not config_file.is_file():
            raise ConfigError(f"source.path: {source['path']} holds no model (no config.json)")
        data = read_json(config_file, f"source.path: {config_file}", ConfigError)
        model_type = data.get("model_type") if isinstance(data, dict) else None
        if model_type not in FAMILIES:
            raise ConfigError(
                f"source.path: {config_file} is a {model_type!r} model; supported: {supported()}"
            )
        if not isinstance(data.get("num_hidden_layers"), int):
            raise ConfigError(f"source.path: {config_file} names no num_hidden_layers")
        return data["num_hidden_layers"]
    if source["kind"] == "gguf":
        if not source["path"]:
            raise ConfigError("source.path: a gguf source needs the path of its .gguf file")
        from rrt.file_sources import read_header

        try:
            header = read_header(source["path"])
        except UserError as err:
            raise ConfigError(f"source.path: {err}") from None
        if GGUF_FAMILIES.get(header["architecture"]) not in FAMILIES:
            raise ConfigError(
                f"source.path: {source['path']} holds a {header['architecture']!r} model; "
                f"supported: {supported()}"
            )
        return int(header["layers"])
    needs = {
        "hub": (("repo", "revision", "layers"), "the model id, a pinned revision and its layers"),
        "pip": (
            ("requirement", "file", "sha256", "layers"),
            "the pinned package, the file in its wheel, the file's sha256 and its layers",
        ),
    }[source["kind"]]
    missing = [key for key in needs[0] if not source[key]]
    if missing:
        raise ConfigError(
            f"source: a {source['kind']} source needs "
            f"{', '.join(f'source.{k}' for k in missing)} ({needs[1]})"
        )
    return source["layers"]


def check(values: dict[str, Any]) -> None:
    """What a schema cannot say: loops that divide the source's layers, early-exit models that
    the experiment makes, baselines that fit the source, task names lm-eval knows."""
    layers = source_layers(values)
    looped = [
        *(("recursive.loops", b) for b in values["recursive"]["loops"]),
        *(("relaxed.loops", b) for b in values["relaxed"]["loops"]),
        *(("baselines.reduced_loops", b) for b in values["baselines"]["reduced_loops"]),
        *(("early_exit.models", m["loops"]) for m in values["early_exit"]["models"]),
    ]
    for key, loops in looped:
        try:
            check_loops(layers, loops, key)
        except UserError as err:
            raise ConfigError(str(err)) from None
    for model in values["early_exit"]["models"]:
        loops, init, rank = model["loops"], model["init"], model["rank"]
        kind = "recursive" if rank == 0 else "relaxed"
        made = loops in values[kind]["loops"] and init in values[kind]["inits"]
        if kind == "relaxed":
            made = made and rank in values["relaxed"]["ranks"]
        if not made:
            raise ConfigError(
                f"early_exit.models: {model} is not a model this experiment uptrains; add its "
                f"loops, init{' and rank' if rank else ''} to {kind}"
            )
    if (
        "source" in values["baselines"]["reduced_budgets"]
        and values["source"]["kind"] != "embedded"
    ):
        raise ConfigError(
            "baselines.reduced_budgets: 'source' (the source's own pretraining tokens) needs the "
            "embedded source; allowed here: uptrain"
        )
    corpus = values["corpus_source"]
    needs = {
        "local": ("path",),
        "hub": ("repo", "revision"),
        "files": ("paths",),
        "pip": ("requirement", "sha256", "include"),
    }.get(corpus["kind"], ())
    missing = [f"corpus_source.{key}" for key in needs if not corpus[key]]
    if missing:
        raise ConfigError(f"corpus_source: a {corpus['kind']} corpus needs {', '.join(missing)}")
    for path in corpus["paths"] if corpus["kind"] == "files" else []:
        if not Path(path).expanduser().exists():
            raise ConfigError(f"corpus_source.paths: {path} does not exist")
    check_tasks(values["evaluate"]["tasks"])
    embedded_tasks = {"embedded", *(t.name for t in load_suites()["embedded"].tasks)}
    asked = set(values["evaluate"]["tasks"])
    if asked & embedded_tasks and corpus["kind"] != "generated":
        raise ConfigError(
            "evaluate.tasks: the embedded tasks are cut from the generated corpus's stories; "
            "with corpus_source.kind "
            f"{corpus['kind']!r} evaluate the text suite (cut from any corpus), the paper suite "
            "or lm-eval tasks instead"
        )


def check_tasks(names: list[str]) -> None:
    """Every name is a suite, an embedded task, or a task in lm-eval's index."""
    suites = load_suites()
    known = task_names(suites)
    if not names:
        raise ConfigError("evaluate.tasks: no task named; give suites (embedded, paper) or tasks")
    unknown = [n for n in names if n not in known]
    if unknown:
        from lm_eval.tasks import TaskManager  # its index takes ~10 s: only for other names

        index = set(TaskManager().all_tasks)
        unknown = [n for n in unknown if n not in index]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        raise ConfigError(
            f"evaluate.tasks: unknown task {unknown[0]!r}; suites: {', '.join(suites)}"
            + (f"; close: {', '.join(close)}" if close else "")
        )
