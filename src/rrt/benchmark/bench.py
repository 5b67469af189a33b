"""The throughput benchmark: one workload, every serving system, one process (paper sec. 4).

The paper's speedups were simulated (oracle exits, KV of exited tokens skipped). Here each system
really serves the same requests: Hugging Face ``generate`` with static batches and transformers'
own continuous batching on the full-size model, then :class:`rrt.serving.Engine` sequence-wise on
the full-size and the recursive model, depth-wise, and depth-wise with real confidence-based
early exit at thresholds calibrated on held-out data (both ways of computing exited tokens' KV).
The ``simulated`` row is the paper's estimate, computed from this run's own traces, so real and
simulated speedups sit side by side.
"""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rrt import config as schema
from rrt import names
from rrt.contracts import ROOFLINE_FIELDS
from rrt.errors import UserError
from rrt.memory import PeakMemory

ALL_SYSTEMS = (
    "vanilla",
    "vanilla_compiled",
    "hf_continuous",
    "sequence_continuous",
    "recursive_sequence",
    "depthwise",
    "depthwise_exit",
    "simulated",
)
# the eager engine that decodes the calibration's continuations: rows enough to be quick
CALIBRATION_BATCH = 32
FULL_SIZE_SYSTEMS = (
    "vanilla",
    "vanilla_compiled",
    "hf_continuous",
    "sequence_continuous",
    "llama_cpp",
)  # llama_cpp (the baseline's GGUF served by llama.cpp) runs when named, never under "all"


@schema.section("benchmark")
class BenchConfig:
    requests: int
    min_prompt_tokens: int
    max_prompt_tokens: int
    max_new_tokens: int
    arrival: str
    rate: float
    seed: int
    max_batch: int
    max_batch_tokens: int
    kv_cache_mb: float | None
    agreement_targets: list[float]
    kv_fills: list[str]
    calibration_documents: int
    dtype: str
    systems: list[str]
    compile: bool
    repeats: int
    allow_errors: bool

    def __post_init__(self) -> None:
        if self.min_prompt_tokens > self.max_prompt_tokens:
            raise UserError(
                f"min_prompt_tokens {self.min_prompt_tokens} exceeds max_prompt_tokens "
                f"{self.max_prompt_tokens}"
            )

    @property
    def chosen(self) -> list[str]:
        return list(ALL_SYSTEMS) if "all" in self.systems else self.systems


@dataclass
class Workload:
    prompts: list[list[int]]
    outputs: list[int]  # tokens each request asks for
    arrivals_s: list[float]

    @property
    def max_len(self) -> int:
        """The longest request's positions: what every system's KV cache is sized to (the
        engine's slots, generate's static cache, continuous batching's pages), never the model's
        whole context."""
        return max(len(p) for p in self.prompts) + max(self.outputs)

    def describe(self, cfg: BenchConfig) -> dict[str, Any]:
        lengths = [len(p) for p in self.prompts]
        return {
            "requests": len(self.prompts),
            "arrival": cfg.arrival,
            "rate_per_s": cfg.rate if cfg.arrival == "poisson" else None,
            "seed": cfg.seed,
            "prompt_tokens_mean": float(np.mean(lengths)),
            "prompt_tokens_max": max(lengths),
            "output_tokens_total": sum(self.outputs),
            "output_tokens_mean": float(np.mean(self.outputs)),
            "output_tokens_max": max(self.outputs),
            "max_batch": cfg.max_batch,
            "max_batch_tokens": cfg.max_batch_tokens,
        }


def documents(corpus: str | Path, split: str, tokenizer: Any, limit: int) -> list[list[int]]:
    from rrt.training.data import read_texts

    docs = []
    for text in read_texts(corpus, split):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if len(ids) >= 2:
            docs.append(ids)
        if len(docs) >= limit:
            break
    if not docs:
        raise UserError(f"{corpus}: the {split} split holds no document of two tokens or more")
    return docs


def draw_workload(docs: list[list[int]], cfg: BenchConfig, context: int) -> Workload:
    """Requests from held-out documents: a prompt of a drawn length, and the rest of the
    document (up to ``max_new_tokens``) as the output length; arrivals all at once or Poisson."""
    rng = np.random.default_rng(cfg.seed)
    prompts, outputs = [], []
    for i in range(cfg.requests):
        doc = docs[i % len(docs)]
        longest = min(cfg.max_prompt_tokens, len(doc) - 1, context - 1)
        length = int(rng.integers(min(cfg.min_prompt_tokens, longest), longest + 1))
        prompts.append(doc[:length])
        outputs.append(max(1, min(cfg.max_new_tokens, len(doc) - length, context - length)))
    if cfg.arrival == "poisson":
        arrivals = np.cumsum(rng.exponential(1.0 / cfg.rate, cfg.requests)).tolist()
    else:
        arrivals = [0.0] * cfg.requests
    return Workload(prompts, outputs, arrivals)


