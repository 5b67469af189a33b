"""The serving engine: greedy output equal to `generate` token for token, real early exit, KV
entries of exited tokens, bad requests."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _families import VOCAB, source_model

from rrt.method.convert import convert
from rrt.method.relax import relax
from rrt.serving import Engine
from rrt.serving.runner import SERVED, RotaryTable, Runner, Static, bucket, rotary_at, round_up

PROMPT_LENGTHS = (3, 11, 6, 17, 1)
NEW_TOKENS = (9, 4, 12, 7, 10)


def prompts(seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in PROMPT_LENGTHS]


@torch.no_grad()
def reference(model, prompt: list[int], new: int, **kwargs) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        **kwargs,
    )
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module", params=["llama", "qwen3", "gemma2"])
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def models(family):
    source = source_model(family, seed=0)
    relaxed = relax(convert(source, loops=2, init="average"), source, rank=4)
    return source, relaxed


def served(model, **kwargs) -> Engine:
    return Engine(model, **{"max_batch": 3, "max_batch_tokens": 16, "eos_token_id": []} | kwargs)


def expected(model) -> list[list[int]]:
    return [reference(model, p, n) for p, n in zip(prompts(), NEW_TOKENS, strict=True)]


@pytest.mark.parametrize(
    "system", ["sequence_continuous", "recursive_sequence", "depthwise", "depthwise_staggered"]
)
def test_greedy_output_equals_generate_token_for_token(models, system):
    """Mixed prompt lengths, chunked prefill (16-token steps), 3 slots for 5 requests (slots are
    refilled), and staggered arrivals: every request still gets exactly generate's tokens."""
    source, relaxed = models
    model = source if system == "sequence_continuous" else relaxed
    mode = (
        "sequence" if system.endswith("sequence") or system.startswith("sequence") else "depthwise"
    )
    arrivals = [0.0, 0.0, 0.02, 0.05, 0.05] if system.endswith("staggered") else None
    out = served(model, mode=mode).generate(prompts(), list(NEW_TOKENS), arrivals, progress=False)
    assert [g.tokens for g in out] == expected(model)
    loops = 1 if model is source else 2
    assert all(g.exit_loops == [loops] * len(g.tokens) for g in out)
    assert all(g.finish_reason == "length" and g.error is None for g in out)


def test_the_engine_chooses_its_attention_once_and_leaves_the_models_own_alone(models):
    """The runner's views attend through the engine's attention, fixed when it is built; the
    model's config is never rewritten, so generate before, between and after runs is unchanged."""
    from rrt.serving.runner import ATTENTION

    _, model = models
    configs = (model.config, model.config.text_config)
    before = [c._attn_implementation for c in configs]
    engine = served(model)
    assert [c._attn_implementation for c in configs] == before
    block = engine.runner.family.attention_block
    for view in engine.runner.positions:
        assert view.get_submodule(block).config._attn_implementation == ATTENTION
    for view in model.looped_layers.positions:
        assert view.get_submodule(block).config is model.config.text_config
    first = expected(model)
    for _ in range(2):
        out = engine.generate(prompts(), list(NEW_TOKENS), progress=False)
        assert [g.tokens for g in out] == first
        assert [c._attn_implementation for c in configs] == before
        assert expected(model) == first


def test_eos_ends_a_request_unless_the_request_ignores_it(llama_relaxed):
    """ignore_eos is each request's option; the engine keeps no state of a run but its last
    cache and stats."""
    prompt = prompts()[0]
    full = reference(llama_relaxed, prompt, 8)
    eos = full[3]
    engine = Engine(llama_relaxed, max_batch=2, eos_token_id=eos)
    attributes = set(vars(engine))
    (stopped,) = engine.generate([prompt], 8, progress=False)
    assert stopped.tokens == full[: full.index(eos) + 1] and stopped.finish_reason == "eos"
    (kept,) = engine.generate([prompt], 8, ignore_eos=True, progress=False)
    assert kept.tokens == full and kept.finish_reason == "length"
    assert set(vars(engine)) == attributes


