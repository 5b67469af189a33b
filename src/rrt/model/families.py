"""The one table of family differences: where a family keeps its decoder layers, which of a
layer's linears belong to attention and to the MLP, and where its attention block sits.

Everything else (masks, rotary, embedding scaling, logit softcapping, sliding windows) is left to
the family's own ``transformers`` forward, which the recursive model reuses unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rrt.errors import UserError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """How one architecture family lays out its decoder block."""

    name: str
    layers: str  # path of the decoder-layer ModuleList inside the *ForCausalLM model
    final_norm: str  # path of the norm before the head, shared by every loop's exit
    attention: tuple[str, ...]  # the block's attention linears, relative to a decoder layer
    mlp: tuple[str, ...]  # the block's MLP linears, relative to a decoder layer
    # Norms that see [batch, heads, seq, dim] rather than tokens first (per-token loops need it).
    heads_first_norms: tuple[str, ...] = ()
    # The attention block and the norm before it, relative to a decoder layer: the serving
    # engine runs them alone to compute an exited token's keys and values (state propagation).
    attention_block: str = "self_attn"
    attention_norm: str = "input_layernorm"
    # The linears of the attention block that its keys and values need: all that state
    # propagation's compiled step computes (the queries and output projection are dropped).
    keys: tuple[str, ...] = ("self_attn.k_proj", "self_attn.v_proj")

    @property
    def linears(self) -> tuple[str, ...]:
        return self.attention + self.mlp

    def kind(self, linear: str) -> str:
        """'attention' or 'mlp': the rank group of a linear (paper app. G sets them apart)."""
        return "attention" if linear in self.attention else "mlp"


_LLAMA_LIKE_ATTENTION = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
)
_LLAMA_LIKE_MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _llama_like(name: str, heads_first_norms: tuple[str, ...] = ()) -> Family:
    return Family(
        name,
        "model.layers",
        "model.norm",
        _LLAMA_LIKE_ATTENTION,
        _LLAMA_LIKE_MLP,
        heads_first_norms,
    )


# Keyed by the source config's `model_type`.
FAMILIES: dict[str, Family] = {
    "llama": _llama_like("Llama (TinyLlama, Llama 3.x, SmolLM2)"),
    "qwen2": _llama_like("Qwen2"),
    "qwen3": _llama_like("Qwen3"),
    "gemma": _llama_like("Gemma"),
    "gemma2": _llama_like("Gemma 2"),
    "gemma3_text": _llama_like(
        "Gemma 3 (text)", heads_first_norms=("self_attn.q_norm", "self_attn.k_norm")
    ),
    "gpt_neox": Family(
        "GPT-NeoX (Pythia)",
        "gpt_neox.layers",
        "gpt_neox.final_layer_norm",
        ("attention.query_key_value", "attention.dense"),
        ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
        attention_block="attention",
        keys=("attention.query_key_value",),  # queries, keys and values in one linear
    ),
}


def supported() -> str:
    """The supported families in words, for error messages."""
    return ", ".join(f"{f.name} [{mt}]" for mt, f in FAMILIES.items())


def family_of(model_type: str) -> Family:
    """The adapter for a source ``model_type``, or a clear error naming the supported families."""
    try:
        return FAMILIES[model_type]
    except KeyError:
        raise UserError(
            f"unsupported architecture {model_type!r}; supported model_type values: {supported()}"
        ) from None


def check_layer(family: Family, layer: nn.Module) -> None:
    """Fail loudly if a decoder layer holds a linear that the adapter does not name.

    Guards against the public pitfall of LoRA silently applied to attention only.
    """
    from torch import nn  # this module is also read where torch is not installed (the report)

    found = {n for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    missing = found - set(family.linears)
    absent = set(family.linears) - found
    if missing or absent:
        raise UserError(
            f"{family.name}: decoder layer {type(layer).__name__} has linears {sorted(found)}, "
            f"the adapter expects {sorted(family.linears)}"
        )