# --- exit thresholds ---------------------------------------------------------------------------


@torch.inference_mode()
def calibrate(
    model: Any, work: Workload, targets: list[float], propagate: bool = False
) -> dict[str, Any]:
    """Exit thresholds that reach each target agreement with full-depth greedy decoding: a
    token exits after the first loop whose exit head's max probability reaches the threshold,
    and agrees when that loop's greedy token is the full depth's. Measured teacher-forced on
    what a served request decodes: ``work``'s held-out prompts and the model's own full-depth
    greedy continuations of them (an eager engine's, as long as the benchmark's outputs), not on
    the documents' own text, where the loops agree less often than on the model's own. The
    lowest threshold that reaches a target is chosen (the most exits). That holds where exited
    tokens' keys are exact (``ride``); ``propagate`` gets a threshold of its own, checked served
    (:func:`served_threshold`)."""
    from rrt.serving import Engine

    engine = Engine(model, mode="sequence", max_batch=CALIBRATION_BATCH, max_len=work.max_len)
    served = engine.generate(work.prompts, work.outputs, ignore_eos=True, progress=False)
    conf, agree = [], []
    pairs = [(prompt, g.tokens) for prompt, g in zip(work.prompts, served, strict=True)]
    for prompt, out in tqdm(pairs, desc="calibrating exits", unit="doc", file=sys.stderr):
        *exits, final = output_logits(model, prompt, out)  # each earlier loop's exit, full depth
        greedy = final.argmax(-1)
        conf.append(torch.stack([lg.float().softmax(-1).max(-1).values for lg in exits]))
        agree.append(torch.stack([lg.argmax(-1) == greedy for lg in exits]))
    c = torch.cat(conf, 1).cpu()  # [B - 1, tokens]
    a = torch.cat(agree, 1).cpu()
    candidates = torch.unique(c.flatten())
    if len(candidates) > 2000:
        candidates = torch.quantile(c.flatten(), torch.linspace(0, 1, 2001))
    curve = []
    for t in sorted(set(candidates.tolist()) | {1.0 + 1e-6}):
        exits = c >= t
        first = torch.where(exits.any(0), exits.float().argmax(0), -1)  # exit loop index or -1
        ok = torch.ones(c.shape[1], dtype=torch.bool)
        exited = first >= 0
        ok[exited] = a[first[exited], exited.nonzero().squeeze(1)]
        loops = torch.where(exited, first + 1, c.shape[0] + 1).float()
        curve.append((t, float(ok.float().mean()), float(loops.mean())))
    thresholds = {}
    for target in targets:
        at = next(i for i, (_, agreement, _) in enumerate(curve) if agreement >= target)
        t, agreement, loops = curve[at]
        thresholds[f"{target:g}"] = {
            "threshold": round(t, 6),
            "agreement": agreement,
            "mean_exit_loop": loops,
        }
        if propagate:
            thresholds[f"{target:g}"]["propagate"] = served_threshold(
                model, work, [t for t, _, _ in curve[at:]], target
            )
    return {
        "tokens": int(c.shape[1]),
        "documents": len(work.prompts),
        "text": "full-depth greedy continuations of validation prompts",
        "targets": thresholds,
    }


def served_threshold(
    model: Any, work: Workload, candidates: list[float], target: float
) -> dict[str, Any]:
    """The threshold of exits with propagated keys: the lowest of ``candidates`` (ascending;
    the last exits nothing) at which an eager engine exiting so serves ``work`` with ``target``
    agreement, teacher-forced against full depth as the benchmark measures it. Propagated keys
    are not the full depth's, so later tokens agree less often than the calibration, with exact
    keys, counted."""
    from rrt.serving import Engine

    def agreement(threshold: float) -> float:
        engine = Engine(
            model,
            exit_threshold=min(threshold, 1.0),
            kv_fill="propagate",
            max_batch=CALIBRATION_BATCH,
            max_len=work.max_len,
        )
        out = engine.generate(work.prompts, work.outputs, ignore_eos=True, progress=False)
        return full_depth_view(model, work, [g.tokens for g in out])["agreement"]

    return lowest_reaching(candidates, target, agreement)


def lowest_reaching(
    candidates: list[float], target: float, measure: Callable[[float], float], runs: int = 7
) -> dict[str, Any]:
    """Of ``candidates`` (ascending), the lowest whose ``measure`` reaches ``target`` that a
    bisection of at most ``runs`` measures finds, ``measure`` rising with the candidate and the
    last one's taken to reach it (1: it is never measured)."""
    measured: dict[int, float] = {}
    low, high = 0, len(candidates) - 1
    measured[low] = measure(candidates[low])
    if measured[low] >= target:
        high = low
    while high - low > 1 and len(measured) < runs:
        middle = (low + high) // 2
        measured[middle] = measure(candidates[middle])
        low, high = (low, middle) if measured[middle] >= target else (middle, high)
    return {
        "threshold": round(min(candidates[high], 1.0), 6),
        "served_agreement": measured.get(high, 1.0),
        "served_runs": len(measured),
    }


