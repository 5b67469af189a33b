"""The KV cache: preallocated once, one slot per running request, keyed by virtual depth.

Keys and values live in two tensors of shape [depth * slots, max_len, kv_heads, head_dim]: row
``depth * slots + slot`` holds one request's entries at one virtual depth (loop * K + layer), so
the B loops of a shared layer never overwrite one another. Nothing is allocated per token.
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
    ) -> None:
        if slots < 1:
            raise UserError("the KV-cache budget holds no request slot: raise kv_cache_mb")
        self.depth, self.slots, self.max_len = depth, slots, max_len
        shape = (depth * slots, max_len, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._free = list(range(slots - 1, -1, -1))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def write(self, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store new entries: token t at (row ``rows[t]``, position ``positions[t]``); k, v are
        [tokens, kv_heads, head_dim]."""
        flat = rows * self.max_len + positions
        self.k.view(-1, *self.k.shape[2:]).index_copy_(0, flat, k.to(self.k.dtype))
        self.v.view(-1, *self.v.shape[2:]).index_copy_(0, flat, v.to(self.v.dtype))

    def read(self, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first ``length`` positions of each row, as
        [rows, kv_heads, length, head_dim]."""
        return (
            self.k[rows, :length].transpose(1, 2),
            self.v[rows, :length].transpose(1, 2),
        )
