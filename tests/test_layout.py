"""The README's layout section names what the tree holds."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "rrt"
# packages whose modules the layout names one by one (cli and report are named as folders)
LISTED = ("model", "method", "training", "serving", "benchmark", "evaluation", "stories")


def _layout() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1]
    return re.search(r"```\n(.*?)```", section, flags=re.S).group(1)


def test_the_readmes_layout_names_every_package_and_module():
    words = set(re.findall(r"[\w.-]+", _layout()))
    top = [p.stem for p in SRC.glob("*.py") if not p.stem.startswith("__")]
    packages = [p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()]
    modules = [p.stem for name in LISTED for p in (SRC / name).glob("*.py") if p.stem != "__init__"]
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    folders = {f.split("/")[0] for f in tracked if "/" in f and not f.startswith(".")}
    scripts = {f.split("/")[1] for f in tracked if f.startswith("scripts/")}
    expected = {*top, *packages, *modules, *scripts, *(folders - {"src"})}
    missing = sorted(n for n in expected if n not in words and f"{n}/" not in _layout())
    assert not missing, f"README's layout does not name: {', '.join(missing)}"