# --- systems -----------------------------------------------------------------------------------


@dataclass
class Served:
    tokens: list[list[int]]
    exit_loops: list[list[int]]
    ttft_s: list[float]
    latency_s: list[float]
    seconds: float
    peak_mem_mb: float | None
    extra: dict[str, Any]
    cost: Counter[str] | None = None  # COST_STATS summed over the run's steps


COST_STATS = (
    "flops",
    "bytes",
    "decode_flops",
    "decode_bytes",
    "decode_seconds",
    "decode_steps",
)


def serve_engine(model: Any, work: Workload, cfg: BenchConfig, **engine_kw: Any) -> Served:
    from rrt.serving import Engine

    engine = Engine(
        model,
        max_batch=cfg.max_batch,
        max_batch_tokens=cfg.max_batch_tokens,
        kv_cache_mb=cfg.kv_cache_mb,
        max_len=work.max_len,
        compile=cfg.compile,
        **engine_kw,
    )
    extra = {}
    if cfg.compile:  # every graph the workload can use, compiled before the warm-up and clock
        warm = time.perf_counter()
        engine.warm_up()
        extra["compile_s"] = time.perf_counter() - warm
    engine.generate(work.prompts[:2], 2, ignore_eos=True, progress=False)  # warm-up

    def once() -> Served:
        start = time.perf_counter()
        out = engine.generate(work.prompts, work.outputs, work.arrivals_s, ignore_eos=True)
        seconds = time.perf_counter() - start
        failed = [g.error for g in out if g.error]
        if failed:
            raise UserError(f"the engine refused a benchmark request: {failed[0]}")
        stats = dict(engine.stats)
        return Served(
            [g.tokens for g in out],
            [g.exit_loops for g in out],
            [g.ttft_s for g in out],
            [g.latency_s for g in out],
            seconds,
            None,
            {
                "steps": stats.get("steps", 0),
                "rows_per_step": stats["rows"] / max(1, stats["steps"]),
                **extra,
            },
            Counter({k: stats.get(k, 0) for k in COST_STATS}),
        )

    return median_run([once() for _ in range(cfg.repeats)])


def median_run(runs: list[Served]) -> Served:
    """Of ``runs`` (the whole workload served, timed, each time), the run of median time (the
    faster of the middle two for an even count), with every run's seconds, in the order they
    ran, as its ``seconds_runs``."""
    chosen = sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2]
    chosen.extra["seconds_runs"] = [run.seconds for run in runs]
    return chosen


def serve_llama_cpp(gguf: str | Path, baseline: Any, work: Workload, cfg: BenchConfig) -> Served:
    """llama.cpp on the baseline's weights as GGUF (:mod:`rrt.benchmark.llama_cpp`)."""
    from rrt.benchmark import llama_cpp

    runs = llama_cpp.serve_llama_cpp(gguf, baseline, work, cfg, torch.get_num_threads())
    n = len(work.prompts)
    return median_run(
        [
            Served(
                run.tokens,
                [[] for _ in range(n)],
                run.ttft_s,
                run.latency_s,
                run.seconds,
                None,
                {"steps": run.steps},
                run.cost,
            )
            for run in runs
        ]
    )


