"""Serve one workload with compiled engines in one process, in turn: the engine's step against
its earlier forms, each an engine changed back in one thing: one graph call a loop sequence-wise
(as before 8d7b01c; ``--against loop``), or every row's input a hidden state, the first loop's
embedded eagerly before the call (as before the graph looked token ids up; ``--against embed``).
All share the process's autotuning, so they run the same matmul kernels; prints each
generation's tokens/s and mean decode step, and whether the tokens equal the engine's. Each
engine compiles every row bucket first (minutes each on a 2-core CPU).

    python scripts/step_forms.py MODEL_DIR [--threads 1] [--max-batch 4 16] [--repeats 5]
        [--mode sequence|depthwise] [--against loop embed]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from rrt import config, store
from rrt.serving import Engine
from rrt.serving.runner import MAX_ROWS


def _no_ids(ids: torch.Tensor, views: tuple[str, ...]) -> torch.Tensor:
    """Token ids that ask the step graph to embed no row (every row's input its hidden state),
    as dynamic in their rows as ``ids`` are in the prompt chunks' graph."""
    none = torch.full_like(ids, -1)
    if views[0].startswith("chunk"):
        torch._dynamo.mark_dynamic(none, 0, min=2, max=MAX_ROWS)
    return none


def a_call_a_loop(engine: Engine) -> None:
    """Make ``engine``'s compiled step call its graph once a loop, each call one loop's views at
    its layer offset, the exit head in the last."""
    runner = engine.runner
    graph = runner._graph

    def call(ids, h, cache, key_pos, pos, depth0, slots, views, base, sequence, fill, head):
        for loop, name in enumerate(views):
            last = loop == len(views) - 1
            at = base + loop * runner.shared
            step = (cache, key_pos, pos, depth0, slots, (name,), at, sequence, fill, last and head)
            h, choice = graph(ids if loop == 0 else _no_ids(ids, views), h, *step)
        return h, choice

    runner._graph = call


def eager_embedding(engine: Engine) -> None:
    """Make ``engine``'s compiled step take every row's input as a hidden state, the first
    loop's rows embedded eagerly (``Runner._inputs``, the eager engine's), none by the graph."""
    runner = engine.runner
    graph = runner._graph

    def carried(works, rows, sequence):
        h = runner._inputs(works)[0]
        return torch.cat([h, h.new_zeros(rows - h.shape[0], h.shape[1])])[None]

    def call(ids, h, *step):
        if h is None:  # warm_up, sequence-wise: compile the graph that takes hidden states
            h = torch.zeros(1, ids.shape[0], runner.hidden_size, dtype=runner.dtype)
            if step[5][0].startswith("chunk"):
                torch._dynamo.mark_dynamic(h, 1, min=2, max=MAX_ROWS)
        return graph(_no_ids(ids, step[5]), h, *step)

    runner._carried, runner._graph = carried, call


EARLIER = {"loop": ("a call a loop", a_call_a_loop), "embed": ("eager embedding", eager_embedding)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batch", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", nargs="+", choices=sorted(EARLIER), default=sorted(EARLIER))
    parser.add_argument("--mode", choices=["sequence", "depthwise"], default="sequence")
    args = parser.parse_args()
    if args.mode == "depthwise" and "loop" in args.against:
        parser.error("--against loop compares sequence-wise steps only: give --against embed")
    config.set_threads(args.threads)
    model = store.load_model(args.model, dtype="fp32", device="cpu")
    for rows in args.max_batch:
        engines = {"now": Engine(model, mode=args.mode, max_batch=rows, compile=True)}
        for key in args.against:
            name, change = EARLIER[key]
            engines[name] = Engine(model, mode=args.mode, max_batch=rows, compile=True)
            change(engines[name])
        rng = random.Random(0)
        prompts = [[rng.randrange(10, 500) for _ in range(rng.randrange(10, 60))]
                   for _ in range(4 * rows)]  # fmt: skip
        new = [rng.randrange(64, 192) for _ in prompts]
        for engine in engines.values():
            engine.warm_up()  # through the changed graph call: compiles the changed graphs
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
                f"(runs: {', '.join(f'{s:,.0f}' for s in speed[name])}), "
                f"tokens equal the engine's: {tokens[name] == tokens['now']}"
            )


if __name__ == "__main__":
    main()
