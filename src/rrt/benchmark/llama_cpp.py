"""llama.cpp as a peer: the full-size model's weights in a GGUF file, served greedily with
continuous batching through llama.cpp's own batch API (``llama-cpp-python``'s bindings), each
request its own sequence and KV stream, the way its ``batched`` example and server do.

The serving loop (:func:`serve_continuous`) is the engine's policy, written once for any
decoder: requests take a free sequence when they have arrived, every decoding sequence feeds
one token a step, and prompts are chunked into what is left of ``max_batch_tokens``. Its steps
are counted as the engine's are (:class:`~rrt.serving.cost.CostModel`), so llama.cpp gets a
roofline beside the other systems.
"""

from __future__ import annotations

import ctypes
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from rrt.errors import UserError

# One chunk of a step: (sequence, tokens, position of the first, whether its last token's
# greedy next token is wanted).
Entry = tuple[int, list[int], int, bool]


@dataclass
class _Running:
    request: int
    seq: int
    fed: int = 0  # tokens in the sequence's KV


@dataclass
class Continuous:
    tokens: list[list[int]]
    ttft_s: list[float]
    latency_s: list[float]
    seconds: float
    steps: int
    cost: Counter[str]


def serve_continuous(
    work: Any,
    max_batch: int,
    max_batch_tokens: int,
    decode: Callable[[list[Entry]], dict[int, int]],
    release: Callable[[int], None],
    count: Any = None,
) -> Continuous:
    """Serve ``work`` (a benchmark Workload) through ``decode``, which runs one step's entries
    and returns each wanting sequence's next token; ``release`` frees a finished sequence's KV.
    ``count`` (a CostModel) tallies each step's FLOPs and bytes, and decode steps' seconds."""
    n = len(work.prompts)
    waiting = deque(sorted(range(n), key=lambda i: work.arrivals_s[i]))
    free = list(range(max_batch))[::-1]
    running: list[_Running] = []
    tokens: list[list[int]] = [[] for _ in range(n)]
    ttft, latency = [0.0] * n, [0.0] * n
    cost: Counter[str] = Counter()
    steps = 0
    start = time.perf_counter()
    while waiting or running:
        now = time.perf_counter() - start
        while waiting and free and work.arrivals_s[waiting[0]] <= now:
            running.append(_Running(waiting.popleft(), free.pop()))
        if not running:
            time.sleep(max(0.0, work.arrivals_s[waiting[0]] - now))
            continue
        entries: list[Entry] = []
        budget = max_batch_tokens
        for r in running:  # every decoding sequence feeds its last token
            if r.fed >= len(work.prompts[r.request]):
                entries.append((r.seq, tokens[r.request][-1:], r.fed, True))
                budget -= 1
        for r in running:  # prompts, chunked into what is left
            prompt = work.prompts[r.request]
            if r.fed < len(prompt) and budget > 0:
                take = min(budget, len(prompt) - r.fed)
                last = r.fed + take == len(prompt)
                entries.append((r.seq, prompt[r.fed : r.fed + take], r.fed, last))
                budget -= take
        began = time.perf_counter()
        out = decode(entries)
        done = time.perf_counter()
        steps += 1
        if count is not None:
            _tally(cost, count, entries, done - began)
        fed = {seq: len(toks) for seq, toks, _, _ in entries}
        for r in list(running):
            r.fed += fed.get(r.seq, 0)
            if r.seq not in out:
                continue
            i = r.request
            tokens[i].append(out[r.seq])
            if len(tokens[i]) == 1:
                ttft[i] = done - start - work.arrivals_s[i]
            if len(tokens[i]) == work.outputs[i]:
                latency[i] = done - start - work.arrivals_s[i]
                release(r.seq)
                free.append(r.seq)
                running.remove(r)
    return Continuous(tokens, ttft, latency, time.perf_counter() - start, steps, cost)


