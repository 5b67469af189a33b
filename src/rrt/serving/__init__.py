"""Serving with continuous depth-wise batching and real early exit (``Engine``)."""

from rrt.serving.engine import KV_FILLS, MODES, Engine
from rrt.serving.request import Generation

__all__ = ["KV_FILLS", "MODES", "Engine", "Generation"]
