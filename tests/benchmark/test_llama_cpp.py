"""llama.cpp as a peer: the continuous-batching loop it is served by, and its errors."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from rrt.benchmark.llama_cpp import LlamaCpp, serve_continuous
from rrt.errors import UserError


class Recorder:
    """A decoder whose greedy next token is the last fed token + 1, checking what it is fed:
    each sequence's positions follow on from its KV, and released sequences start again at 0."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.kv: dict[int, int] = {}  # sequence: positions held
        self.steps: list[list[tuple[int, list[int], int, bool]]] = []
        self.released: list[int] = []

    def decode(self, entries):
        self.steps.append(entries)
        assert len({seq for seq, *_ in entries}) == len(entries)  # one entry a sequence
        out = {}
        for seq, toks, pos, want in entries:
            assert 0 <= seq < self.slots
            assert pos == self.kv.get(seq, 0)
            self.kv[seq] = pos + len(toks)
            if want:
                out[seq] = toks[-1] + 1
        return out

    def release(self, seq: int) -> None:
        self.released.append(seq)
        del self.kv[seq]


def test_continuous_serving_feeds_each_decoding_row_and_chunks_prompts_into_the_budget():
    prompts = [list(range(10 * i, 10 * i + n)) for i, n in enumerate([5, 9, 3, 12, 7])]
    work = SimpleNamespace(
        prompts=prompts, outputs=[4, 1, 6, 3, 2], arrivals_s=[0.0, 0.0, 0.0, 0.02, 0.0]
    )
    dec = Recorder(slots=2)
    run = serve_continuous(work, max_batch=2, max_batch_tokens=6, decode=dec.decode,
                           release=dec.release)  # fmt: skip
    for i, p in enumerate(prompts):  # greedy through the fake: last prompt token + 1, + 2, ...
        assert run.tokens[i] == [p[-1] + k for k in range(1, work.outputs[i] + 1)]
    assert len(dec.released) == 5  # once a request, when its last token is out
    assert dec.kv == {}  # every sequence's KV freed
    for entries in dec.steps:
        decoding = sum(1 for _, toks, pos, _ in entries if len(toks) == 1 and pos > 0)
        assert sum(len(t) for _, t, _, _ in entries) <= max(6, decoding)
        assert len(entries) <= 2
    assert run.steps == len(dec.steps)
    for i in range(5):
        assert 0 <= run.ttft_s[i] <= run.latency_s[i] <= run.seconds
    assert run.ttft_s[3] + 0.02 <= run.seconds  # the late request waited for its arrival


def test_llama_cpp_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when not installed
    with pytest.raises(UserError, match="system llama_cpp needs llama-cpp-python"):
        LlamaCpp("model.gguf", slots=1, max_len=8, step_tokens=8, threads=1, gpu=False)


def test_a_context_llama_cpp_cannot_make_frees_the_model_and_is_one_line(monkeypatch):
    freed = []
    fake = SimpleNamespace(
        llama_log_callback=lambda fn: fn,
        llama_log_set=lambda *args: None,
        llama_backend_init=lambda: None,
        llama_model_default_params=SimpleNamespace,
        llama_context_default_params=SimpleNamespace,
        llama_model_load_from_file=lambda path, params: "model",
        llama_init_from_model=lambda model, params: None,  # as when its KV does not fit
        llama_model_free=freed.append,
    )
    monkeypatch.setitem(sys.modules, "llama_cpp", fake)
    with pytest.raises(UserError, match="could not make a context of 64 sequences of 512"):
        LlamaCpp("model.gguf", slots=64, max_len=512, step_tokens=8, threads=1, gpu=False)
    assert freed == ["model"]


def test_repeats_serve_the_workload_again_on_one_loaded_model(monkeypatch):
    """--repeats 3: llama.cpp's model is loaded and warmed up once, then serves the whole
    workload three times; the benchmark reports the run of median time and all three times."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rrt.benchmark import bench, llama_cpp

    loaded: list[Recorder] = []

    class Fake(Recorder):
        def __init__(self, gguf, slots, max_len, step_tokens, threads, gpu) -> None:
            super().__init__(slots)
            loaded.append(self)

        def close(self) -> None:
            pass

    monkeypatch.setattr(llama_cpp, "LlamaCpp", Fake)
    shape = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32}
    baseline = LlamaForCausalLM(
        LlamaConfig(**shape, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)
    )
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    work = bench.Workload(prompts, [3, 2, 4], [0.0, 0.0, 0.0])
    cfg = SimpleNamespace(max_batch=2, max_batch_tokens=8, repeats=3)
    served = bench.serve_llama_cpp("model.gguf", baseline, work, cfg)
    assert len(loaded) == 1
    warm_up = 2  # two short requests, fed once before the three runs
    assert len(loaded[0].released) == warm_up + 3 * len(prompts)
    runs = served.extra["seconds_runs"]
    assert len(runs) == 3 and served.seconds == sorted(runs)[1]
    outputs = zip(prompts, work.outputs, strict=True)
    assert served.tokens == [[p[-1] + k for k in range(1, n + 1)] for p, n in outputs]
