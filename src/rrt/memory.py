"""Peak memory of a stretch of work: CUDA's peak allocation on a GPU, the process's peak resident
set (VmHWM) on the CPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


class PeakMemory:
    """``reset()`` starts a stretch (on the CPU through /proc/self/clear_refs, where Linux allows
    it); ``mb()`` is the peak since, in MiB, or None where it cannot be read."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")

    def mb(self) -> float | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None
