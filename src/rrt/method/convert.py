"""Source model -> recursive model: K = N / B shared layers looped B times (paper sec. 2.2, app. F).

Initialisation of shared layer i (0-based):
- ``stepwise``: original layer round(linspace(0, N-1, K))[i] (first and last kept);
- ``average``: mean over r of original layer i + r*K, norms and biases averaged too;
- ``lower``: original layer i;
- ``random``: the family's fresh initialisation.
Embeddings, final norm and head are copied; everything in a block is tied, norms too.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from transformers import PreTrainedModel

from rrt import config as schema
from rrt import store
from rrt.errors import UserError
from rrt.model.families import family_of
from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM
from rrt.model.shape import check_loops
from rrt.names import INITS


def stepwise_indices(num_layers: int, num_shared: int) -> list[int]:
    """Source layer of each shared layer for ``stepwise``: round(linspace(0, N-1, K)).

    numpy rounds half to even, which gives the paper's example (N=6, K=3: 0, 2, 5).
    """
    return [int(i) for i in np.round(np.linspace(0, num_layers - 1, num_shared))]


def init_groups(init: str, num_layers: int, num_shared: int) -> list[list[int]]:
    """For each shared layer, the source layers whose mean initialises it (empty for random)."""
    k = num_shared
    if init == "stepwise":
        return [[i] for i in stepwise_indices(num_layers, k)]
    if init == "average":
        return [list(range(i, num_layers, k)) for i in range(k)]
    if init == "lower":
        return [[i] for i in range(k)]
    if init == "random":
        return [[] for _ in range(k)]
    raise UserError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


def source_layers(source: PreTrainedModel) -> list[torch.nn.Module]:
    return list(source.get_submodule(family_of(source.config.model_type).layers))


def copy_outside_layers(model: RecursiveForCausalLM, source: PreTrainedModel) -> None:
    """Copy embeddings, final norm and head (everything outside the decoder layers)."""
    prefix = model.family.layers + "."
    outside = {k: v for k, v in source.state_dict().items() if not k.startswith(prefix)}
    missing, unexpected = model.lm.load_state_dict(outside, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise RuntimeError(
            f"outside-layer weights did not match: missing {missing}, unexpected {unexpected}"
        )


DEFAULTS = schema.defaults("recursive")  # init: the experiment's first, stepwise; seed


def convert(
    source: PreTrainedModel,
    loops: int,
    init: str = DEFAULTS["inits"][0],
    seed: int = DEFAULTS["seed"],
) -> RecursiveForCausalLM:
    """The recursive model of ``source`` with ``loops`` loops (B) and the given initialisation."""
    family_of(source.config.model_type)  # a clear error for unsupported architectures
    num_layers = source.config.num_hidden_layers
    check_loops(num_layers, loops)
    k = num_layers // loops
    groups = init_groups(init, num_layers, k)

    config = RecursiveConfig(text_config=copy.deepcopy(source.config), num_loops=loops, init=init)
    torch.manual_seed(seed)  # the fresh init of `random`
    model = build_like(config, source)
    copy_outside_layers(model, source)

    layers = source_layers(source)
    with torch.no_grad():
        for i, group in enumerate(groups):
            if not group:
                continue
            states = [layers[j].state_dict() for j in group]
            for position in range(i, num_layers, k):
                for name, target in model.position_parameters(position).items():
                    mean = torch.stack([s[name].float() for s in states]).mean(0)
                    target.copy_(mean)  # averaged in fp32 whatever the source's dtype
    return model.eval()


def build_like(config: RecursiveConfig, reference: torch.nn.Module) -> RecursiveForCausalLM:
    """A fresh recursive model on the device and in the dtype of ``reference``'s weights, built
    there directly (a GPU source never round-trips through host memory)."""
    weight = next(reference.parameters())
    with torch.device(weight.device):
        return RecursiveForCausalLM._from_config(config, dtype=weight.dtype)


def source_dtype(path: str) -> torch.dtype | None:
    """The dtype a checkpoint was stored in, so outputs keep it (the math runs in fp32)."""
    dtype = getattr(store.load_config(path), "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None
