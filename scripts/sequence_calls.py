"""Serve one workload sequence-wise with two compiled engines in one process, in turn: every loop
in one graph call a step (the engine's way) against one call a loop (as before 8d7b01c). Both
share the process's autotuning, so they run the same matmul kernels; prints each generation's
tokens/s and mean decode step, and whether their tokens are equal. Each engine compiles every
row bucket first (minutes each on a 2-core CPU).

    python scripts/sequence_calls.py MODEL_DIR [--threads 1] [--max-batch 4 16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rrt import config, store
from rrt.serving import Engine


def a_call_a_loop(engine: Engine) -> None:
    """Make ``engine``'s compiled step call its graph once a loop, each call one loop's views at
    its layer offset, the exit head in the last."""
    runner = engine.runner
    graph = runner._graph

    def call(h, cache, key_pos, pos, depth0, slots, views, base, sequence, fill, head):
        for loop, name in enumerate(views):
            last = loop == len(views) - 1
            at = base + loop * runner.shared
            h, choice = graph(
                h, cache, key_pos, pos, depth0, slots, (name,), at, sequence, fill, last and head
            )
        return h, choice

    runner._graph = call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config.set_threads(args.threads)
    model = store.load_model(args.model, dtype="fp32", device="cpu")
    for rows in args.max_batch:
        engines = {
            "one call": Engine(model, mode="sequence", max_batch=rows, compile=True),
            "a call a loop": Engine(model, mode="sequence", max_batch=rows, compile=True),
        }
        a_call_a_loop(engines["a call a loop"])
        for engine in engines.values():
            engine.warm_up()
        rng = random.Random(0)
        prompts = [[rng.randrange(10, 500) for _ in range(rng.randrange(10, 60))]
                   for _ in range(4 * rows)]  # fmt: skip
        new = [rng.randrange(64, 192) for _ in prompts]
        speed: dict[str, list[float]] = {name: [] for name in engines}
        step: dict[str, list[float]] = {name: [] for name in engines}
        tokens = {}
        for _ in range(args.repeats):
            for name, engine in engines.items():
                start = time.perf_counter()
                out = engine.generate(prompts, new, ignore_eos=True, progress=False)
                seconds = time.perf_counter() - start
                speed[name].append(sum(len(g.tokens) for g in out) / seconds)
                step[name].append(
                    1e3 * engine.stats["decode_seconds"] / engine.stats["decode_steps"]
                )
                tokens[name] = [g.tokens for g in out]
        for name in engines:
            print(
                f"max_batch {rows}, {name}: median {statistics.median(speed[name]):,.0f} tokens/s, "
                f"decode step {statistics.median(step[name]):.3f} ms "
                f"(runs: {', '.join(f'{s:,.0f}' for s in speed[name])})"
            )
        print(f"max_batch {rows}: tokens equal: {tokens['one call'] == tokens['a call a loop']}")


if __name__ == "__main__":
    main()
