"""The scheduler: which works run in the next step (it decides only).

Iteration-level scheduling: every step, the works that the previous step left (the next loop of
a token, a decode token, an exited token's KV work) run again, and prompt chunks fill what the
step's token budget leaves. A waiting request is admitted when it has arrived and a KV slot is
free (admission is bounded by the cache's memory budget), so a slot freed by a finished request
is refilled at the next step.
"""

from __future__ import annotations

from collections import deque

from rrt.serving.cache import KVCache
from rrt.serving.request import Request, Status, Work


class Scheduler:
    def __init__(self, cache: KVCache, max_batch_tokens: int) -> None:
        self.cache = cache
        self.max_batch_tokens = max_batch_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def next_arrival(self) -> float | None:
        return self.waiting[0].arrival_s if self.waiting else None

    def schedule(self, carried: list[Work], now_s: float) -> list[Work]:
        """The carried works, then one prompt chunk per prefilling request within the budget.

        A request takes at most one new chunk a step: its next chunk enters the first loop after
        the previous one did, so every chunk finds its predecessors' keys at each depth.
        """
        works = list(carried)
        budget = self.max_batch_tokens - sum(w.n for w in carried)
        for request in self.running:
            if budget <= 0:
                return works
            if request.prefilled < len(request.prompt):
                budget -= self._chunk(request, budget, works)
        while budget > 0 and self.waiting and self.cache.free_slots:
            if self.waiting[0].arrival_s > now_s:
                break
            request = self.waiting.popleft()
            request.slot = self.cache.allocate()
            request.status = Status.RUNNING
            self.running.append(request)
            budget -= self._chunk(request, budget, works)
        return works

    def _chunk(self, request: Request, budget: int, works: list[Work]) -> int:
        start = request.prefilled
        end = min(len(request.prompt), start + budget)
        works.append(
            Work(
                request,
                start=start,
                loop=0,
                ids=request.prompt[start:end],
                emits=end == len(request.prompt),
            )
        )
        request.prefilled = end
        return end - start

    def finish(self, request: Request) -> None:
        """Take a finished request out and give its slot back (its works are dropped by the
        engine before the next step)."""
        self.running.remove(request)
        self.cache.release(request.slot)
