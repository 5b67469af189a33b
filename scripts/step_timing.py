"""Time a compiled engine's depth-wise step graph with its rotary cos and sin gathered from the
table (:class:`rrt.serving.runner.RotaryTable`) against computed inside the graph, in one
process, in turn, best of three, at rows x key lengths; prints a line each. Both engines
compile every row bucket first (a few minutes each on a 2-core CPU).

    python scripts/step_timing.py MODEL_DIR [--threads 1] [--max-len 160]  (above 64)
"""

from __future__ import annotations

import argparse
import time

import torch

from rrt import config, store
from rrt.serving import Engine
from rrt.serving import runner as served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=160)
    args = parser.parse_args()
    if args.max_len <= 64:
        parser.error(
            f"--max-len {args.max_len}: the rows sit at positions 60 to 63; give 65 or more"
        )
    config.set_threads(args.threads)
    model = store.load_model(args.model, dtype="fp32", device="cpu")
    serves = served.RotaryTable.serves
    engines = {}
    try:
        for name, table in (("table", True), ("in the graph", False)):
            served.RotaryTable.serves = staticmethod(serves if table else lambda rotary: False)
            engines[name] = Engine(model, max_batch=4, max_len=args.max_len, compile=True)
            engines[name].warm_up()
    finally:
        served.RotaryTable.serves = serves
    hidden = engines["table"].runner.hidden_size
    best: dict[tuple[str, int, int], float] = {}
    for _ in range(3):
        for length in (16, 64, args.max_len - 10):
            for rows in (1, 4, 8):
                h = torch.randn(1, rows, hidden)
                layout = torch.tensor([[60 + i % 4, i % 2, i % 4, -1] for i in range(rows)])
                for name, engine in engines.items():
                    runner, cache = engine.runner, engine._cache()
                    with torch.inference_mode(), runner.serving():
                        for _ in range(10):
                            runner._graph_of(h, layout, cache, False, length)
                        start = time.perf_counter()
                        for _ in range(200):
                            runner._graph_of(h, layout, cache, False, length)
                    ms = (time.perf_counter() - start) / 200 * 1e3
                    key = (name, length, rows)
                    best[key] = min(best.get(key, ms), ms)
    for (name, length, rows), ms in best.items():
        if name == "table":
            other = best[("in the graph", length, rows)]
            print(f"{length} keys, {rows} rows: in the graph {other:.3f} ms, table {ms:.3f} ms")


if __name__ == "__main__":
    main()
