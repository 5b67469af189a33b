"""The engine API: schedule, run, postprocess, one step at a time (paper sec. 4, made real).

Depth-wise batching runs the K shared layers once per step over rows at different loops; a token
leaves the pass after each loop, exits when the exit head's confidence (max softmax probability)
passes the threshold, and the freed row takes the request's next token at the next step. The KV
entries an exited token owes to the loops it skipped are computed, never skipped: ``kv_fill``
``ride`` carries it on through them in later steps (exact), ``propagate`` feeds its exit hidden
state to every skipped layer's key/value projections in the next step (CALM). Sequence-wise
(``mode="sequence"``), every step runs each token through every loop, as an ordinary model runs.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from rrt.config import defaults
from rrt.errors import UserError
from rrt.serving.cache import KVCache, slot_bytes
from rrt.serving.cost import CostModel
from rrt.serving.request import Generation, Kind, Request, Status, Work
from rrt.serving.runner import Runner
from rrt.serving.scheduler import Scheduler

MODES = ("depthwise", "sequence")
KV_FILLS = ("ride", "propagate")
# The serving limits' defaults live in the config schema (benchmark section), written once.
LIMITS = defaults("benchmark")


class Engine:
    """Serves a source, recursive or relaxed model directory (or a loaded model).

    ``max_batch`` caps the requests running at once and ``kv_cache_mb`` the KV memory (the cache
    is preallocated for ``max_len`` positions a request); ``max_batch_tokens`` caps the tokens a
    step runs (prompts are chunked to fit). ``exit_threshold`` switches real early exit on.
    ``eos_token_id`` is the token (or tokens) that ends a request: by default the model's
    generation config's, as ``generate``; ``[]`` is none. ``compile`` runs steps, state
    propagation and the exit head as compiled graphs (:meth:`~rrt.serving.runner.Runner.compile`),
    compiled at their first use (a few graphs: one per row bucket, one for prompt chunks).
    """

    def __init__(
        self,
        model: str | Path | PreTrainedModel,
        mode: str = "depthwise",
        exit_threshold: float | None = None,
        kv_fill: str = "ride",
        max_batch: int = LIMITS["max_batch"],
        max_batch_tokens: int = LIMITS["max_batch_tokens"],
        kv_cache_mb: float | None = LIMITS["kv_cache_mb"],
        max_len: int | None = None,
        dtype: torch.dtype | str = "auto",
        device: str = "auto",
        eos_token_id: int | list[int] | None = None,
        compile: bool = False,
    ) -> None:
        if mode not in MODES:
            raise UserError(f"engine mode {mode!r} is not one of {', '.join(MODES)}")
        if kv_fill not in KV_FILLS:
            raise UserError(f"kv_fill {kv_fill!r} is not one of {', '.join(KV_FILLS)}")
        if exit_threshold is not None and not 0.0 < exit_threshold <= 1.0:
            raise UserError(f"exit threshold {exit_threshold} must be in (0, 1]")
        for name, value in (("max_batch", max_batch), ("max_batch_tokens", max_batch_tokens)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        self.tokenizer = None
        if not isinstance(model, PreTrainedModel):
            from rrt import store

            path = model
            model = store.load_model(path, dtype=dtype, device=device)
            self.tokenizer = store.load_tokenizer(path, required=False)
        self.model = model.eval()
        self.runner = Runner(model)
        self.cost = CostModel.of(self.runner)
        if exit_threshold is not None and self.runner.loops == 1:
            raise UserError("early exit needs a recursive model (B > 1 loops)")
        self.mode = mode
        self.exit_threshold = exit_threshold
        self.kv_fill = Kind.RIDE if kv_fill == "ride" else Kind.PROPAGATE
        # as generate: the model's generation config's end tokens, unless told others
        self.eos_token_ids = _eos(model) if eos_token_id is None else _ids(eos_token_id)
        context = self.runner.context or max_len
        self.max_len = min(max_len or context, context) if context else max_len
        if not self.max_len:
            raise UserError("the model states no context length: pass max_len")
        per_slot = slot_bytes(
            self.runner.depth,
            self.max_len,
            self.runner.kv_heads,
            self.runner.head_dim,
            self.runner.dtype,
        )
        slots = max_batch
        if kv_cache_mb is not None:
            slots = min(max_batch, int(kv_cache_mb * 2**20 // per_slot))
            if slots < 1:
                raise UserError(
                    f"kv_cache_mb {kv_cache_mb} holds no request: one takes "
                    f"{per_slot / 2**20:.2f} MB at max_len {self.max_len}"
                )
        self.slots = slots
        if compile:
            self.runner.compile(self.max_len, self._max_fills())
        self.max_batch_tokens = max_batch_tokens
        self.cache: KVCache | None = None  # the last generate's, kept for inspection
        # steps, rows, mixed-loop steps, exits, KV rows; FLOPs, bytes and seconds of all steps
        # and of decode steps (every work one position: no prompt chunk)
        self.stats: Counter[str] = Counter()

    @property
    def sequence(self) -> bool:
        return self.mode == "sequence" or self.runner.loops == 1

    def check(self, prompt: Sequence[int], max_new_tokens: int) -> str | None:
        """Why a request cannot be served, or None."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            return f"max_new_tokens must be a positive integer, got {max_new_tokens!r}"
        if len(prompt) == 0:
            return "empty prompt"
        if len(prompt) >= self.max_len:
            return (
                f"prompt of {len(prompt)} tokens does not fit the context of {self.max_len} "
                "(it must leave room for one new token)"
            )
        bad = [t for t in prompt if not 0 <= int(t) < self.runner.vocab_size]
        if bad:
            return (
                f"token ids {bad[:5]} are outside the vocabulary (0..{self.runner.vocab_size - 1})"
            )
        return None

    def generate(
        self,
        prompts: Sequence[Sequence[int] | str],
        max_new_tokens: int | Sequence[int],
        arrivals_s: Sequence[float] | None = None,
        ignore_eos: bool = False,
        progress: bool = True,
    ) -> list[Generation]:
        """Greedy generation for every prompt (token ids, or text when the model directory holds
        a tokenizer); returns, in order, each one's tokens (and text), the loops each token ran,
        and its timings. A bad request gets its ``error`` and no tokens while the others are
        served; ``arrivals_s`` staggers when requests arrive."""
        texts = any(isinstance(p, str) for p in prompts)
        if texts:
            if self.tokenizer is None:
                raise UserError("text prompts need a tokenizer in the model directory")
            prompts = [self.tokenizer(p)["input_ids"] if isinstance(p, str) else p for p in prompts]
        n = len(prompts)
        limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        arrivals = list(arrivals_s) if arrivals_s is not None else [0.0] * n
        if len(limits) != n or len(arrivals) != n:
            raise UserError("max_new_tokens and arrivals_s need one value per prompt")
        requests = [
            Request(i, [int(t) for t in p], limits[i], float(arrivals[i]), ignore_eos=ignore_eos)
            for i, p in enumerate(prompts)
        ]
        cache = self._cache()
        self.cache, self.stats = cache, Counter()
        scheduler = Scheduler(cache, self.max_batch_tokens)
        for r in sorted(requests, key=lambda r: r.arrival_s):
            r.error = self.check(r.prompt, r.max_new_tokens)
            if r.error:
                r.status = Status.FAILED
            else:
                scheduler.add(r)
        total = sum(r.max_new_tokens for r in requests if r.status is not Status.FAILED)
        bar = tqdm(
            total=total, unit="tok", desc="generating", file=sys.stderr, disable=not progress
        )
        start = time.perf_counter()
        carried: list[Work] = []
        with self.runner.serving():  # a compiled runner's settings, held once
            while not scheduler.idle:
                now = time.perf_counter() - start
                works = scheduler.schedule(carried, now)
                if not works:  # nothing has arrived yet
                    time.sleep(min(max(0.0, scheduler.next_arrival() - now), 0.01))
                    continue
                carried = self._step(works, cache, scheduler, start, bar)
        bar.close()
        out = [_generation(r) for r in requests]
        if texts:
            for g in out:
                g.text = self.tokenizer.decode(g.tokens)
        return out

    def warm_up(self) -> None:
        """Compile now every graph a compiled engine's steps can use (no-op when eager)."""
        if self.runner.compiled:
            rows = self.slots * (1 if self.sequence else self.runner.loops)
            # every decode step asks the head sequence-wise and, with exits, at nearly every
            # step (each request's newest token at loop 1); depth-wise without, at some steps
            asks = self.sequence or self.exit_threshold is not None
            heads = (True,) if asks else (False, True)
            self.runner.warm_up(self._cache(), rows, self.sequence, heads)

    def _max_fills(self) -> int:
        """The most state propagation rows a step can run: an exit at loop j owes the loops
        after it, so loops - 1 a slot (none without propagating exits)."""
        propagates = self.exit_threshold is not None and self.kv_fill is Kind.PROPAGATE
        return self.slots * (self.runner.loops - 1) if propagates else 0

    def _cache(self) -> KVCache:
        return KVCache(
            self.runner.depth,
            self.slots,
            self.max_len,
            self.runner.kv_heads,
            self.runner.head_dim,
            self.runner.dtype,
            self.runner.device,
            spare=self.runner.compiled,
        )

    def _step(
        self, works: list[Work], cache: KVCache, scheduler: Scheduler, start: float, bar: tqdm
    ) -> list[Work]:
        """Run the works, then turn their outputs into tokens and the next step's works (each
        token counted on ``bar``)."""
        began = time.perf_counter()
        decode = all(w.n == 1 for w in works)
        self.stats["steps"] += 1
        self.stats["rows"] += sum(w.n for w in works)
        self.stats["kv_fill_rows"] += sum(w.n for w in works if w.kind is not Kind.MAIN)
        self.stats["mixed_steps"] += len({w.loop for w in works}) > 1
        fills = sorted((w for w in works if w.kind is Kind.PROPAGATE), key=lambda w: w.loop)
        works = sorted((w for w in works if w.kind is not Kind.PROPAGATE), key=lambda w: w.loop)
        final = self.runner.loops - 1
        ends, at = [], 0
        for w in works:
            at += w.n
            ends.append(at - 1)
        # Rows whose token may come out now: the final loop, or any loop when exits are on.
        asks = [
            i
            for i, w in enumerate(works)
            if w.kind is Kind.MAIN
            and w.emits
            and (self.sequence or w.loop == final or (self.exit_threshold and w.decode))
        ]
        cost = self.cost.step(
            works,
            fills,
            self.sequence,
            asks=len(asks),
            embeds=sum(w.n for w in works if w.ids is not None),
        )
        rows = [ends[i] for i in asks]
        hidden, best, token = self.runner.step(works, fills, cache, self.sequence, rows)
        tokens, confidence = {}, {}
        if asks:
            tokens = dict(zip(asks, token.tolist(), strict=True))
            confidence = dict(zip(asks, best.tolist(), strict=True))
        now = time.perf_counter() - start
        carried: list[Work] = []
        finished: set[int] = set()
        for i, w in enumerate(works):
            r = w.request
            if r.id in finished:
                continue
            done_loop = final if self.sequence else w.loop
            if i in tokens and (
                done_loop == final or confidence[i] >= (self.exit_threshold or 2.0)
            ):
                if done_loop < final:  # exited: the skipped loops' KV is still owed
                    self.stats["exits"] += 1
                    carried.extend(self._fill(w, hidden[ends[i] - w.n + 1 : ends[i] + 1]))
                if self._emit(r, tokens[i], done_loop + 1, now, carried, bar):
                    finished.add(r.id)
                    scheduler.finish(r)
            elif done_loop < final:  # on to the next loop with the hidden states it left
                out = hidden[ends[i] - w.n + 1 : ends[i] + 1]
                carried.append(
                    Work(r, w.start, w.loop + 1, w.kind, hidden=out, emits=w.emits, decode=w.decode)
                )
        if hidden is not None and hidden.is_cuda:  # the step's own time, not the next one's
            torch.cuda.synchronize(hidden.device)
        cost.tally(self.stats, decode, time.perf_counter() - began)
        return [w for w in carried if w.request.id not in finished]

    def _fill(self, w: Work, out: torch.Tensor) -> list[Work]:
        """The works that compute an exited token's KV at the loops it skipped."""
        r = w.request
        if self.kv_fill is Kind.RIDE:
            return [Work(r, w.start, w.loop + 1, Kind.RIDE, hidden=out)]
        return [
            Work(r, w.start, loop, Kind.PROPAGATE, hidden=out)
            for loop in range(w.loop + 1, self.runner.loops)
        ]

    def _emit(
        self, r: Request, token: int, loops: int, now: float, carried: list[Work], bar: tqdm
    ) -> bool:
        """Record a new token; queue the next decode work unless the request is done. ``bar``
        counts tokens, a finished request's unused ones too (so the bar ends at its total)."""
        r.tokens.append(token)
        r.exit_loops.append(loops)
        bar.update(1)
        if r.first_token_s is None:
            r.first_token_s = now
        if not r.ignore_eos and token in self.eos_token_ids:
            r.finish_reason = "eos"
        elif len(r.tokens) >= r.max_new_tokens or r.length >= self.max_len:
            r.finish_reason = "length"
        if r.finish_reason:
            r.status, r.finished_s = Status.FINISHED, now
            bar.update(r.max_new_tokens - len(r.tokens))
            return True
        carried.append(Work(r, r.length - 1, 0, ids=[token], emits=True, decode=True))
        return False


def _generation(r: Request) -> Generation:
    return Generation(
        tokens=r.tokens,
        exit_loops=r.exit_loops,
        error=r.error,
        finish_reason=r.finish_reason,
        ttft_s=None if r.first_token_s is None else r.first_token_s - r.arrival_s,
        latency_s=None if r.finished_s is None else r.finished_s - r.arrival_s,
    )


def _eos(model: PreTrainedModel) -> frozenset[int]:
    """The end tokens ``generate`` stops at: the generation config's (one or a list)."""
    config = getattr(model, "generation_config", None)
    return _ids(getattr(config, "eos_token_id", None))


def _ids(eos: int | list[int] | None) -> frozenset[int]:
    return frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)