def test_an_engine_of_a_loaded_model_stops_at_its_generation_configs_end_tokens(llama_relaxed):
    """As generate does: any of the generation config's end tokens ends a request."""
    prompt = prompts()[0]
    full = reference(llama_relaxed, prompt, 8)
    config = llama_relaxed.generation_config
    before = config.eos_token_id
    try:
        config.eos_token_id = [next(t for t in range(VOCAB) if t not in full), full[2]]
        (out,) = Engine(llama_relaxed, max_batch=2).generate([prompt], 8, progress=False)
    finally:
        config.eos_token_id = before
    assert out.tokens == full[: full.index(full[2]) + 1] and out.finish_reason == "eos"


def test_the_engines_limits_default_to_the_config_schemas():
    import inspect

    from rrt.config import defaults

    parameters = inspect.signature(Engine).parameters
    schema = defaults("benchmark")
    for name in ("max_batch", "max_batch_tokens", "kv_cache_mb"):
        assert parameters[name].default == schema[name]


def test_families_the_engine_cannot_serve_get_one_clear_error():
    from rrt.errors import UserError

    model = source_model("llama")
    model.config.model_type = "mystery"
    with pytest.raises(UserError, match="cannot serve model_type 'mystery'.*llama"):
        Engine(model)


@pytest.mark.parametrize("family", sorted(set(SERVED) - {"llama", "qwen3", "gemma2"}))
def test_every_served_family_decodes_as_generate_does_depthwise(family):
    source = source_model(family, seed=0)
    relaxed = relax(convert(source, loops=3, init="average"), source, rank=4)
    out = served(relaxed).generate(prompts(), list(NEW_TOKENS), progress=False)
    assert [g.tokens for g in out] == expected(relaxed)


# --- real early exit ------------------------------------------------------------------------


