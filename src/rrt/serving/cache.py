"""The KV cache: preallocated once, one slot per running request, keyed by virtual depth.

Keys and values live in two tensors of shape [depth, slots, kv_heads, max_len, head_dim] (a
compiled engine's has a spare slot and a spare position, below): entry
``[d, s]`` holds one request's keys at one virtual depth d (loop * K + layer), so the B loops of a
shared layer never overwrite one another, and every slot at one depth is one strided view that
attention reads without a copy. Nothing is allocated per token.
"""

from __future__ import annotations

import torch

from rrt.errors import UserError


def slot_bytes(depth: int, max_len: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes one request's slot takes: keys and values at every virtual depth and position."""
    return 2 * depth * max_len * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    """Stores keys and values; hands out and takes back slots. It decides nothing."""

    def __init__(
        self,
        depth: int,
        slots: int,
        max_len: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        spare: bool = False,
    ) -> None:
        if slots < 1:
            raise UserError("the KV-cache budget holds no request slot: raise kv_cache_mb")
        # ``spare``: one slot more that no request gets, where a compiled step's padding rows
        # write (``slots`` counts it, ``free_slots`` does not), and one position more than
        # ``max_len``, so that the keys a compiled step reads (a length of its own, up to
        # ``max_len``) are never the whole tensor: a slice of all of it would be a special case
        # that the compiled graph's dynamic length could not cover
        self.spare_slot = slots if spare else None
        slots += spare
        self.depth, self.slots, self.max_len = depth, slots, max_len
        shape = (depth, slots, kv_heads, max_len + spare, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free = list(range(slots - 1 - spare, -1, -1))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def write(
        self,
        depths: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> None:
        """Store new entries: token t at (``depths[t]``, ``slots[t]``, ``positions[t]``); k, v
        are [tokens, kv_heads, head_dim]."""
        self.k[depths, slots, :, positions] = k.to(self.k.dtype)
        self.v[depths, slots, :, positions] = v.to(self.v.dtype)

    def at_depth(self, depth: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every slot's first ``length`` keys and values at one depth, [slots, kv_heads, length,
        head_dim]: views, no copy."""
        return self.k[depth, :, :, :length], self.v[depth, :, :, :length]

    def gather(
        self, depths: torch.Tensor, slots: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` keys and values of chosen (depth, slot) pairs, [pairs, kv_heads,
        length, head_dim] (a copy)."""
        return self.k[depths, slots, :, :length], self.v[depths, slots, :, :length]
