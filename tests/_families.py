"""Small random source models of every supported family, built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    max_position_embeddings=128,
)
LLAMA_LIKE = dict(COMMON, num_key_value_heads=2, head_dim=16)  # grouped-query attention

# model_type -> extra config; each exercises what sets the family apart.
FAMILY_CONFIGS: dict[str, dict] = {
    "llama": dict(LLAMA_LIKE),
    "qwen2": dict(LLAMA_LIKE),  # q/k/v biases
    "qwen3": dict(LLAMA_LIKE),  # q/k norms
    "gemma": dict(LLAMA_LIKE),  # (1 + w) norms, scaled embeddings, tied head
    "gemma2": dict(
        LLAMA_LIKE, sliding_window=5, final_logit_softcapping=30.0, attn_logit_softcapping=50.0
    ),
    "gemma3_text": dict(
        LLAMA_LIKE, sliding_window=5, sliding_window_pattern=3
    ),  # local/global rotary
    "gpt_neox": dict(COMMON, rotary_pct=0.25, use_parallel_residual=True),  # partial rotary
}


def source_config(model_type: str, **overrides):
    return AutoConfig.for_model(model_type, **{**FAMILY_CONFIGS[model_type], **overrides})


def randomize_(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Give every parameter (norms and biases too) distinct random values, as a trained model has.

    A freshly initialised model has unit norms and zero biases in every layer, which would hide a
    conversion that mixes them up.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(
                torch.randn(param.shape, generator=generator) * 0.1
                + (1.0 if param.dim() == 1 else 0.0)
            )
    return model


def source_model(
    model_type: str, seed: int = 0, vectors: str = "same", **overrides
) -> PreTrainedModel:
    """A random fp32 source model. ``vectors="same"`` keeps norms/biases equal across layers (as the
    paper's tied-norm relaxation assumes), ``"random"`` makes them differ per layer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(
        source_config(model_type, **overrides), dtype=torch.float32
    )
    randomize_(model, seed)
    if vectors == "same":
        layers = [m for n, m in model.named_modules() if n.endswith("layers")][0]
        first = {n: p for n, p in layers[0].named_parameters() if p.dim() == 1}
        with torch.no_grad():
            for layer in layers[1:]:
                for n, p in layer.named_parameters():
                    if p.dim() == 1:
                        p.copy_(first[n])
    return model.eval()


def tokens(batch: int = 2, length: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
