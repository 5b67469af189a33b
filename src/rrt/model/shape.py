"""The recursive model's shape: K = N / B shared layers (the loops must divide the source's
layers) and a LoRA rank per kind of linear (paper sec. 2.2-2.3). Checked here only: convert,
relax, parameter counts, the reduced-size baseline and the experiment config all call these."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rrt.errors import UserError
from rrt.names import FULL_RANK

if TYPE_CHECKING:
    from rrt.model.modeling import RecursiveForCausalLM

LORA_KINDS = ("attention", "mlp")  # the rank groups of a layer's linears (paper app. G)


def divisors(num_layers: int) -> list[int]:
    """The loop counts B that a source of ``num_layers`` layers allows."""
    return [b for b in range(1, num_layers + 1) if num_layers % b == 0]


def check_loops(num_layers: int, loops: int, key: str = "--loops") -> int:
    """K = N / B, or one line naming ``key`` and the allowed loop counts."""
    if loops < 1 or num_layers % loops:
        raise UserError(
            f"{key}: {loops} loops do not divide the source's {num_layers} layers; "
            f"allowed: {', '.join(map(str, divisors(num_layers)))}"
        )
    return num_layers // loops


FULL = FULL_RANK


def parse_rank(value: int | str | dict[str, int | str]) -> dict[str, int | str]:
    """A rank for every module kind from ``64``, ``"full"``, ``"attention=64,mlp=full"`` or a
    dict. ``full`` is min(in, out) of the kind's widest linear (:func:`full_ranks`)."""

    def one(text: int | str) -> int | str:
        text = str(text).strip()
        if text == FULL:
            return FULL
        if not text.lstrip("-").isdigit():
            raise UserError(
                f"rank {value!r}: write an integer, 'full', or kind=rank pairs such as "
                f"'attention=64,mlp=128'"
            )
        return int(text)

    if isinstance(value, dict):
        ranks = {kind: one(r) for kind, r in value.items()}
    elif "=" not in str(value):
        ranks = dict.fromkeys(LORA_KINDS, one(value))
    else:
        ranks = {}
        for part in str(value).split(","):
            kind, _, number = part.partition("=")
            ranks[kind.strip()] = one(number)
    unknown = set(ranks) - set(LORA_KINDS)
    if unknown:
        raise UserError(f"rank kinds {sorted(unknown)} unknown; allowed: {', '.join(LORA_KINDS)}")
    negative = {k: v for k, v in ranks.items() if v != FULL and v < 0}
    if negative:
        raise UserError(f"rank must be >= 0 or 'full', got {negative}")
    return {kind: ranks.get(kind, 0) for kind in LORA_KINDS}


def full_ranks(ranks: dict[str, int | str], model: RecursiveForCausalLM) -> dict[str, int]:
    """``full`` replaced by the largest min(in, out) among the kind's linears, the rank at which
    every linear of that kind reproduces its source exactly (eq. 5); a rank above it is that
    rank too, so what is recorded is what the linears hold (each caps it at its own min)."""
    widest = {kind: 0 for kind in LORA_KINDS}
    for name in model.family.linears:
        linear = model.looped_layers[0].get_submodule(name)
        kind = model.family.kind(name)
        widest[kind] = max(widest[kind], min(linear.in_features, linear.out_features))
    return {
        kind: widest[kind] if r == FULL else min(int(r), widest[kind]) for kind, r in ranks.items()
    }
