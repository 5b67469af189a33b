"""The reduced-size baseline (paper sec. 3, app. I): a model of the source's shape with N/B layers,
trained from scratch on the same tokens (``rrt pretrain --like SOURCE --layers N/B``), the
parameter-matched model a recursive model of B loops is compared with."""

from __future__ import annotations

import copy
from typing import Any

from rrt.model.shape import check_loops


def reduced_layers(layers: int, loops: int) -> int:
    """N/B: the depth of the reduced-size baseline of a model looped B times."""
    return check_loops(layers, loops)


def shallower(config: Any, layers: int) -> Any:
    """``config`` with ``layers`` decoder layers (and the first ``layers`` per-layer types)."""
    config = copy.deepcopy(config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    return config