def _tally(cost: Counter[str], count: Any, entries: list[Entry], seconds: float) -> None:
    """One step's counts, as the engine's sequence-wise step on the full-size model counts them."""
    from rrt.serving.request import Kind

    works = [SimpleNamespace(n=len(t), start=p, loop=0, kind=Kind.MAIN) for _, t, p, _ in entries]
    asks = sum(want for *_, want in entries)
    embeds = sum(w.n for w in works)
    decode = all(w.n == 1 for w in works)
    count.step(works, [], True, asks=asks, embeds=embeds).tally(cost, decode, seconds)


class LlamaCpp:
    """One llama.cpp context over a GGUF file: ``slots`` sequences of up to ``max_len``
    positions each (one KV stream each), steps of up to ``step_tokens`` tokens."""

    def __init__(
        self, path: str | Path, slots: int, max_len: int, step_tokens: int, threads: int, gpu: bool
    ) -> None:
        try:
            import llama_cpp
        except ImportError as err:
            raise UserError(
                "system llama_cpp needs llama-cpp-python (scripts/llama_cpp.sh builds it)"
            ) from err
        self.lib = lib = llama_cpp
        self._quiet = lib.llama_log_callback(lambda level, text, data: None)
        lib.llama_log_set(self._quiet, ctypes.c_void_p())
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = -1 if gpu else 0
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise UserError(f"llama.cpp could not load {path} (is it a GGUF file?)")
        ctx = lib.llama_context_default_params()
        ctx.n_seq_max = slots
        ctx.kv_unified = False  # each sequence attends over its own stream only
        ctx.n_ctx = slots * -(-max_len // 256) * 256
        ctx.n_batch = ctx.n_ubatch = step_tokens
        ctx.n_threads = ctx.n_threads_batch = threads
        ctx.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, ctx)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise UserError(
                f"llama.cpp could not make a context of {slots} sequences of {max_len} positions"
                " (out of memory? try a smaller --max-batch)"
            )
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(step_tokens, 0, 1)
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))

    def decode(self, entries: list[Entry]) -> dict[int, int]:
        b, k, wanted = self.batch, 0, []
        for seq, toks, pos, want in entries:
            for j, token in enumerate(toks):
                b.token[k], b.pos[k], b.n_seq_id[k] = token, pos + j, 1
                b.seq_id[k][0] = seq
                b.logits[k] = want and j == len(toks) - 1
                k += 1
            if want:
                wanted.append((seq, k - 1))
        b.n_tokens = k
        if (rc := self.lib.llama_decode(self.ctx, b)) != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        out = {}
        for seq, index in wanted:
            logits = np.ctypeslib.as_array(
                self.lib.llama_get_logits_ith(self.ctx, index), shape=(self.vocab,)
            )
            out[seq] = int(logits.argmax())
        return out

    def release(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def serve_llama_cpp(
    gguf: str | Path, baseline: Any, work: Any, cfg: Any, threads: int
) -> list[Continuous]:
    """The workload through llama.cpp on ``gguf`` (the full-size ``baseline``'s weights),
    ``cfg.repeats`` times, the model loaded and warmed up on two short requests once, its steps
    counted as the baseline's."""
    from rrt.serving.cost import CostModel
    from rrt.serving.runner import Runner

    gpu = next(baseline.parameters()).device.type == "cuda"
    step_tokens = cfg.max_batch_tokens + cfg.max_batch
    engine = LlamaCpp(gguf, cfg.max_batch, work.max_len, step_tokens, threads, gpu)
    try:
        warm = SimpleNamespace(
            prompts=work.prompts[:2], outputs=[2, 2], arrivals_s=[0.0, 0.0], max_len=work.max_len
        )
        serve_continuous(warm, cfg.max_batch, cfg.max_batch_tokens, engine.decode, engine.release)
        count = CostModel.of(Runner(baseline))
        return [
            serve_continuous(
                work, cfg.max_batch, cfg.max_batch_tokens, engine.decode, engine.release, count
            )
            for _ in range(cfg.repeats)
        ]
    finally:
        engine.close()
