"""What one step must compute and move: FLOPs and bytes, counted from the step's layout.

These are the roofline's numerators, the work an ideal kernel could not avoid: every linear a row
passes through (the shared weight, and the LoRA of the row's loop), attention over the keys each
query may see (causal, within its depth's sliding window), the exit head for the rows asked for a
token; and the bytes read from memory once a layer call (its weight, each loop's LoRA present in
the call, the keys and values its queries read) plus the keys and values written. Norms, rotary
and the other elementwise work are left out (a few per cent of either count at these sizes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from rrt.serving.request import Work


@dataclass(frozen=True)
class Linears:
    """The linears of one or more layers: multiply-adds a row and bytes a call reads."""

    macs: int  # in * out, summed
    lora_macs: int  # rank * (in + out), summed (one loop's LoRA)
    bytes: int  # weights and biases
    lora_bytes: int  # one loop's LoRA

    @classmethod
    def of(cls, modules: Iterable[nn.Module]) -> Linears:
        macs = lora_macs = size = lora_size = 0
        for m in modules:
            out_features, in_features = m.weight.shape
            element = m.weight.element_size()
            macs += in_features * out_features
            size += m.weight.numel() * element
            bias = getattr(m, "bias", None)
            if bias is not None:  # a looped linear's per-loop bias: one loop's is read
                size += (bias[0] if bias.dim() == 2 else bias).numel() * element
            rank = getattr(m, "rank", 0)
            if rank:
                lora_macs += rank * (in_features + out_features)
                lora_size += rank * (in_features + out_features) * element
        return cls(macs, lora_macs, size, lora_size)


@dataclass
class StepCost:
    flops: float = 0.0
    bytes: float = 0.0

    def tally(self, totals: Counter[str], decode: bool, seconds: float = 0.0) -> None:
        """Add this step to running ``totals``: its FLOPs, bytes and seconds, and, for a decode
        step (no prompt chunk), the same again under ``decode_`` with the decode step count."""
        for prefix in ("", "decode_") if decode else ("",):
            totals[prefix + "flops"] += self.flops
            totals[prefix + "bytes"] += self.bytes
            totals[prefix + "seconds"] += seconds
        totals["decode_steps"] += decode


class CostModel:
    """FLOPs and bytes of the engine's steps for one model (a :class:`~rrt.serving.runner.Runner`
    gives the shapes): ``k`` shared layers run ``loops`` times, over ``depth = k * loops``
    virtual depths."""

    def __init__(
        self,
        layers: list[nn.Module],
        linear_names: tuple[str, ...],
        key_names: tuple[str, ...],
        loops: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        hidden_size: int,
        vocab_size: int,
        element_size: int,
        windows: list[int] | None,
    ) -> None:
        self.k, self.loops = len(layers), loops
        self.layer = Linears.of(m.get_submodule(n) for m in layers for n in linear_names)
        self.keys = Linears.of(m.get_submodule(n) for m in layers for n in key_names)
        self.score_flops = 4 * heads * head_dim  # q.k and p.v for one query and one key
        self.kv_position = 2 * kv_heads * head_dim * element_size  # a key and a value
        self.head_flops = 2 * hidden_size * vocab_size
        self.head_bytes = hidden_size * vocab_size * element_size
        self.embed_bytes = hidden_size * element_size
        # Sliding windows (0: none) of the k depths a pass at each loop visits, counted.
        depth = self.k * loops
        per_depth = windows or [0] * depth
        self.windows = [Counter(per_depth[j * self.k : (j + 1) * self.k]) for j in range(loops)]
        self.all_windows = Counter(per_depth)

    @classmethod
    def of(cls, runner) -> CostModel:
        text = runner.lm.config
        return cls(
            [runner.layers[i] for i in range(runner.shared)],
            runner.family.linears,
            runner.family.keys,
            runner.loops,
            text.num_attention_heads,
            runner.kv_heads,
            runner.head_dim,
            runner.hidden_size,
            runner.vocab_size,
            next(runner.lm.parameters()).element_size(),
            None if runner.windows is None else runner.windows.tolist(),
        )

    def step(
        self, works: list[Work], fills: list[Work], sequence: bool, asks: int, embeds: int
    ) -> StepCost:
        """One step: ``works`` through their loop (sequence-wise: through every loop), the
        ``fills`` (state propagation) through the key and value projections of their loop (all
        they need; the compiled fill computes nothing else), the exit head
        over ``asks`` rows, ``embeds`` token embeddings looked up."""
        cost = StepCost(bytes=embeds * self.embed_bytes)
        if asks:
            cost.flops += asks * self.head_flops
            cost.bytes += self.head_bytes
        rows = sum(w.n for w in works)
        if works and sequence:  # every loop in turn: each pass reads the weights again
            passes = self.loops
            cost.flops += 2 * rows * passes * (self.layer.macs + self.layer.lora_macs)
            cost.bytes += passes * (self.layer.bytes + self.layer.lora_bytes)
        elif works:  # one pass of the k shared layers, each row at its own loop
            present = {w.loop for w in works}
            cost.flops += 2 * rows * (self.layer.macs + self.layer.lora_macs)
            cost.bytes += self.layer.bytes + len(present) * self.layer.lora_bytes
        scores = positions = 0
        for w in works:
            seen, moved = self._attention(w, self.all_windows if sequence else self.windows[w.loop])
            scores, positions = scores + seen, positions + moved
        cost.flops += scores * self.score_flops
        cost.bytes += positions * self.kv_position
        if fills:
            keys = self.keys
            present = {w.loop for w in fills}
            cost.flops += 2 * sum(w.n for w in fills) * (keys.macs + keys.lora_macs)
            cost.bytes += keys.bytes + len(present) * keys.lora_bytes
            cost.bytes += sum(w.n for w in fills) * self.k * self.kv_position  # keys written
        return cost

    @staticmethod
    def _attention(w: Work, windows: Counter[int]) -> tuple[int, int]:
        """Attention of a work's queries at each depth its pass visits: the query-key scores
        over the keys each query may see, and the key positions moved (those read once, the
        new ones written), summed over a step's works before they become FLOPs and bytes."""
        scores = positions = 0
        first, last = w.start, w.start + w.n - 1
        for window, depths in windows.items():
            if window:  # query p sees keys max(0, p - window + 1) .. p
                seen = sum(min(p + 1, window) for p in range(first, last + 1))
                read = last + 1 - max(0, first - window + 1)
            else:
                seen = w.n * first + w.n * (w.n + 1) // 2
                read = last + 1
            scores += depths * seen
            positions += depths * (read + w.n)
        return scores, positions
