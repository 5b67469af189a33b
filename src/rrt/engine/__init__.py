"""Serving with continuous depth-wise batching and real early exit (``Engine``)."""

from rrt.engine.engine import KV_FILLS, MODES, Engine
from rrt.engine.request import Generation

__all__ = ["KV_FILLS", "MODES", "Engine", "Generation"]
