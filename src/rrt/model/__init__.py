"""The recursive model: its config, looped layers with per-position views, the table of family
differences, its shape and parameter counts (paper sec. 2-3).

The shape and family modules need no torch (the workflow and the report read them); the classes
below are imported on first use. Importing :mod:`rrt.model.modeling` (which using them does)
registers the recursive model with transformers' Auto classes, so a saved model loads with
``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM

__all__ = ["RecursiveConfig", "RecursiveForCausalLM"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rrt.model import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'rrt.model' has no attribute {name!r}")
