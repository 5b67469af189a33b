"""Recursive model -> relaxed recursive model: a LoRA per virtual position (paper sec. 2.3).

Position l's LoRA on each linear of the block starts from the truncated SVD of the residual
between the source layer and the shared layer it now runs: U_r, S_r, V_r = SVD(W_l - W'_{l mod K});
B_l = U_r S_r, A_l = V_r^T, scaling 1 (alpha = r), so that at full rank the relaxed model
computes the source model's linears exactly (eq. 5). Where the residual is zero (stepwise's
source layers) A is Gaussian and B zero.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import PreTrainedModel

from rrt import config as schema
from rrt.errors import UserError
from rrt.method.convert import build_like, copy_outside_layers, source_layers
from rrt.model.modeling import RecursiveConfig, RecursiveForCausalLM
from rrt.model.shape import full_ranks, parse_rank


def svd_init(
    residual: torch.Tensor, rank: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, in], B [out, r]) with B A the best rank-r approximation of ``residual`` (eq. 5).

    The SVD runs in float64 on the residual's device (the GPU when the model is there), which
    keeps full rank exact whatever the weights' dtype.
    """
    out_features, in_features = residual.shape
    if not residual.any():
        a = torch.randn(rank, in_features, generator=generator, dtype=torch.float64) / rank
        return a.to(residual.device), residual.new_zeros(out_features, rank, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(residual.to(torch.float64), full_matrices=False)
    return vh[:rank], u[:, :rank] * s[:rank]


DEFAULTS = schema.defaults("relaxed")
# What a source must share with the model its recursive model was converted from.
SHAPE = (
    "model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
    "num_attention_heads", "num_key_value_heads", "vocab_size",
)  # fmt: skip


def check_source(source: Any, recursive: Any) -> None:
    """One line, from the configs alone (before any weights load): ``recursive`` must be a
    recursive model's config and ``source`` the shape of the model it was converted from."""
    if getattr(recursive, "model_type", None) != RecursiveConfig.model_type:
        raise UserError(
            f"--recursive is a {getattr(recursive, 'model_type', '?')} model, not a recursive one "
            "(rrt convert makes one)"
        )
    text = recursive.text_config
    differ = [
        f"{key} {getattr(source, key, None)} (recursive: {getattr(text, key, None)})"
        for key in SHAPE
        if getattr(source, key, None) != getattr(text, key, None)
    ]
    if differ:
        raise UserError(
            "--source is not the model the recursive one was converted from: " + ", ".join(differ)
        )


def relax(
    recursive: RecursiveForCausalLM,
    source: PreTrainedModel,
    rank: int | str | dict[str, int],
    relax_vectors: bool = DEFAULTS["relax_vectors"],
    seed: int = DEFAULTS["seed"],
) -> RecursiveForCausalLM:
    """The relaxed model: ``recursive`` plus per-position LoRAs initialised from ``source``.

    ``relax_vectors`` also gives every position the norm weights and biases of its source layer
    (the paper ties them); only then is full rank exact when those differ across source layers.
    """
    if not isinstance(recursive, RecursiveForCausalLM):
        raise UserError(
            f"relax needs a recursive model (rrt convert), got {type(recursive).__name__}"
        )
    ranks = full_ranks(parse_rank(rank), recursive)
    check_source(source.config, recursive.config)
    config = copy.deepcopy(recursive.config)
    config.lora_rank, config.relax_vectors = ranks, relax_vectors
    model = build_like(config, recursive)
    copy_outside_layers(model, recursive.lm)

    generator = torch.Generator().manual_seed(seed)
    originals = source_layers(source)
    matrices = {f"{name}.weight" for name in model.family.linears}
    with torch.no_grad():
        for position, original in enumerate(originals):
            wanted = original.state_dict()
            shared = recursive.position_parameters(position)
            for name, target in model.position_parameters(position).items():
                keep_source = relax_vectors and name not in matrices
                target.copy_(wanted[name] if keep_source else shared[name])
            for linear in model.family.linears:
                views = model.lora(position, linear)
                if views is None:
                    continue
                a_view, b_view = views
                residual = (
                    wanted[f"{linear}.weight"].to(a_view.device, torch.float64)
                    - shared[f"{linear}.weight"].double()
                )
                a, b = svd_init(residual, a_view.shape[0], generator)
                a_view.copy_(a)
                b_view.copy_(b)
    return model.eval()
