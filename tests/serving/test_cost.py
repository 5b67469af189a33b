"""The roofline's counts: FLOPs and bytes of the engine's steps, against counts made by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _families import source_model
from torch import nn

from rrt.method.convert import convert
from rrt.method.relax import relax
from rrt.serving import Engine
from rrt.serving.request import Kind


def work(n: int, start: int, loop: int = 0) -> SimpleNamespace:
    """A stand-in for a :class:`~rrt.serving.request.Work`: what the counts read."""
    return SimpleNamespace(n=n, start=start, loop=loop, kind=Kind.MAIN)


def linears(model) -> list[nn.Linear]:
    return [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)]


def test_a_full_size_step_counts_every_linear_the_causal_keys_and_the_head():
    model = source_model("llama")
    cfg = model.config
    cost = Engine(model).cost.step([work(3, 2)], [], True, asks=1, embeds=3)
    macs = sum(m.in_features * m.out_features for m in linears(model))
    weights = sum(p.numel() for m in linears(model) for p in m.parameters())
    layers, heads, head_dim = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    seen = 3 + 4 + 5  # queries at positions 2, 3, 4 see the keys up to their own
    head = cfg.hidden_size * cfg.vocab_size
    assert cost.flops == 2 * 3 * macs + layers * seen * 4 * heads * head_dim + 2 * head
    kv = 2 * cfg.num_key_value_heads * head_dim  # a key and a value, per position and depth
    read, written = 5, 3
    assert cost.bytes == 4 * (weights + layers * (read + written) * kv + head + 3 * cfg.hidden_size)


def test_sliding_windows_limit_the_keys_each_query_sees():
    model = source_model("gemma2")
    window, layers = model.config.sliding_window, model.config.num_hidden_layers
    windows = [window if t == "sliding_attention" else 0 for t in model.config.layer_types]
    engine = Engine(model)
    start, n = 9, 4
    cost = engine.cost.step([work(n, start)], [], True, asks=0, embeds=0)
    per_key = 4 * model.config.num_attention_heads * model.config.head_dim
    seen = sum(min(p + 1, w) if w else p + 1 for w in windows for p in range(start, start + n))
    macs = sum(m.in_features * m.out_features for m in linears(model))
    assert cost.flops == 2 * n * macs + seen * per_key
    assert 0 < windows.count(window) < layers  # both kinds of layer were counted


@pytest.fixture(scope="module")
def relaxed():
    source = source_model("llama", seed=0)
    return relax(convert(source, loops=2, init="average"), source, rank=4)


LENGTHS, NEW = (5, 12, 3, 8), [9, 6, 11, 7]


def served(model, **kwargs) -> Engine:
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 90, (n,), generator=g).tolist() for n in LENGTHS]
    engine = Engine(model, max_batch=3, max_batch_tokens=16, eos_token_id=[], **kwargs)
    engine.generate(prompts, NEW, progress=False)
    return engine


def test_a_fill_counts_only_the_key_and_value_projections_of_its_loop(relaxed):
    """State propagation needs an exited token's keys and values at the loop it skipped: the
    shared key and value projections with that loop's LoRA, not the queries or the output."""
    engine = Engine(relaxed)
    cost = engine.cost.step([], [work(2, 7, loop=1)], False, asks=0, embeds=0)
    runner = engine.runner
    kv = [
        getattr(runner.layers[i].self_attn, name)
        for i in range(runner.shared)
        for name in ("k_proj", "v_proj")
    ]
    macs = sum(m.in_features * m.out_features for m in kv)
    lora = sum(m.rank * (m.in_features + m.out_features) for m in kv)
    assert lora > 0
    assert cost.flops == 2 * 2 * (macs + lora)
    written = 2 * runner.shared * 2 * runner.kv_heads * runner.head_dim  # 2 rows, k and v
    assert cost.bytes == 4 * (macs + lora + written)


def test_depth_wise_batching_and_ride_along_compute_what_the_sequence_computes(relaxed):
    """Every token runs both loops whichever way it is batched: depth-wise, the FLOPs are the
    sequence-wise ones; with every decode token exiting after loop 1 and riding loop 2 for its
    KV, too, but for each request's last token, whose KV nothing reads. State propagation
    computes less: only the key and value projections of the skipped loop."""
    engines = {
        "sequence": served(relaxed, mode="sequence"),
        "depthwise": served(relaxed),
        "ride": served(relaxed, exit_threshold=1e-9, kv_fill="ride"),
        "propagate": served(relaxed, exit_threshold=1e-9, kv_fill="propagate"),
    }
    flops = {name: e.stats["flops"] for name, e in engines.items()}
    assert flops["depthwise"] == flops["sequence"]
    last = engines["ride"].cost  # the last token came from position n + new - 2, after loop 1
    unridden = sum(
        last.step([work(1, n + new - 2, loop=1)], [], False, asks=0, embeds=0).flops
        for n, new in zip(LENGTHS, NEW, strict=True)
    )
    assert flops["ride"] == flops["depthwise"] - unridden
    assert engines["ride"].stats["exits"] == engines["propagate"].stats["exits"] > 0
    assert flops["propagate"] < flops["ride"]
    for e in engines.values():
        stats = e.stats
        assert 0 < stats["decode_steps"] < stats["steps"]
        assert 0 < stats["decode_flops"] < stats["flops"]
        assert 0 < stats["decode_bytes"] < stats["bytes"]
        assert stats["decode_seconds"] > 0


def test_bf16_serving_reads_half_the_bytes_and_keeps_greedy_decoding(relaxed):
    """bf16, the dtype a GPU serves in: the cache holds bf16, the same schedule needs the same
    FLOPs and exactly half the bytes, and the tokens are bf16 greedy decoding's."""
    half = relax(convert(source_model("llama", seed=0), loops=2, init="average"),
                 source_model("llama", seed=0), rank=4).to(torch.bfloat16)  # fmt: skip
    fp32, bf16 = served(relaxed), served(half)
    assert bf16.cache.k.dtype == torch.bfloat16
    assert bf16.stats["flops"] == fp32.stats["flops"]
    assert bf16.stats["bytes"] == fp32.stats["bytes"] / 2
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(1, 90, (n,), generator=g).tolist() for n in LENGTHS]
    out = Engine(half, max_batch=3, max_batch_tokens=16, eos_token_id=[]).generate(
        prompts, NEW, progress=False
    )
    same = total = 0
    for o, prompt, new in zip(out, prompts, NEW, strict=True):
        ref = half.generate(
            torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
            pad_token_id=0, eos_token_id=None,
        )[0, len(prompt):].tolist()  # fmt: skip
        same += sum(a == b for a, b in zip(o.tokens, ref, strict=True))
        total += new
    assert same / total >= 0.9  # bf16 rounding may differ in kernel order; measured: all equal
