"""Serve one workload with compiled (c) engines (the model at full depth, sequence-wise) in one
process, in turn, each compiled with the engine's settings (``rrt.serving.runner.cpu_settings``)
but for the backends among which ``max_autotune`` chooses its matmul kernels (Inductor's
``max_autotune_gemm_backends``): ``ATEN`` is oneDNN's kernels (frozen, packed weights), ``CPP``
Inductor's own C++ GEMM. Prints the machine's ceilings, each engine's compile time, then, at
each number of requests served at once, each engine's median decode step and whether its tokens
equal the first engine's. Every engine compiles every row bucket up to the most requests first
(minutes each on a 2-core CPU).

    python scripts/gemm_choice.py MODEL_DIR [--dtype bf16] [--requests 1 4 16]
        [--backends ATEN,CPP ATEN] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from unittest import mock

import torch

from rrt import config, store
from rrt.benchmark.bench import peaks
from rrt.serving import Engine
from rrt.serving.runner import cpu_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--backends", nargs="+", default=["ATEN,CPP", "ATEN"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    config.set_threads(args.threads)
    model = store.load_model(args.model, dtype=args.dtype, device="cpu")
    print(peaks(torch.device("cpu"), model.dtype), flush=True)
    engines = {}
    for backends in args.backends:
        engine = Engine(
            model, mode="sequence", max_batch=max(args.requests), max_len=160, compile=True,
            dtype=args.dtype, eos_token_id=[],
        )  # fmt: skip
        settings = cpu_settings(model.dtype) | {"max_autotune_gemm_backends": backends}
        start = time.perf_counter()
        with mock.patch(
            "rrt.serving.runner.compiling",
            lambda device, dtype, s=settings: torch._inductor.config.patch(**s),
        ):
            engine.warm_up()  # compiles every graph a generation can call
        print(f"{backends}: compiled in {time.perf_counter() - start:.0f} s", flush=True)
        engines[backends] = engine
    rng = random.Random(0)
    for requests in args.requests:
        prompts = [[rng.randrange(10, 500) for _ in range(rng.randrange(20, 40))]
                   for _ in range(requests)]  # fmt: skip
        step: dict[str, list[float]] = {name: [] for name in engines}
        tokens = {}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                out = engine.generate(prompts, args.new_tokens, ignore_eos=True, progress=False)
                stats = engine.stats
                step[name].append(1e3 * stats["decode_seconds"] / stats["decode_steps"])
                tokens[name] = [g.tokens for g in out]
        first = tokens[args.backends[0]]
        for name in engines:
            print(
                f"{requests} requests, {name}: decode step {statistics.median(step[name]):.2f} ms "
                f"(runs: {', '.join(f'{s:.2f}' for s in step[name])}), "
                f"tokens equal {args.backends[0]}'s: {tokens[name] == first}",
                flush=True,
            )


if __name__ == "__main__":
    main()