class _Clock:
    """A logits processor that only records when each decoding step's logits are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


@torch.inference_mode()
def serve_vanilla(model: Any, work: Workload, cfg: BenchConfig, compiled: bool = False) -> Served:
    """Hugging Face ``generate`` with static batches of ``max_batch`` requests in arrival order:
    a batch starts when its last request has arrived and the previous batch is done, is
    left-padded, and runs until its longest output is done.

    ``compiled``: its fastest documented path, a static KV cache (one length for the whole
    workload) and the decoding step compiled by ``torch.compile`` (CUDA graphs on a GPU). The
    compilation runs before the clock starts, for each batch size the workload has, and is
    reported apart (``compile_s``); an eager run is warmed up the same way.
    """
    from transformers import LogitsProcessorList, StaticCache

    from rrt.serving.cost import CostModel
    from rrt.serving.runner import Runner

    count = CostModel.of(Runner(model))
    device = next(model.parameters()).device
    n = len(work.prompts)
    batches = [list(range(lo, min(n, lo + cfg.max_batch))) for lo in range(0, n, cfg.max_batch)]

    def generate(
        members: list[int], new: int, logits_processor: Any = None
    ) -> tuple[torch.Tensor, int]:
        """The batch's new tokens, and its padded prompt width."""
        width = max(len(work.prompts[i]) for i in members)
        ids = torch.zeros(len(members), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(members):
            p = work.prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        options = {}
        if compiled:
            options = {
                "past_key_values": StaticCache(config=model.config, max_cache_len=work.max_len),
                "compile_config": _compile_config(device),
            }
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            logits_processor=logits_processor,
            **options,
        )
        return out[:, width:], width

    warm = time.perf_counter()
    for rows in sorted({len(b) for b in batches}):  # each batch size's step, compiled or warm
        generate(next(b for b in batches if len(b) == rows), 3)
    compile_s = time.perf_counter() - warm

    def once() -> Served:
        cost: Counter[str] = Counter()
        tokens: list[list[int]] = [[] for _ in range(n)]
        ttft, latency = [0.0] * n, [0.0] * n
        start = time.perf_counter()
        for members in batches:
            wait = max(work.arrivals_s[i] for i in members) - (time.perf_counter() - start)
            if wait > 0:
                time.sleep(wait)
            new = max(work.outputs[i] for i in members)
            clock = _Clock()
            out, width = generate(members, new, LogitsProcessorList([clock]))
            for row, i in enumerate(members):
                tokens[i] = out[row, : work.outputs[i]].tolist()
                ttft[i] = clock.times[0] - start - work.arrivals_s[i]
                latency[i] = clock.times[work.outputs[i] - 1] - start - work.arrivals_s[i]
            _vanilla_cost(cost, count, len(members), width, new, clock.times)
        seconds = time.perf_counter() - start
        extra = {"compile_s": compile_s} if compiled else {}
        return Served(tokens, [[] for _ in range(n)], ttft, latency, seconds, None, extra, cost)

    return median_run([once() for _ in range(cfg.repeats)])


def _compile_config(device: torch.device) -> Any:
    """transformers' compile settings for generate's decoding step: CUDA graphs on a GPU
    (its default), Inductor's default mode elsewhere, which generate compiles only when told to
    (``_compile_all_devices``: the flag its auto-compilation reads). The engine's frozen
    weights (:func:`rrt.serving.runner.compiling`) are not for it: freezing folds its static
    cache's bookkeeping into the graph, and the compiled step then indexes out of bounds."""
    from transformers.generation.configuration_utils import CompileConfig

    config = CompileConfig(dynamic=False)
    if device.type != "cuda":
        config.mode = "default"
        config._compile_all_devices = True
    return config


def _vanilla_cost(cost: Counter[str], count: Any, rows: int, width: int, new: int, times):
    """What one static batch computed: every row (padding and finished rows too) through the
    left-padded prompt, then one position a step until the longest output is done."""
    from types import SimpleNamespace

    from rrt.serving.request import Kind

    def works(n: int, start: int) -> list[Any]:  # stand-ins for Works: what the counts read
        return [SimpleNamespace(n=n, start=start, loop=0, kind=Kind.MAIN)] * rows

    count.step(works(width, 0), [], True, asks=rows, embeds=rows * width).tally(cost, False)
    for t in range(1, new):  # step t feeds the token of step t - 1, at position width + t - 1
        step = count.step(works(1, width + t - 1), [], True, asks=rows, embeds=rows)
        step.tally(cost, True)
    cost["decode_seconds"] += times[-1] - times[0]  # the clock times each step, not each count


def serve_hf_continuous(model: Any, work: Workload, cfg: BenchConfig) -> Served:
    """transformers' own continuous batching (``init_continuous_batching``), each request with
    its own output length, submitted at its arrival time."""
    return median_run([_hf_continuous(model, work, cfg) for _ in range(cfg.repeats)])


