"""rrt: Relaxed Recursive Transformers (Bae et al., ICLR 2025) as a reproducible workflow.

The method in two calls::

    import rrt
    recursive = rrt.convert(source_model, loops=2, init="stepwise")
    relaxed = rrt.relax(recursive, source_model, rank=64)

``import rrt`` itself imports neither torch nor transformers (the workflow, the report and the
data commands run without them, see pyproject.toml's extras); the names below are imported on
first use. Using the recursive model (any of them) registers it with transformers' Auto classes,
so a saved model then loads with ``AutoModelForCausalLM.from_pretrained``; ``import
rrt.model.modeling`` does only that.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rrt.method.convert import convert
    from rrt.method.relax import relax
    from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM

__version__ = "0.1.0"

_LAZY = {
    "convert": "rrt.method.convert",
    "relax": "rrt.method.relax",
    "RecursiveConfig": "rrt.model.modeling",
    "RecursiveForCausalLM": "rrt.model.modeling",
}
__all__ = ["RecursiveConfig", "RecursiveForCausalLM", "__version__", "convert", "relax"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rrt' has no attribute {name!r}")
