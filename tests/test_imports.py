"""The package has no import cycles, and every module imports on its own."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import rrt

SRC = Path(rrt.__file__).parent


def _modules() -> dict[str, Path]:
    found = {"rrt": SRC / "__init__.py"}
    for info in pkgutil.walk_packages([str(SRC)], "rrt."):
        path = SRC.joinpath(*info.name.split(".")[1:])
        found[info.name] = path / "__init__.py" if info.ispkg else path.with_suffix(".py")
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The rrt modules a file imports anywhere (function-local imports too, which can hide a
    cycle), except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                child = f"{node.module}.{a.name}"
                out.add(child if child in modules else node.module)
    return {m for m in out if m in modules}


def test_no_module_imports_itself_back_through_others():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycles: list[list[str]] = []

    def visit(name: str, stack: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in stack:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, [*stack, dep])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_every_module_imports_alone():
    """Each module imported first in a fresh set of rrt modules (torch and transformers stay
    loaded, so the whole check takes one interpreter)."""
    names = sorted(n for n in _modules() if n != "rrt.__main__")
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m == 'rrt' or m.startswith('rrt.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        print(f'{name}: {type(err).__name__}: {err}')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    )
    assert out.stdout == "", out.stdout
