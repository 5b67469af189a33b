"""Software environments per kind of rule (envs/*.yaml, for `snakemake --sdm conda`): their pins
are pyproject.toml's, every rule names the one of its kind, and each, built as a plain venv from
its own pip section and nothing else, runs the commands of every rule that names it: for real,
the smoke run's quickest recorded job of each rrt command it ran there, and `--help` for the
commands the smoke config does not run. Conda
itself is not needed (nor reachable here): what could be missing from an environment is a
Python package, and a venv finds that as surely."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).parents[2]
ENVS = REPO / "envs"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
EXTRAS = PROJECT["optional-dependencies"]
KINDS = sorted(p.stem for p in ENVS.glob("*.yaml"))


def _spec(kind: str) -> dict:
    return yaml.safe_load((ENVS / f"{kind}.yaml").read_text())


def _pins(kind: str) -> list[str]:
    return next(d["pip"] for d in _spec(kind)["dependencies"] if isinstance(d, dict))


def _python(kind: str) -> str:
    """The Python version the environment names (python=3.11)."""
    named = [d for d in _spec(kind)["dependencies"] if str(d).startswith("python=")]
    return named[0].split("=", 1)[1]


@dataclass(frozen=True)
class Rule:
    name: str
    env: str  # the kind: envs/<env>.yaml
    command: tuple[str, ...]  # the rrt command words, e.g. ("download", "corpus")


# `python -m rrt download corpus ...`, after variables (OMP_WAIT_POLICY=PASSIVE) or torchrun's
COMMAND = r'"(?:\w+=\S+ )*(?:python|torchrun .*?) -m rrt ([a-z][a-z-]*(?: [a-z][a-z-]*)?)'


def _rules() -> list[Rule]:
    """Every rule of the workflow, its conda environment and the rrt command its shell runs."""
    rules = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        blocks = re.split(r"^\s*rule (\w+):\n", text, flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2], strict=True):
            env = re.search(r'conda:\n\s*"\.\./\.\./envs/(\w+)\.yaml"', body)
            run = re.search(COMMAND, body)
            if run is None and (named := re.search(r"shell:\n\s+([A-Z_]+)\n", body)):
                run = re.search(COMMAND, text[text.index(f"\n{named[1]} = (") :])  # the file's
            assert env and run, f"rule {name} ({smk.name}) names no env or runs no rrt command"
            rules.append(Rule(name, env.group(1), tuple(run.group(1).split())))
    return rules


def test_each_environment_pins_exactly_the_dependencies_of_its_kind():
    assert sorted(["data", "eval", "model", "report", "serve"]) == KINDS
    for kind in KINDS:
        pins = _pins(kind)
        assert sorted(pins) == sorted(PROJECT["dependencies"] + EXTRAS[kind]), kind
        assert all("==" in pin for pin in pins), kind
        assert PROJECT["requires-python"] == f">={_python(kind)}", kind
    assert "torch==2.13.0" not in _pins("report") + _pins("data")
    assert EXTRAS["all"] == ["rrt[data,model,eval,serve,report,workflow]"]
    assert '-e ".[all,dev]"' in (REPO / "scripts" / "setup.sh").read_text()


def test_every_rule_names_its_kinds_environment_and_runs_rrt_from_it():
    rules = _rules()
    assert {r.env for r in rules} == set(KINDS)
    kinds = {r.name: r.env for r in rules}
    assert kinds["report"] == "report" and kinds["evaluate"] == "eval"
    assert kinds["benchmark"] == "serve" and kinds["tasks"] == "data"
    assert {kinds[n] for n in ("convert", "relax", "uptrain", "early_exit")} == {"model"}
    # `rrt` alone would be whichever environment's script comes first on PATH
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for shell in re.findall(r"^\s*shell:\n((?:\s+\".*\n)+)", smk.read_text(), flags=re.M):
            bare = re.findall(r"(?<!-m )\brrt [a-z]", shell)
            assert not bare, f"{smk.name}: {shell}"


def test_the_report_and_the_workflows_imports_need_neither_torch_nor_transformers():
    """Where neither is installed (the report's environment), these still run."""
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'lm_eval'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import rrt, rrt.config, rrt.experiment, rrt.flags, rrt.report, rrt.report.compose\n"
        "import rrt.store\n"
        "from rrt.cli import main\n"
        "sys.exit(main(['report', '--help']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sdm_conda_without_conda_is_one_line_saying_what_to_install(tmp_path):
    from test_workflow import SMOKE, snakemake

    if shutil.which("conda", path=os.defpath):
        pytest.skip("conda is on this machine's default PATH")
    result = snakemake(tmp_path, "-n", "--sdm", "conda", "--configfile", str(SMOKE))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("rrt: --sdm conda needs the `conda` command on PATH")
    assert result.stderr.count("\n") == 1 and "Miniforge" in result.stderr
    assert not (tmp_path / "results").exists()


# --- each environment built alone ------------------------------------------------------------


def _build(kind: str, into: Path) -> Path:
    """A venv of the Python the environment names, with its pip section installed and nothing
    else (no rrt: the workflow runs it from src/, as it does in a conda environment)."""
    python = shutil.which(f"python{_python(kind)}")
    assert python, f"python{_python(kind)}, which envs/{kind}.yaml names, is not on PATH"
    subprocess.run([python, "-m", "venv", str(into)], check=True)
    done = subprocess.run(
        [str(into / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
         *_pins(kind)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, f"envs/{kind}.yaml does not install: {done.stderr[-3000:]}"
    return into


def _env(venv: Path, work: Path) -> dict[str, str]:
    """What a job in that environment sees: its bin first, rrt from src/, tracking to sqlite."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_PARENT_RUN_ID")}
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), os.defpath]),
        PYTHONPATH=str(REPO / "src"),
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        MLFLOW_EXPERIMENT_NAME="envs",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
    )
    return env


@dataclass(frozen=True)
class Job:
    rule: str
    env: str
    command: str  # the rrt command it runs
    shell: str
    log: str
    seconds: float


def _recorded_jobs(workdir: Path, rules: list[Rule]) -> dict[tuple[str, str], Job]:
    """The quickest recorded job of each rrt command in each environment of a finished run
    (Snakemake keeps each job's shell command and environment file in .snakemake/metadata)."""
    contents = {(ENVS / f"{kind}.yaml").read_text(): kind for kind in KINDS}
    named = {rule.name: rule.env for rule in rules}
    jobs: dict[tuple[str, str], Job] = {}
    for record in (workdir / ".snakemake" / "metadata").iterdir():
        meta = json.loads(record.read_text())
        if not meta.get("shellcmd"):
            continue
        env = contents[base64.b64decode(meta["conda_env"]).decode()]
        assert named[meta["rule"]] == env  # what Snakemake used is what the rule names
        logs = meta.get("log") or []
        command = re.search(r" -m rrt ([a-z-]+)", meta["shellcmd"]).group(1)
        job = Job(meta["rule"], env, command, meta["shellcmd"], logs[0] if logs else "",
                  float(meta["endtime"]) - float(meta["starttime"]))  # fmt: skip
        key = (env, command)
        if key not in jobs or job.seconds < jobs[key].seconds:
            jobs[key] = job
    return jobs


@pytest.mark.slow
def test_each_environment_alone_runs_the_commands_of_every_rule_that_names_it(smoke, tmp_path):
    rules = _rules()
    jobs = _recorded_jobs(smoke, rules)
    assert {job.env for job in jobs.values()} == set(KINDS)  # the smoke run uses every kind
    work = tmp_path / "work"  # a copy: the jobs run again there, over their own outputs
    for folder in ("results", "reports"):
        shutil.copytree(smoke / folder, work / folder)
    with ThreadPoolExecutor(3) as pool:  # pip waits on the index as much as it computes
        built = pool.map(lambda kind: _build(kind, tmp_path / "venvs" / kind), KINDS)
        venvs = dict(zip(KINDS, built, strict=True))
    for kind, venv in venvs.items():
        env = _env(venv, work)
        ran = {(job.command,) for job in jobs.values() if job.env == kind}
        for command in sorted({r.command for r in rules if r.env == kind} - ran):
            done = subprocess.run([str(venv / "bin" / "python"), "-m", "rrt", *command, "--help"],
                                  capture_output=True, text=True, env=env, cwd=work)  # fmt: skip
            assert done.returncode == 0, f"{kind}: rrt {' '.join(command)}: {done.stderr[-3000:]}"
        for job in (j for j in jobs.values() if j.env == kind):
            done = subprocess.run(["bash", "-c", job.shell], capture_output=True, text=True,
                                  env=env, cwd=work, timeout=600)  # fmt: skip
            log = (work / job.log).read_text()[-3000:] if job.log else done.stderr[-3000:]
            assert done.returncode == 0, f"{kind}: rule {job.rule} failed: {job.shell}\n{log}"
    python = str(venvs["report"] / "bin" / "python")
    for package in ("torch", "transformers"):
        found = subprocess.run([python, "-c", f"import {package}"], capture_output=True)
        assert found.returncode != 0, f"the report's environment holds {package}"
    assert (work / "reports" / "smoke" / "report.html").is_file()
    sizes = {
        k: sum(f.stat().st_size for f in v.rglob("*") if f.is_file()) for k, v in venvs.items()
    }
    print("installed sizes (MiB):", {kind: size >> 20 for kind, size in sizes.items()})