def _hf_continuous(model: Any, work: Workload, cfg: BenchConfig) -> Served:
    """One run of :func:`serve_hf_continuous`, its manager started and stopped."""
    from transformers import GenerationConfig

    gen = GenerationConfig(
        max_new_tokens=max(work.outputs),
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    # Its own sizing reads free GPU memory; on a CPU it would take a share of all RAM (measured:
    # 20-40 s for 6 tiny requests), so the cache gets the engine's room: max_batch requests of the
    # workload's longest (Workload.max_len).
    page = 64
    cuda = next(model.parameters()).device.type == "cuda"
    batching = ContinuousBatchingConfig(
        page_size=page,
        num_blocks=cfg.max_batch * -(-work.max_len // page) + 1,
        max_batch_tokens=cfg.max_batch_tokens,
        max_requests_per_batch=cfg.max_batch,
        use_cuda_graph=None if cuda else False,
        use_async_batching=None if cuda else False,
    )
    manager = model.init_continuous_batching(
        generation_config=gen, continuous_batching_config=batching
    )
    manager.start()
    n = len(work.prompts)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        pending = list(range(n))
        while len(results) < n:
            now = time.perf_counter() - start
            while pending and work.arrivals_s[pending[0]] <= now:
                i = pending.pop(0)
                manager.add_request(
                    work.prompts[i],
                    request_id=str(i),
                    max_new_tokens=work.outputs[i],
                    record_timestamps=True,
                )
            result = manager.get_result(timeout=0.05)
            if result is None:
                if not manager.is_running() and pending == []:
                    break
                continue
            if result.is_finished():
                results[result.request_id] = result
    finally:
        manager.stop(block=True)
    seconds = time.perf_counter() - start
    if len(results) < n:
        raise RuntimeError(f"transformers' continuous batching returned {len(results)} of {n}")
    tokens, ttft, latency = [], [], []
    for i in range(n):
        r = results[str(i)]
        if r.error:
            raise RuntimeError(f"transformers' continuous batching failed request {i}: {r.error}")
        tokens.append(list(r.generated_tokens))
        stamps = r.timestamps or [r.lifespan[1]]
        ttft.append(stamps[0] - start - work.arrivals_s[i])
        latency.append(stamps[-1] - start - work.arrivals_s[i])
    return Served(tokens, [[] for _ in range(n)], ttft, latency, seconds, None, {})


# --- metrics -----------------------------------------------------------------------------------


def output_logits(model: Any, prompt: list[int], out: list[int]) -> list[torch.Tensor]:
    """Teacher-forced over ``prompt`` and ``out``: the logits that predict each token of ``out``
    ([len(out), vocab]), after each loop of a recursive model (the last: full depth), else the
    model's one."""
    ids = torch.tensor([prompt + out[:-1]], device=next(model.parameters()).device)
    logits = model.loop_logits(ids) if hasattr(model, "loop_logits") else (model(ids).logits,)
    span = slice(len(prompt) - 1, len(prompt) - 1 + len(out))
    return [lg[0, span] for lg in logits]


@torch.inference_mode()
def full_depth_view(model: Any, work: Workload, outputs: list[list[int]]) -> dict[str, Any]:
    """Teacher-forced over each request's prompt and output: how many output tokens are the
    model's full-depth greedy token for the same prefix (agreement), and, for a recursive model,
    the oracle exit loop of each (the first loop whose greedy token is the full depth's)."""
    recursive = hasattr(model, "loop_logits")
    same, total, oracle = 0, 0, []
    for prompt, out in zip(work.prompts, outputs, strict=True):
        if not out:
            continue
        greedy = [lg.argmax(-1) for lg in output_logits(model, prompt, out)]
        target = torch.tensor(out, device=greedy[-1].device)
        same += int((greedy[-1] == target).sum())
        total += len(out)
        if recursive:
            hits = torch.stack([g == greedy[-1] for g in greedy])  # [B, n]
            oracle += (hits.float().argmax(0) + 1).tolist()
    return {"agreement": same / max(1, total), "oracle_exit_loops": oracle}


def sequence_agreement(tokens: list[list[int]], reference: list[list[int]] | None) -> float | None:
    """Output tokens equal to the full-depth greedy output at the same position (a token that
    differs changes the prefix of every later one, so this is stricter than ``agreement``)."""
    if reference is None:
        return None
    hits = sum(
        sum(a == b for a, b in zip(out, ref, strict=False))
        for out, ref in zip(tokens, reference, strict=True)
    )
    return hits / max(1, sum(len(r) for r in reference))


def summarize(
    served: Served, work: Workload, view: dict[str, Any], peaks: dict[str, Any] | None = None
) -> dict[str, Any]:
    lat, ttft = np.array(served.latency_s), np.array(served.ttft_s)
    produced = sum(len(t) for t in served.tokens)
    loops = [loop for per in served.exit_loops for loop in per]
    hist = Counter(loops)
    return {
        "tokens_per_s": produced / served.seconds,
        "seconds": served.seconds,
        "output_tokens": produced,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p90_s": float(np.percentile(lat, 90)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p90_s": float(np.percentile(ttft, 90)),
        "mean_exit_loop": float(np.mean(loops)) if loops else None,
        "exit_loop_histogram": {str(k): hist[k] for k in sorted(hist)} or None,
        "agreement": view["agreement"],
        "sequence_agreement": None,
        "peak_mem_mb": served.peak_mem_mb,
        "threshold": None,
        "kv_fill": None,
        **served.extra,
        **roofline(served.cost, produced, produced / served.seconds, peaks),
    }


def roofline_seconds(flops: float, nbytes: float, peaks: dict[str, Any]) -> tuple[float, str]:
    """The least time ``flops`` and ``nbytes`` take at the measured ceilings (the slower of
    reading the bytes at the memory bandwidth and doing the FLOPs at the matmul rate), and which
    of the two binds."""
    memory = nbytes / (peaks["memory_gb_per_s"] * 1e9)
    compute = flops / (peaks["matmul_gflop_per_s"] * 1e9)
    return max(memory, compute), "memory" if memory >= compute else "compute"


def roofline(
    cost: dict[str, float] | None, produced: int, tokens_per_s: float, peaks: dict[str, Any] | None
) -> dict[str, Any]:
    """Where a system stands against the machine: the FLOPs and bytes its steps needed per
    output token (:mod:`rrt.serving.cost`), the tokens/s the measured memory bandwidth and matmul
    rate would allow at those counts (the lower of the two is the roofline, and names the bound),
    and its decode steps' bytes and FLOPs over their measured time. None where a system's steps
    cannot be seen (transformers' continuous batching, the simulated estimate)."""
    out: dict[str, Any] = dict.fromkeys(ROOFLINE_FIELDS)
    if not cost or not produced:
        return out
    out["flops_per_token"] = cost["flops"] / produced
    out["bytes_per_token"] = cost["bytes"] / produced
    steps, seconds = int(cost["decode_steps"]), cost["decode_seconds"]
    if steps and seconds > 0:
        out["decode_steps"] = steps
        out["decode_step_ms"] = 1e3 * seconds / steps
        out["decode_bytes_per_step"] = cost["decode_bytes"] / steps
        out["decode_gb_per_s"] = cost["decode_bytes"] / seconds / 1e9
        out["decode_gflop_per_s"] = cost["decode_flops"] / seconds / 1e9
    if peaks:
        seconds, out["roofline_bound"] = roofline_seconds(
            out["flops_per_token"], out["bytes_per_token"], peaks
        )
        out["roofline_tokens_per_s"] = 1 / seconds
        out["roofline_fraction"] = tokens_per_s / out["roofline_tokens_per_s"]
        if out["decode_gb_per_s"] is not None:
            out["decode_bandwidth_fraction"] = out["decode_gb_per_s"] / peaks["memory_gb_per_s"]
            out["decode_compute_fraction"] = out["decode_gflop_per_s"] / peaks["matmul_gflop_per_s"]
    return out


def exit_ceiling(
    model: Any, baseline: Any, work: Workload, rows: int, peaks: dict[str, Any]
) -> dict[str, Any]:
    """What the counts allow early exit at best (:class:`~rrt.serving.cost.CostModel`): decode
    steps of ``rows`` rows at the workload's mean decoding position, depth-wise with every token
    leaving after loop 1 (its deeper keys and values propagated: the least work any exit system
    does), against the same steps without exits and against the full-size model's (c), each at
    its roofline (the tokens/s the measured ceilings allow at its counts). Where ``x_(c)`` is
    under the paper's 1.5, no engine reaches 1.5x (c) with this model on this machine."""
    from rrt.serving.cost import CostModel
    from rrt.serving.request import Kind, Work
    from rrt.serving.runner import Runner

    positions = [
        len(p) + i for p, n in zip(work.prompts, work.outputs, strict=True) for i in range(n)
    ]
    at = round(float(np.mean(positions)))
    loops = model.num_loops

    def seconds(
        cost: CostModel, works: list[Work], fills: list[Work], asks: int, sequence: bool = False
    ) -> float:
        step = cost.step(works, fills, sequence, asks, sum(w.loop == 0 for w in works))
        return roofline_seconds(step.flops, step.bytes, peaks)[0]

    def rows_at(loops_of_rows: list[int], kind: Kind = Kind.MAIN) -> list[Work]:
        return [Work(None, at, loop, kind, ids=[0]) for loop in loops_of_rows]

    counts = CostModel.of(Runner(model))
    # Without exits, row i is at loop (i + s) % loops in step s: over ``loops`` steps each row
    # passes every loop once and leaves one token, whether or not ``rows`` splits evenly.
    steps = [[(i + s) % loops for i in range(rows)] for s in range(loops)]
    depthwise = rows / sum(seconds(counts, rows_at(o), [], o.count(loops - 1)) for o in steps)
    # Every token leaves after loop 1: every row asks the head each step, its deeper loops' keys
    # and values filled by propagation.
    fills = rows_at([j for j in range(1, loops) for _ in range(rows)], Kind.PROPAGATE)
    all_exit = rows / seconds(counts, rows_at([0] * rows), fills, rows)
    full = None
    if baseline is not None:
        baseline_counts = CostModel.of(Runner(baseline))
        full = rows / seconds(baseline_counts, rows_at([0] * rows), [], rows, sequence=True)
    return {
        "rows": rows,
        "position": at,
        "depthwise_tokens_per_s": depthwise,
        "all_exit_tokens_per_s": all_exit,
        "sequence_continuous_tokens_per_s": full,
        "all_exit_x_depthwise": all_exit / depthwise,
        "all_exit_x_sequence_continuous": all_exit / full if full else None,
    }


def simulated(depthwise: dict[str, Any], oracle: list[int], loops: int) -> dict[str, Any]:
    """The paper's estimate: depth-wise throughput scaled by the loop work that oracle exits
    (the first loop whose token is the full depth's) would leave, with exited tokens' deeper KV
    skipped, so every skipped loop is free and agreement is 1 by construction."""
    mean = float(np.mean(oracle)) if oracle else float(loops)
    scale = loops / mean
    return {
        "tokens_per_s": depthwise["tokens_per_s"] * scale,
        "seconds": depthwise["seconds"] / scale,
        "output_tokens": depthwise["output_tokens"],
        "latency_p50_s": depthwise["latency_p50_s"] / scale,
        "latency_p90_s": depthwise["latency_p90_s"] / scale,
        "latency_p99_s": depthwise["latency_p99_s"] / scale,
        "ttft_p50_s": depthwise["ttft_p50_s"],
        "ttft_p90_s": depthwise["ttft_p90_s"],
        "mean_exit_loop": mean,
        "exit_loop_histogram": {str(k): v for k, v in sorted(Counter(oracle).items())},
        "agreement": 1.0,
        "sequence_agreement": None,
        "peak_mem_mb": depthwise["peak_mem_mb"],
        "threshold": None,
        "kv_fill": "skipped",
        "estimate": "depthwise tokens/s x loops / mean oracle exit loop",
        **dict.fromkeys(ROOFLINE_FIELDS),
    }


# --- the whole benchmark -----------------------------------------------------------------------


@torch.inference_mode()
def peaks(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """The machine's ceilings, measured here rather than taken from a data sheet: the memory
    bandwidth of a large copy (bytes read and written, best of several) and the matmul rate of
    square matrices in the served dtype (best of several), with the benchmark's threads."""
    cuda = device.type == "cuda"

    def best(fn, reps: int) -> float:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        return min(times)

    reps = 10 if cuda else 5
    copy_bytes = 2**30 if cuda else 2**28
    buffers = [
        torch.ones(copy_bytes // 4, device=device),
        torch.empty(copy_bytes // 4, device=device),
    ]
    copy_s = best(lambda: buffers[1].copy_(buffers[0]), reps)
    buffers.clear()
    n = 8192 if cuda else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    matmul_s = best(lambda: torch.matmul(a, b), reps)
    return {
        "memory_gb_per_s": 2 * copy_bytes / copy_s / 1e9,
        "matmul_gflop_per_s": 2 * n**3 / matmul_s / 1e9,
        "measured_by": (
            f"copy of {copy_bytes // 2**20} MiB (read + write), best of {reps}; "
            f"{n}x{n} matmul in {str(dtype).removeprefix('torch.')}, best of {reps}"
        ),
    }


def hardware(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    info = {
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": __import__("os").cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def benchmark(
    model_dir: str | Path,
    baseline_dir: str | Path | None,
    data: str | Path,
    cfg: BenchConfig,
    device: str = "auto",
    log: Any = None,
    gguf: str | Path | None = None,
) -> dict[str, Any]:
    """Every chosen system on one workload; the JSON that ``rrt benchmark`` writes. ``gguf``:
    the baseline's weights as a GGUF file, for the ``llama_cpp`` system."""
    from rrt import store
    from rrt.model.modeling import RecursiveForCausalLM

    say = log or (lambda text: print(text, file=sys.stderr, flush=True))
    model = store.load_model(model_dir, dtype=cfg.dtype, device=device)
    if not isinstance(model, RecursiveForCausalLM):
        raise UserError(f"{model_dir} is not a recursive model: benchmark serves one with --model")
    chosen = cfg.chosen
    needs_baseline = [s for s in chosen if s in FULL_SIZE_SYSTEMS]
    if needs_baseline and baseline_dir is None:
        raise UserError(f"systems {', '.join(needs_baseline)} need the full-size --baseline model")
    if "llama_cpp" in chosen and gguf is None:
        raise UserError("system llama_cpp needs --gguf: the --baseline model's weights as GGUF")
    if "llama_cpp" in chosen and not Path(gguf).is_file():
        raise UserError(f"--gguf {gguf}: no such file")
    baseline = (
        store.load_model(baseline_dir, dtype=cfg.dtype, device=device) if needs_baseline else None
    )
    tokenizer = store.load_tokenizer(model_dir)
    dev = next(model.parameters()).device
    context = model.config.text_config.max_position_embeddings
    docs = documents(data, "test", tokenizer, cfg.requests)
    work = draw_workload(docs, cfg, context)
    memory = PeakMemory(dev)
    dtype = next(model.parameters()).dtype  # the one served
    say("measuring the machine's memory bandwidth and matmul rate")
    ceilings = peaks(dev, dtype)
    systems: dict[str, dict[str, Any]] = {}
    calibration = None
    if "depthwise_exit" in chosen:
        say("calibrating exit thresholds on the validation split")
        held_out = documents(data, "validation", tokenizer, cfg.calibration_documents)
        asked = dataclasses.replace(cfg, requests=len(held_out), arrival="all")
        work_held_out = draw_workload(held_out, asked, context)
        propagate = "propagate" in cfg.kv_fills
        calibration = calibrate(model, work_held_out, cfg.agreement_targets, propagate)
    plan: dict[str, Any] = {}
    if "vanilla" in chosen:
        plan["vanilla"] = lambda: serve_vanilla(baseline, work, cfg)
    if "vanilla_compiled" in chosen:
        plan["vanilla_compiled"] = lambda: serve_vanilla(baseline, work, cfg, compiled=True)
    if "hf_continuous" in chosen:
        plan["hf_continuous"] = lambda: serve_hf_continuous(baseline, work, cfg)
    if "llama_cpp" in chosen:
        plan["llama_cpp"] = lambda: serve_llama_cpp(gguf, baseline, work, cfg)
    if "sequence_continuous" in chosen:
        plan["sequence_continuous"] = lambda: serve_engine(baseline, work, cfg, mode="sequence")
    if "recursive_sequence" in chosen:
        plan["recursive_sequence"] = lambda: serve_engine(model, work, cfg, mode="sequence")
    if "depthwise" in chosen or "simulated" in chosen:
        plan["depthwise"] = lambda: serve_engine(model, work, cfg)
    targets: dict[str, float] = {}  # an exit system's agreement target
    for target, row in (calibration or {}).get("targets", {}).items():
        for fill in cfg.kv_fills:
            t = row["propagate"]["threshold"] if fill == "propagate" else row["threshold"]
            name = names.exit_system(t, fill).name
            targets.setdefault(name, float(target))
            plan[name] = lambda t=t, fill=fill: serve_engine(
                model, work, cfg, exit_threshold=t, kv_fill=fill
            )
    outputs: dict[str, list[list[int]]] = {}
    oracle: list[int] = []
    for name, run in plan.items():
        say(f"serving: {name}")
        memory.reset()
        try:
            served = run()
        except Exception as err:  # one system failing must not lose the others' numbers
            systems[name] = {"error": f"{type(err).__name__}: {err}"}
            say(f"  {name} failed: {systems[name]['error']}")
            continue
        served.peak_mem_mb = memory.mb()
        full_size = name in FULL_SIZE_SYSTEMS
        served_by = baseline if full_size else model
        view = full_depth_view(served_by, work, served.tokens)
        outputs[name] = served.tokens
        systems[name] = summarize(served, work, view, ceilings)
        system = names.parse_system(name)
        if system.threshold is not None:
            systems[name].update(threshold=system.threshold, kv_fill=system.kv_fill)
            systems[name]["agreement_target"] = targets.get(name)
        if name == "depthwise":
            oracle = view["oracle_exit_loops"]
        say(f"  {name}: {systems[name]['tokens_per_s']:.1f} tokens/s")
    for name, tokens in outputs.items():  # against the same model's full-depth greedy output
        reference = outputs.get("sequence_continuous" if name in FULL_SIZE_SYSTEMS else "depthwise")
        systems[name]["sequence_agreement"] = sequence_agreement(tokens, reference)
    if "simulated" in chosen and "tokens_per_s" in systems.get("depthwise", {}):
        systems["simulated"] = simulated(systems["depthwise"], oracle, model.num_loops)
    depthwise = systems.get("depthwise", {})
    for row in systems.values():  # exits against depth-wise without them: measured, and counted
        if row.get("threshold") is not None and "tokens_per_s" in depthwise:
            row["x_depthwise"] = row["tokens_per_s"] / depthwise["tokens_per_s"]
            if row["roofline_tokens_per_s"] and depthwise["roofline_tokens_per_s"]:
                counted = row["roofline_tokens_per_s"] / depthwise["roofline_tokens_per_s"]
                row["x_depthwise_counted"] = counted
    if "tokens_per_s" in systems.get("vanilla", {}):
        for row in systems.values():
            if "tokens_per_s" in row:
                row["speedup_vs_vanilla"] = row["tokens_per_s"] / systems["vanilla"]["tokens_per_s"]
    failed = {name: row["error"] for name, row in systems.items() if "error" in row}
    if failed and not cfg.allow_errors:
        name, error = next(iter(failed.items()))
        raise UserError(
            f"{len(failed)} of {len(systems)} systems failed ({', '.join(failed)}); {name}: "
            f"{error}; nothing was written (--allow-errors writes the others' results)"
        )
    return {
        "model": str(model_dir),
        "baseline": str(baseline_dir) if baseline_dir else None,
        "loops": model.num_loops,
        "workload": work.describe(cfg),
        "hardware": {**hardware(dev, dtype), "peaks": ceilings},
        "calibration": calibration,
        "systems": systems,
        "exit_ceiling": exit_ceiling(model, baseline, work, cfg.max_batch, ceilings),
    }
