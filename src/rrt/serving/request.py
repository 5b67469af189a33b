"""What passes between the engine's parts: a request, the work it needs next, and its result.

A request is the one object that records each generated token's exit loop. A :class:`Work` is one
contiguous run of a request's positions through one loop of the shared block (or, sequence-wise,
through all of them): the scheduler picks works, the runner computes them, the engine turns their
outputs into tokens and the next works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class Kind(enum.Enum):
    """Why a work runs: to produce the next token (MAIN), or to fill the KV entries that an exited
    token owes to the loops it skipped: RIDE carries its hidden state on through them (exact KV),
    PROPAGATE feeds its exit hidden state to every skipped layer (CALM's state propagation)."""

    MAIN = "main"
    RIDE = "ride"
    PROPAGATE = "propagate"


@dataclass
class Request:
    """One prompt's life in the engine: its slot in the KV cache, its tokens and their exits."""

    id: int
    prompt: list[int]
    max_new_tokens: int
    arrival_s: float = 0.0  # seconds after the engine starts that the request arrives
    ignore_eos: bool = False  # generate max_new_tokens even past the end-of-sequence token
    status: Status = Status.WAITING
    slot: int | None = None
    prefilled: int = 0  # prompt tokens that have entered the first loop
    tokens: list[int] = field(default_factory=list)
    exit_loops: list[int] = field(default_factory=list)  # loops each generated token ran (1..B)
    error: str | None = None
    finish_reason: str | None = None
    first_token_s: float | None = None
    finished_s: float | None = None

    @property
    def length(self) -> int:
        """Positions known so far (prompt and generated)."""
        return len(self.prompt) + len(self.tokens)


@dataclass
class Work:
    """Positions ``start .. start + n - 1`` of a request through loop ``loop`` (sequence-wise: all
    loops). The input is token ids at the first loop, else the hidden state the previous loop left.
    ``emits``: the last position's output is the request's next token (a decode token, or the
    prompt's last chunk)."""

    request: Request
    start: int
    loop: int
    kind: Kind = Kind.MAIN
    ids: list[int] | None = None
    hidden: torch.Tensor | None = None  # [n, hidden_size]
    emits: bool = False
    decode: bool = False
    n: int = field(init=False)  # positions

    def __post_init__(self) -> None:
        self.n = len(self.ids) if self.ids is not None else int(self.hidden.shape[0])


@dataclass
class Generation:
    """What :meth:`rrt.serving.Engine.generate` returns for one prompt."""

    tokens: list[int]
    exit_loops: list[int]
    error: str | None = None
    finish_reason: str | None = None  # "length" (max_new_tokens or the context), "eos", or None
    ttft_s: float | None = None  # arrival to first token
    latency_s: float | None = None  # arrival to last token
    text: str | None = None  # the tokens decoded, for text prompts