@torch.no_grad()
def full_depth_kv(model, sequence: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values at every virtual depth from one ordinary forward, [positions, heads, dim]."""
    cache = model(torch.tensor([sequence]), use_cache=True).past_key_values
    return [
        (layer.keys[0].transpose(0, 1), layer.values[0].transpose(0, 1)) for layer in cache.layers
    ]


def engine_kv(engine: Engine, slot: int, depth: int, length: int):
    """[positions, kv_heads, head_dim] of one slot at one virtual depth."""
    cache = engine.cache
    k, v = cache.k[depth, slot, :, :length], cache.v[depth, slot, :, :length]
    return k.transpose(0, 1), v.transpose(0, 1)


def loop_one_reference(model, prompt: list[int], new: int) -> list[int]:
    return reference(model, prompt, new, exit_loop=1)


@pytest.fixture(scope="module")
def llama_relaxed():
    source = source_model("llama", seed=0)
    return relax(convert(source, loops=2, init="average"), source, rank=4)


@pytest.mark.parametrize("kv_fill", ["ride", "propagate"])
def test_tokens_that_all_exit_after_loop_one_are_the_loop_one_model_s(llama_relaxed, kv_fill):
    """Threshold ~0: every decode token exits after loop 1 (the first comes from the prefill at
    full depth). Loop 1 reads only loop-1 keys, so the tokens are those of the model truncated to
    one loop, whatever fills the deeper KV."""
    prompt = prompts()[1]
    engine = Engine(
        llama_relaxed, exit_threshold=1e-9, kv_fill=kv_fill, max_batch=1, eos_token_id=[]
    )
    (out,) = engine.generate([prompt], 8, progress=False)
    assert out.exit_loops == [2] + [1] * 7
    first = reference(llama_relaxed, prompt, 1)
    assert out.tokens == first + loop_one_reference(llama_relaxed, prompt + first, 7)
    assert engine.stats["exits"] == 7


def confidences(model, sequence: list[int]) -> torch.Tensor:
    with torch.no_grad():
        first = model.loop_logits(torch.tensor([sequence]))[0][0]
    return first.softmax(-1).max(-1).values


def test_ride_along_leaves_exactly_the_full_depth_kv_of_exited_tokens(llama_relaxed):
    """Some tokens exit, some do not (threshold at the median confidence); under ride-along the
    cache then holds, at every virtual depth and position, what one full-depth forward over the
    emitted sequence computes: later tokens attend to correct keys."""
    prompt, new = prompts()[3], 12
    full = reference(llama_relaxed, prompt, new)
    threshold = float(confidences(llama_relaxed, prompt + full).median())
    engine = Engine(
        llama_relaxed, exit_threshold=threshold, kv_fill="ride", max_batch=1, eos_token_id=[]
    )
    (out,) = engine.generate([prompt], new, progress=False)
    assert 1 in out.exit_loops and out.exit_loops.count(2) > 1
    assert engine.stats["mixed_steps"] > 0  # the exited token rides loop 2 beside the next one
    sequence = prompt + out.tokens
    # The last token was emitted, never fed back; the one before fed the last step, and the
    # request ended with it, so no later token needs what it owes the deeper loops.
    known = len(sequence) - 2
    for depth, (k, v) in enumerate(full_depth_kv(llama_relaxed, sequence[:known])):
        ek, ev = engine_kv(engine, 0, depth, known)
        torch.testing.assert_close(ek, k, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ev, v, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_state_propagation_computes_skipped_kv_from_the_exit_hidden_state(llama_relaxed):
    """CALM: the deeper loops' keys of an exited token are its loop-2 layers' key projections of
    the hidden state it exited with (here after loop 1)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model, prompt = llama_relaxed, prompts()[1]
    engine = Engine(model, exit_threshold=1e-9, kv_fill="propagate", max_batch=1, eos_token_id=[])
    (out,) = engine.generate([prompt], 6, progress=False)
    sequence = prompt + out.tokens
    known = len(sequence) - 1
    hidden = model(torch.tensor([sequence[:known]]), output_hidden_states=True).hidden_states
    k = model.config.num_shared_layers
    exit_h = hidden[k][0]  # leaving loop 1 (loop 1 reads loop-1 keys only: the engine's too)
    cos, sin = model.lm.model.rotary_emb(exit_h[None], torch.arange(known)[None])
    exited = torch.arange(len(prompt) + 1, known - 1)  # decode tokens fed before the last step
    for i in range(k):
        view = model.looped_layers.positions[k + i]
        keys = view.self_attn.k_proj(view.input_layernorm(exit_h))
        keys = keys.view(known, -1, 16).transpose(0, 1)[None]
        _, keys = apply_rotary_pos_emb(keys, keys, cos, sin)
        ek, _ = engine_kv(engine, 0, k + i, known)
        torch.testing.assert_close(
            ek[exited], keys[0].transpose(0, 1)[exited], rtol=1e-4, atol=1e-5
        )


# --- bad requests -----------------------------------------------------------------------------


def test_bad_requests_get_their_own_error_while_the_others_are_served(llama_relaxed):
    good = prompts()
    batch = [good[0], [], good[1], list(range(1, 200)), good[2], [VOCAB + 5], good[3]]
    limits = [NEW_TOKENS[0], 4, NEW_TOKENS[1], 4, 0, 4, -3]
    out = Engine(llama_relaxed, max_batch=2, eos_token_id=[]).generate(
        batch, limits, progress=False
    )
    errors = [g.error for g in out]
    assert errors[0] is None and errors[2] is None
    assert errors[1] == "empty prompt"
    assert "199 tokens does not fit the context of 128" in errors[3]
    assert "max_new_tokens must be a positive integer, got 0" in errors[4]
    assert "outside the vocabulary" in errors[5]
    assert "got -3" in errors[6]
    assert out[0].tokens == reference(llama_relaxed, good[0], NEW_TOKENS[0])
    assert out[2].tokens == reference(llama_relaxed, good[1], NEW_TOKENS[1])
    assert all(g.tokens == [] for g in out if g.error)


def test_an_unknown_model_directory_is_one_clear_error(tmp_path):
    from rrt.errors import UserError

    with pytest.raises(UserError, match="nowhere"):
        Engine(tmp_path / "nowhere")


def test_generation_stops_at_the_context_end(llama_relaxed):
    prompt = [1 + i % (VOCAB - 1) for i in range(119)]
    (out,) = Engine(llama_relaxed, max_batch=1, eos_token_id=[]).generate(
        [prompt], 50, progress=False
    )
    assert len(out.tokens) == 128 - 119 and out.finish_reason == "length"
    assert out.tokens == reference(llama_relaxed, prompt, 9)


@pytest.mark.parametrize("family", SERVED)
def test_every_served_family_propagates_exit_states_into_the_skipped_loops(family):
    """B = 3, every decode token exits after loop 1: its keys at loops 2 and 3 come from one
    attention-block call over rows at two loops; the tokens are the one-loop model's."""
    source = source_model(family, seed=0)
    model = relax(convert(source, loops=3, init="average"), source, rank=4)
    prompt = prompts()[1]
    engine = Engine(model, exit_threshold=1e-9, kv_fill="propagate", max_batch=1, eos_token_id=[])
    (out,) = engine.generate([prompt], 5, progress=False)
    first = reference(model, prompt, 1)
    assert out.tokens == first + loop_one_reference(model, prompt + first, 4)
    assert engine.stats["kv_fill_rows"] == 2 * 3  # the last exit ends the request: no fill


def test_a_model_directory_serves_text_prompts(served_dir):
    engine = Engine(served_dir, device="cpu")
    out = engine.generate(["the cat", "a dog ran"], 5, ignore_eos=True, progress=False)
    assert all(len(g.tokens) == 5 and g.text == engine.tokenizer.decode(g.tokens) for g in out)
    tokens = engine.tokenizer("the cat")["input_ids"]
    assert engine.generate([tokens], 5, ignore_eos=True, progress=False)[0].tokens == out[0].tokens


@pytest.fixture(scope="module")
def served_dir(tmp_path_factory):
    from _embedded import corpus, tokenizer
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("served")
    tok = AutoTokenizer.from_pretrained(str(tokenizer(corpus(root), root)))
    source = source_model("llama", vocab_size=len(tok), max_position_embeddings=64)
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.mark.parametrize("family", ["gemma3_text", "gpt_neox"])
def test_per_loop_norms_and_biases_are_served_depth_wise(family):
    """relax_vectors gives each loop its own norms (Gemma 3's heads-first q/k norms too) and
    biases: mixed-loop steps (every decode token exits and rides along) still decode as the
    one-loop model, and without exits as generate."""
    source = source_model(family, seed=0, vectors="random")
    model = relax(convert(source, loops=2, init="average"), source, rank=4, relax_vectors=True)
    prompt = prompts()[3]
    engine = Engine(model, exit_threshold=1e-9, max_batch=1, eos_token_id=[])
    (out,) = engine.generate([prompt], 6, progress=False)
    assert engine.stats["mixed_steps"] > 0
    first = reference(model, prompt, 1)
    assert out.tokens == first + loop_one_reference(model, prompt + first, 5)
    out = Engine(model, max_batch=2, eos_token_id=[]).generate(
        prompts(), list(NEW_TOKENS), progress=False
    )
    assert [g.tokens for g in out] == expected(model)


def _compiled_equals_eager(model, **kwargs) -> tuple[Engine, set]:
    """Serve the prompts eagerly and compiled; the compiled engine's tokens and exits must be the
    eager engine's (which are generate's, tested above). The compiled engine compiles one graph
    for each row bucket its steps use (sequence-wise, every loop in one graph), with each
    bucket of state propagation's rows (or none) and with the exit head or without, whatever
    the lengths of keys its steps read. Returns the compiled engine and the graph calls it made
    (row bucket, views, layer offset, state propagation's rows, head)."""
    from torch._dynamo.utils import counters

    # Hidden states asked for once, as the benchmark's exit calibration does: transformers then
    # installs its output capture's hooks on the model's layers, for good.
    with torch.no_grad():
        model(torch.tensor([prompts()[0]]), output_hidden_states=True)
    eager = served(model, **kwargs).generate(prompts(), list(NEW_TOKENS), progress=False)
    engine = served(model, compile=True, **kwargs)
    runner, calls = engine.runner, set()

    def spy(fn, key):
        def call(*args):
            calls.add(key(*args))
            return fn(*args)

        return call

    runner._graph = spy(runner._graph, _graph_key)
    graphs = counters["stats"]["unique_graphs"]
    out = engine.generate(prompts(), list(NEW_TOKENS), progress=False)
    assert counters["stats"]["unique_graphs"] - graphs == len(calls)
    assert [g.tokens for g in out] == [g.tokens for g in eager]
    assert [g.exit_loops for g in out] == [g.exit_loops for g in eager]
    return engine, calls


@pytest.fixture
def cacheable_compile(monkeypatch):
    """Compile with Inductor's defaults, not the engine's settings (``compiling``: frozen weights
    packed for oneDNN, ``max_autotune``), which are Inductor's choices, not the step's semantics,
    and which its caches cannot keep (packed weights are not picklable, and AOTAutograd caches no
    frozen graph), so every run compiled these tests' graphs anew. With the defaults a second
    run on the machine finds them all in Inductor's cache. The engine's own settings compile in
    rrt benchmark's --compile test; that they hold over a generation is tested below."""
    import contextlib

    monkeypatch.setattr("rrt.serving.runner.compiling", lambda *_: contextlib.nullcontext())


def _graph_key(ids, h, *step) -> tuple:
    """What tells a step graph's compiled graphs apart, from its arguments (ids, h, cache,
    key_pos, pos, depth0, slots, views, offset, sequence, fill, head): row bucket (the prompt
    chunks' graph is one whatever its rows), hidden states beside the token ids or none, views
    (sequence-wise, every loop's), layer offset, fill rows (0: none), head."""
    rows = "chunk" if step[5][0].startswith("chunk") else ids.shape[0]
    fill = step[8][0].shape[1] if step[8] is not None else 0
    return (rows, h is not None, step[5], step[6], fill, step[9])


def test_a_compiled_step_pads_its_rows_to_few_buckets():

    rows = (1, 2, 4, 5, 9, 16, 17, 33, 64, 65, 129)
    assert [bucket(n) for n in rows] == [1, 4, 4, 8, 16, 16, 32, 64, 64, 128, 192]


def test_a_prompt_chunk_runs_its_tokens_on_a_cpu_and_multiples_of_64_on_a_gpu():
    from rrt.serving.runner import MAX_ROWS, chunk_rows

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [chunk_rows(n, cpu) for n in (1, 63, 65)] == [1, 63, 65]
    assert [chunk_rows(n, gpu) for n in (1, 64, 65, MAX_ROWS + 1)] == [64, 64, 128, MAX_ROWS]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_the_compiled_graphs_rotary_table_holds_what_the_models_rotary_computes(family):
    """The table the compiled graphs gather cos and sin from: at any rows' positions and depths
    (one depth for all rows, or each its own, Gemma 3's layer types differing), the model's
    own rotary module's values."""
    source = source_model(family, seed=0)
    runner = Runner(convert(source, loops=2, init="average"))
    like = torch.zeros(1)
    table = RotaryTable(runner.rotary, runner.layer_types, 40, like.dtype, like.device)
    pos, depth0 = torch.tensor([0, 39, 7, 12]), torch.tensor([0, 0, 1, 1]) * runner.shared
    for depth in (None, 0, runner.shared):
        layout = Static(None, None, pos, depth0, pos, depth)
        for offset in range(runner.shared):
            mine = rotary_at(table, runner.layer_types, like, layout, offset)
            model = rotary_at(runner.rotary, runner.layer_types, like, layout, offset)
            for a, b in zip(mine, model, strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_rotary_table_stands_for_a_rotary_that_changes_with_the_longest_position():
    kinds = ("default", "linear", "llama3", {"full": "default", "sliding": "yarn"})
    assert all(RotaryTable.serves(SimpleNamespace(rope_type=k)) for k in kinds)
    for kind in ("dynamic", "longrope", {"full": "default", "sliding": "dynamic"}):
        assert not RotaryTable.serves(SimpleNamespace(rope_type=kind))


@pytest.mark.usefixtures("cacheable_compile")
def test_a_compiled_engine_decodes_as_the_eager_one(llama_relaxed, monkeypatch):
    """Decode steps run as compiled graphs padded to row buckets (5 requests on 3 slots, rows
    leaving as requests finish); depth-wise with exits, a step mixes loops and ride-along rows.
    Steps with more rows than the prompt chunks' graph takes run eager (here all of them: its
    compilation is tested, slow, below)."""
    monkeypatch.setattr("rrt.serving.runner.MAX_ROWS", 1)
    engine, calls = _compiled_equals_eager(llama_relaxed, exit_threshold=0.02)
    assert engine.runner.compiled
    assert not any(c[0] == "chunk" for c in calls)
    assert engine.stats["decode_steps"] > 0
    assert engine.stats["exits"] > 0 and engine.stats["mixed_steps"] > 0
    assert engine.cache.free_slots == 3  # the spare slot of padding rows is never handed out


@pytest.mark.usefixtures("cacheable_compile")
def test_engines_of_two_families_in_one_process_each_step_through_their_own_graphs(monkeypatch):
    """Dynamo keeps the graphs compiled from a function on its code object, and a step keeps few
    of their guards (step_guards), so each engine compiles a forward of its own: a Gemma 2
    engine built after a Llama one never checks the Llama engine's graphs against its modules
    (which raised KeyError: 'weight'). The weights are not frozen, as on a GPU; the graphs go
    through dynamo and AOTAutograd, not Inductor's code generation."""
    compile_ = torch.compile
    monkeypatch.setattr("torch.compile", lambda fn, **kw: compile_(fn, backend="aot_eager", **kw))
    monkeypatch.setattr("rrt.serving.runner.MAX_ROWS", 1)
    for family, vectors in (("llama", False), ("gemma2", True)):
        source = source_model(family, seed=0)
        recursive = convert(source, loops=2, init="average")
        model = relax(recursive, source, rank=4, relax_vectors=vectors)
        eager = served(model, exit_threshold=0.02).generate(
            prompts(), list(NEW_TOKENS), progress=False
        )
        engine = served(model, compile=True, exit_threshold=0.02)
        out = engine.generate(prompts(), list(NEW_TOKENS), progress=False)
        assert [g.tokens for g in out] == [g.tokens for g in eager], family


def test_the_engines_compile_settings_hold_over_a_whole_generation(llama_relaxed, monkeypatch):
    """Frozen weights and max_autotune, entered once for a generation, not at each step's call
    (the step module runs uncompiled here; rrt benchmark's --compile test compiles with them)."""
    monkeypatch.setattr("torch.compile", lambda module, **options: module)
    config = type(torch._inductor.config)  # every torch config module's class
    ours, held, patch = {"freezing": True, "max_autotune": True}, [], config.patch

    def spy(self, *args, **kwargs):
        held.append(not args and kwargs == ours)
        return patch(self, *args, **kwargs)

    monkeypatch.setattr(config, "patch", spy)
    engine = served(llama_relaxed, compile=True, exit_threshold=0.02)
    engine.generate(prompts(), list(NEW_TOKENS), progress=False)
    assert engine.stats["decode_steps"] > 0
    assert held == [True]


def test_compiled_graphs_with_chunk_rows_padded_as_on_a_gpu_decode_as_eager(
    llama_relaxed, monkeypatch
):
    """The compiled engine's step module runs uncompiled, each prompt-chunk step's rows padded
    to a multiple of 64 as on a GPU (the padding rows at the spare slot, position 0): tokens and
    exits equal the eager engine's, decode steps still in buckets, their exits' state
    propagation in the same call."""
    monkeypatch.setattr("torch.compile", lambda module, **options: module)
    monkeypatch.setattr("rrt.serving.runner.chunk_rows", lambda tokens, device: round_up(tokens))
    kwargs = {"exit_threshold": 0.02, "kv_fill": "propagate"}
    eager = served(llama_relaxed, **kwargs).generate(prompts(), list(NEW_TOKENS), progress=False)
    engine = served(llama_relaxed, compile=True, **kwargs)
    runner, rows = engine.runner, []

    def step(ids, *args):
        rows.append((args[6][0], ids.shape[0], args[9][0].shape[1] if args[9] is not None else 0))
        return runner._step(ids, *args)

    runner._graph = step
    out = engine.generate(prompts(), list(NEW_TOKENS), progress=False)
    assert [g.tokens for g in out] == [g.tokens for g in eager]
    assert [g.exit_loops for g in out] == [g.exit_loops for g in eager]
    assert engine.stats["exits"] > 0
    chunks = {n for views, n, _ in rows if views.startswith("chunk")}
    assert chunks and all(n % 64 == 0 for n in chunks)
    assert {n for views, n, _ in rows if not views.startswith("chunk")} <= {1, 4}
    # exits' state propagation in the decode step's call, its rows padded to one bucket: that
    # of the most a step can have, a fill for each loop after the first of every slot
    most = engine.slots * (runner.loops - 1)
    assert {fill for *_, fill in rows if fill} == {bucket(most)} and most > 1


@pytest.mark.parametrize(
    "kwargs",
    [{"mode": "sequence"}, {}, {"exit_threshold": 0.02, "kv_fill": "propagate"}],
    ids=["sequence", "depthwise", "propagate"],
)
def test_a_warmed_up_engine_steps_only_through_graphs_compiled_before(
    llama_relaxed, kwargs, monkeypatch
):
    """``warm_up`` compiles every graph a generation then calls (the benchmark starts its
    clock after it): each row bucket, views, layer offset, state propagation's bucket and
    head or none. The step module runs uncompiled; its calls' keys are compared. Every step is
    one call, sequence-wise too (every loop in one graph)."""
    monkeypatch.setattr("torch.compile", lambda module, **options: module)
    engine = served(llama_relaxed, compile=True, **kwargs)
    runner, keys = engine.runner, []

    def step(*args):
        keys.append(_graph_key(*args))
        return runner._step(*args)

    runner._graph = step
    engine.warm_up()
    warmed = set(keys)
    keys.clear()
    engine.generate(prompts(), list(NEW_TOKENS), progress=False)
    assert keys and set(keys) <= warmed
    assert len(keys) == engine.stats["steps"]
    assert any(key[4] for key in keys) == ("kv_fill" in kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["depthwise", "sequence"])
@pytest.mark.usefixtures("cacheable_compile")
def test_compiled_prompt_chunks_run_as_one_graph_whatever_their_rows(llama_relaxed, mode):
    """Steps with prompt chunks (16 tokens a step, beside decode rows: depth-wise at either
    loop, with exits) run as one compiled graph whose rows are dynamic, a row a token: tokens
    and exits equal eager's, one graph for all of them. The graph embeds the rows' token ids
    (a view of the step's layout tensor, whose rows are dynamic too); depth-wise, the hidden
    states of rows past the first loop come beside them. Sequence-wise one request at a time:
    one row bucket's graph to compile besides (each of its graphs runs every loop)."""
    one = {"mode": "sequence", "max_batch": 1}
    kwargs = {"exit_threshold": 0.02} if mode == "depthwise" else one
    engine, calls = _compiled_equals_eager(llama_relaxed, **kwargs)
    views = ("chunk",) if mode == "depthwise" else ("chunk/0", "chunk/1")
    assert any(c[:4] == ("chunk", mode == "depthwise", views, 0) for c in calls)
    assert engine.stats["exits"] > 0 if mode == "depthwise" else engine.stats["steps"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "mode", "relax_vectors", "kv_fill"),
    [
        ("gemma2", "sequence", False, None),
        ("gemma2", "depthwise", True, "ride"),
        ("gemma3_text", "depthwise", True, "propagate"),
    ],
)
@pytest.mark.usefixtures("cacheable_compile")
def test_compiled_steps_keep_softcapping_windows_and_layer_types(
    family, mode, relax_vectors, kv_fill, monkeypatch
):
    """Sequence-wise steps attend over a view of every slot, depth-wise ones gather each row's
    keys: both with Gemma 2's logit softcapping and sliding windows, and depth-wise with exits,
    Gemma 3's per-layer rotary types, and each loop's own norms (Gemma 3's q/k norms too), in
    the step and, propagating, in the compiled state propagation. Prompt chunks run eager
    (their graph is the same step's, tested above with Llama; it would double the compile
    time)."""
    monkeypatch.setattr("rrt.serving.runner.MAX_ROWS", 1)
    source = source_model(family, seed=0)
    recursive = convert(source, loops=2, init="average")
    relaxed = relax(recursive, source, rank=4, relax_vectors=relax_vectors)
    exits = {"exit_threshold": 0.02, "kv_fill": kv_fill} if mode == "depthwise" else {}
    engine, calls = _compiled_equals_eager(relaxed, mode=mode, **exits)
    assert engine.stats["exits"] > 0 if exits else engine.stats["decode_steps"] > 0
    assert any(c[4] for c in calls) == (kv_fill == "propagate")


def test_a_compiled_step_keeps_every_guard_but_those_on_module_attributes_save_identity():
    """Dynamo's guards on the step's modules cost most of a call's lookup; the engine changes no
    module once it serves, so only their identity (one engine's views against another's) stays."""
    from types import SimpleNamespace

    from rrt.serving.runner import step_guards

    def entry(on_module: bool, kind: str) -> SimpleNamespace:
        source = SimpleNamespace(is_unspecialized_nn_module=lambda: on_module)
        return SimpleNamespace(orig_guard=SimpleNamespace(source=source), guard_type=kind)

    kinds = [(True, "ID_MATCH"), (True, "TYPE_MATCH"), (True, "EMPTY_NN_MODULE_HOOKS_DICT")]
    kinds += [(False, "TENSOR_MATCH"), (False, "CONSTANT_MATCH")]
    assert step_guards([entry(*k) for k in kinds]) == [True, False, False, True, True]


def test_a_gpu_step_compiles_with_cuda_graphs_and_the_same_guard_filter():
    """``reduce-overhead``'s options (CUDA graphs), not the mode, so the guard filter rides along:
    torch.compile takes a mode or options, not both."""
    import torch._inductor

    from rrt.serving.runner import compile_options, step_guards

    gpu = compile_options(torch.device("cuda"))["options"]
    assert gpu.pop("guard_filter_fn") is step_guards and gpu == {"triton.cudagraphs": True}
    assert gpu == torch._inductor.list_mode_options("reduce-overhead")
    assert compile_options(torch.device("cpu")) == {"options": {"guard_filter_fn": step_guards}}


def test_a_cpu_step_compiles_frozen_and_autotuned_and_in_bf16_on_onednn_kernels_alone():
    """fp32: max_autotune picks between oneDNN's and Inductor's C++ GEMM for each matmul; bf16:
    oneDNN's alone (Inductor's wins max_autotune's timing, its weights in the CPU's caches, and
    loses in a step that reads them from memory). A GPU's step takes CUDA graphs' settings."""
    import contextlib

    from rrt.serving.runner import compiling

    config, cpu = torch._inductor.config, torch.device("cpu")
    every = config.max_autotune_gemm_backends
    for dtype, backends in ((torch.float32, every), (torch.bfloat16, "ATEN")):
        with compiling(cpu, dtype):
            assert config.freezing and config.max_autotune
            assert config.max_autotune_gemm_backends == backends
            assert isinstance(compiling(cpu, dtype), contextlib.nullcontext)  # held already
        assert not config.freezing and config.max_autotune_gemm_backends == every
    assert isinstance(compiling(torch.device("cuda"), torch.bfloat16), contextlib.nullcontext)
