"""Parameter counts from a config alone: the model is built on the meta device, no weights needed.

``non_embedding`` leaves out the input embedding and the output head (counted once when tied),
as the paper's tables do (Gemma 2B: 1.99 B full, 0.99 B recursive with B = 2).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from rrt.errors import UserError
from rrt.model.families import family_of
from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM
from rrt.model.shape import check_loops, full_ranks, parse_rank


def count_parameters(model: nn.Module) -> dict[str, int]:
    """total, embedding, non_embedding and lora parameter counts (shared tensors counted once)."""
    total = sum(p.numel() for p in model.parameters())
    embedding_params = {
        id(p): p
        for module in (model.get_input_embeddings(), model.get_output_embeddings())
        if module is not None
        for p in module.parameters()
    }
    embedding = sum(p.numel() for p in embedding_params.values())
    lora = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
    )
    return {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "lora": lora,
    }


def build_on_meta(config: Any, loops: int | None = None, rank: Any = None) -> nn.Module:
    """The model a config describes; recursive with ``loops`` loops and ``rank`` when given."""
    vectors = False
    if isinstance(config, RecursiveConfig):
        loops = loops or config.num_loops
        rank = config.lora_rank if rank is None else rank
        config, vectors = config.text_config, config.relax_vectors
    elif loops is None:
        if rank is not None:
            raise UserError("--rank needs --loops (a source config has no recursion to relax)")
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    family_of(config.model_type)
    check_loops(config.num_hidden_layers, loops)
    ranks = parse_rank(rank or 0)
    recursive = RecursiveConfig(
        text_config=copy.deepcopy(config), num_loops=loops, relax_vectors=vectors
    )
    with torch.device("meta"):
        recursive.lora_rank = full_ranks(ranks, RecursiveForCausalLM(recursive))
        return RecursiveForCausalLM(recursive)
