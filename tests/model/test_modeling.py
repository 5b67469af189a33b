"""Exactness of the recursive model core, for every supported family (paper sec. 2.2-2.3)."""

from __future__ import annotations

import pytest
import torch
from _families import FAMILY_CONFIGS, source_model, tokens
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import rrt
from rrt.errors import UserError
from rrt.method.convert import convert, init_groups, stepwise_indices
from rrt.method.relax import relax
from rrt.model.modeling import LoopedLinear, RecursiveForCausalLM

FAMILIES = list(FAMILY_CONFIGS)
FULL_RANK = 10**6  # capped at min(in, out) per linear
TOL = 1e-4


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def source(family):
    return source_model(family)


@torch.no_grad()
def test_one_loop_without_lora_reproduces_source_logits(source):
    x = tokens()
    model = convert(source, loops=1, init="lower")
    assert max_diff(model(x).logits, source(x).logits) < TOL


@pytest.mark.parametrize("loops", [2, 3])
@pytest.mark.parametrize("init", ["stepwise", "average"])
@torch.no_grad()
def test_full_rank_relaxation_reproduces_source_logits(source, loops, init):
    x = tokens()
    relaxed = relax(convert(source, loops=loops, init=init), source, rank=FULL_RANK)
    assert max_diff(relaxed(x).logits, source(x).logits) < TOL


@pytest.mark.parametrize("loops", [2, 3])
@torch.no_grad()
def test_pure_recursive_model_differs_from_source(source, loops):
    """The exactness above is not vacuous: without LoRA the looped model is another function."""
    x = tokens()
    assert max_diff(convert(source, loops=loops)(x).logits, source(x).logits) > 1e-2


@torch.no_grad()
def test_cached_and_uncached_greedy_generation_agree(source, family):
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    prompt = tokens(batch=1, length=7, seed=3)
    kwargs = dict(
        max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0, eos_token_id=None
    )
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape[1] == prompt.shape[1] + 32
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_kv_cache_is_keyed_by_virtual_depth(source):
    model = convert(source, loops=3, init="average")
    out = model(tokens(batch=1, length=4), use_cache=True)  # inside the sliding windows
    cache = out.past_key_values
    assert len(cache.layers) == source.config.num_hidden_layers  # N virtual, not K shared
    keys = [layer.keys for layer in cache.layers]
    assert all(k is not None and k.shape[-2] == 4 for k in keys)
    # the loops of shared layer 0 (positions 0, 2, 4) stored different keys
    assert max_diff(keys[0], keys[2]) > 1e-3 and max_diff(keys[2], keys[4]) > 1e-3


def test_save_load_round_trips_bit_exactly(source, tmp_path):
    model = relax(convert(source, loops=2, init="average"), source, rank=5)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(loaded, RecursiveForCausalLM)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = load_file(tmp_path / "model.safetensors")
    assert any(k.endswith("lora_A") for k in saved)
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_stepwise_follows_the_papers_example():
    assert stepwise_indices(6, 3) == [0, 2, 5]
    assert init_groups("average", 6, 3) == [[0, 3], [1, 4], [2, 5]]
    assert init_groups("lower", 6, 3) == [[0], [1], [2]]
    assert stepwise_indices(18, 9) == [0, 2, 4, 6, 8, 11, 13, 15, 17]


@pytest.mark.parametrize("init", ["stepwise", "average", "lower"])
def test_shared_layers_are_initialised_from_the_right_source_layers(init):
    source = source_model("llama", vectors="random")
    model = convert(source, loops=2, init=init)
    layers = list(source.model.layers)
    for i, group in enumerate(init_groups(init, 6, 3)):
        expected = {
            k: torch.stack([layers[j].state_dict()[k] for j in group]).mean(0)
            for k in layers[0].state_dict()
        }
        for position in (i, i + 3):  # both loops run the same tied block, norms included
            got = model.position_parameters(position)
            assert got.keys() == expected.keys()
            assert all(torch.equal(got[k], expected[k]) for k in got)
    assert torch.equal(model.lm.model.embed_tokens.weight, source.model.embed_tokens.weight)
    assert torch.equal(model.lm.model.norm.weight, source.model.norm.weight)
    assert torch.equal(model.lm.lm_head.weight, source.lm_head.weight)


def test_random_init_is_fresh_but_keeps_embeddings():
    source = source_model("llama")
    model = convert(source, loops=2, init="random", seed=1)
    q = model.position_parameters(0)["self_attn.q_proj.weight"]
    assert not any(torch.equal(q, layer.self_attn.q_proj.weight) for layer in source.model.layers)
    assert torch.equal(model.lm.model.embed_tokens.weight, source.model.embed_tokens.weight)
    again = convert(source, loops=2, init="random", seed=1)
    assert torch.equal(q, again.position_parameters(0)["self_attn.q_proj.weight"])


@torch.no_grad()
def test_relaxation_with_untied_vectors_is_exact_when_norms_and_biases_differ():
    """A trained source has different norms (and biases) in every layer: the paper's tied norms
    then cannot reproduce it, per-position vectors can."""
    source = source_model("gpt_neox", vectors="random")  # LayerNorm weights + biases everywhere
    x = tokens()
    tied = relax(convert(source, loops=2, init="average"), source, rank=FULL_RANK)
    untied = relax(
        convert(source, loops=2, init="average"), source, rank=FULL_RANK, relax_vectors=True
    )
    assert max_diff(tied(x).logits, source(x).logits) > 1e-2
    assert max_diff(untied(x).logits, source(x).logits) < TOL


def test_svd_init_is_the_best_rank_r_approximation_of_the_residual():
    source = source_model("llama")
    recursive = convert(source, loops=2, init="average")
    relaxed = relax(recursive, source, rank=3)
    position, linear = 4, "mlp.up_proj"
    residual = (
        source.model.layers[position].mlp.up_proj.weight
        - recursive.position_parameters(position)[f"{linear}.weight"]
    ).double()
    a, b = relaxed.lora(position, linear)
    u, s, vh = torch.linalg.svd(residual)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    assert torch.allclose((b @ a).double(), best, atol=1e-5)
    assert a.shape == (3, 64) and b.shape == (96, 3)


def test_stepwise_source_positions_get_gaussian_a_and_zero_b():
    source = source_model("llama")
    relaxed = relax(convert(source, loops=2, init="stepwise"), source, rank=4)
    a, b = relaxed.lora(0, "self_attn.q_proj")  # shared layer 0 *is* source layer 0
    assert torch.count_nonzero(b) == 0 and a.std() > 0
    a, b = relaxed.lora(3, "self_attn.q_proj")  # position 3 runs layer 0's weights: residual != 0
    assert torch.count_nonzero(b) > 0


def test_rank_is_capped_per_linear_and_set_per_module_kind():
    source = source_model("llama")
    relaxed = relax(convert(source, loops=2), source, rank={"attention": 40, "mlp": 3})
    layer = relaxed.looped_layers[0]
    assert layer.self_attn.k_proj.rank == 32  # min(64 in, 32 out)
    assert layer.self_attn.q_proj.rank == 40
    assert layer.mlp.down_proj.rank == 3
    assert all(isinstance(layer.get_submodule(n), LoopedLinear) for n in relaxed.family.linears)


@torch.no_grad()
def test_exit_loop_runs_only_the_first_loops():
    source = source_model("llama")
    model = convert(source, loops=3, init="average")
    x = tokens()
    full = model(x).logits
    first = model(x, exit_loop=1).logits
    assert torch.equal(model(x, exit_loop=3).logits, full)
    assert torch.equal(model(x).logits, full)  # nothing stays behind from the last call
    assert max_diff(first, full) > 1e-3
    # The one-loop model: a plain model of the first loop's K layers, and the same ends.
    k = model.config.num_shared_layers
    one_loop = source_model("llama", num_hidden_layers=k)
    own = dict(one_loop.named_parameters())
    for position in range(k):
        for name, param in model.position_parameters(position).items():
            own[f"model.layers.{position}.{name}"].copy_(param)
    for name, param in model.lm.named_parameters():
        if ".layers." not in name:
            own[name].copy_(param)
    assert max_diff(first, one_loop(x).logits) < 1e-5
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"exit loop -?\d must be in 1\.\.3 \(or None\)"):
            model(x, exit_loop=bad)


def test_a_model_exiting_after_a_loop_shares_the_weights_and_leaves_the_model_as_it_was():
    """lm-eval calls ``model(input_ids)`` itself: the exit is fixed in a copy's config."""
    source = source_model("llama")
    model = relax(convert(source, loops=3, init="average"), source, rank=4)
    x = tokens()
    exiting = model.exiting_after(2)
    assert exiting.lm is model.lm and exiting.config.text_config is model.config.text_config
    assert exiting.config.exit_loop == 2 and model.config.exit_loop is None
    with torch.no_grad():
        assert torch.equal(exiting(x).logits, model(x, exit_loop=2).logits)
        assert torch.equal(exiting(x, exit_loop=3).logits, model(x).logits)
        kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)
        assert torch.equal(
            exiting.generate(x[:1], **kwargs), model.generate(x[:1], exit_loop=2, **kwargs)
        )
    with pytest.raises(ValueError, match=r"exit loop 4 must be in 1\.\.3 \(or None\)"):
        model.exiting_after(4)


def test_unsupported_architecture_names_the_supported_families():
    from transformers import AutoConfig

    gpt2 = AutoModelForCausalLM.from_config(
        AutoConfig.for_model("gpt2", n_layer=2, n_embd=32, n_head=2)
    )
    with pytest.raises(UserError, match="supported.*llama.*gpt_neox"):
        convert(gpt2, loops=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(loops=4), "do not divide the source's 6 layers; allowed: 1, 2, 3, 6"),
        (dict(loops=0), "do not divide"),
        (
            dict(loops=2, init="middle"),
            "unknown init 'middle'; choose one of stepwise, average, lower, random",
        ),
    ],
)
def test_bad_conversion_arguments_fail_clearly(kwargs, message):
    with pytest.raises(UserError, match=message):
        convert(source_model("llama"), **kwargs)


def test_negative_rank_fails_clearly():
    source = source_model("llama")
    with pytest.raises(UserError, match="rank must be >= 0"):
        relax(convert(source, loops=2), source, rank=-1)


def test_importing_rrt_registers_the_auto_classes():
    from transformers import AutoConfig

    assert AutoConfig.for_model("rrt").__class__ is rrt.RecursiveConfig


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
@torch.no_grad()
def test_each_loops_exit_logits_equal_running_only_that_many_loops(family):
    source = source_model(family)
    model = relax(convert(source, loops=3, init="average"), source, rank=4)
    x = tokens()
    exits = model.loop_logits(x)
    assert len(exits) == 3
    for loop, logits in enumerate(exits, start=1):
        assert max_diff(logits, model(x, exit_loop=loop).logits) < 1e-5
    assert torch.equal(exits[-1], model(x).logits)


def test_saved_model_loads_with_trust_remote_code_in_a_python_without_rrt(tmp_path):
    import subprocess
    import sys

    source = source_model("gemma")
    model = relax(convert(source, loops=2, init="average"), source, rank=3)
    model.save_pretrained(tmp_path)
    x = tokens()
    with torch.no_grad():
        expected = model(x).logits
    torch.save({"x": x, "logits": expected}, tmp_path / "check.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM
assert "rrt" not in sys.modules
path = {str(tmp_path)!r}
m = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, dtype=torch.float32)
check = torch.load({str(tmp_path / "check.pt")!r})
with torch.no_grad():
    assert torch.equal(m(check["x"]).logits, check["logits"])
print("OK", type(m).__name__)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK RecursiveForCausalLM" in result.stdout


# --- the loop index as data ---------------------------------------------------------------------


def _calls_of_shared_layer(model: RecursiveForCausalLM, index: int, x: torch.Tensor) -> list:
    """(hidden, kwargs, output) of every call of shared layer ``index`` (one per loop)."""
    calls = []

    def before(module, args, kwargs):
        calls.append([args[0], {k: v for k, v in kwargs.items() if k != "past_key_values"}])

    def after(module, args, kwargs, output):
        calls[-1].append(output[0] if isinstance(output, tuple) else output)

    layer = model.looped_layers[index]
    handles = [
        layer.register_forward_pre_hook(before, with_kwargs=True),
        layer.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        with torch.no_grad():
            model(x, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _same_call(a: dict, b: dict) -> bool:
    def same(u, v):
        if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
            return isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and torch.equal(u, v)
        if isinstance(u, tuple | list):
            return len(u) == len(v) and all(same(p, q) for p, q in zip(u, v, strict=True))
        return u == v

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


# Loops such that some shared layer's loops agree on attention type (mask, rotary), so that one
# call of the family's layer can hold rows of every loop.
MIXED_LOOPS = {"gemma2": 3}


@pytest.mark.parametrize("relax_vectors", [False, True])
@torch.no_grad()
def test_rows_at_different_loops_in_one_call_equal_single_loop_calls(family, relax_vectors):
    """The engine's primitive: one pass of a shared layer over rows that carry different loop
    ids gives, row by row, what that row's own position gives (LoRA, biases and norms)."""
    source = source_model(family, vectors="random" if relax_vectors else "same")
    loops = MIXED_LOOPS.get(family, 2)
    model = relax(
        convert(source, loops=loops, init="average"), source, rank=4, relax_vectors=relax_vectors
    )
    x = tokens(batch=loops, length=9)
    k = model.config.num_shared_layers
    checked = 0
    for index in range(k):
        calls = _calls_of_shared_layer(model, index, x)
        assert len(calls) == loops
        if not all(_same_call(calls[0][1], c[1]) for c in calls[1:]):
            continue  # this layer's loops differ in attention type: rows cannot share a call
        ids = torch.arange(loops)  # row r runs loop r
        hidden = torch.stack([calls[r][0][r] for r in range(loops)])
        mixed = model.looped_layers.at_loops(index, ids)(hidden, **calls[0][1])
        mixed = mixed[0] if isinstance(mixed, tuple) else mixed
        for r in range(loops):
            assert max_diff(mixed[r], calls[r][2][r]) < 1e-5
        # and the loops really differ, so rows did not all run one loop
        assert max_diff(calls[0][2][0], calls[1][2][0]) > 1e-4 or relax_vectors
        checked += 1
    assert checked, "no shared layer could hold rows of every loop"


@torch.no_grad()
def test_looped_linear_takes_per_token_loop_ids_each_row_at_its_own_loop():
    torch.manual_seed(0)
    linear = LoopedLinear(8, 6, num_loops=3, rank=2, bias=True, loop_bias=True)
    torch.nn.init.normal_(linear.lora_B)
    torch.nn.init.normal_(linear.bias)
    x = torch.randn(2, 5, 8)
    ids = torch.randint(0, 3, (2, 5), generator=torch.Generator().manual_seed(1))
    mixed = linear(x, ids)
    for loop in range(3):
        single = linear(x, loop)
        assert torch.allclose(mixed[ids == loop], single[ids == loop], atol=1e-6)
    with pytest.raises(RuntimeError, match="needs its loop"):
        linear(x)
    with pytest.raises(ValueError, match="loop ids must be in 0..2"):
        linear(x, torch.full((2, 5), 3))


def _module_states(model: RecursiveForCausalLM) -> dict[str, dict]:
    """Every module's attributes: the registered ones and the position views' trees."""
    states = {name: dict(vars(module)) for name, module in model.named_modules()}
    for p, view in enumerate(model.looped_layers.positions):
        for name, module in view.named_modules():
            states[f"position {p}.{name}"] = dict(vars(module))
    return states


@torch.no_grad()
def test_a_forward_writes_no_state_on_any_module():
    source = source_model("gemma2")
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    model(tokens(), return_loop_logits=True)  # transformers installs its output hooks once
    before = _module_states(model)
    config = model.config.to_dict()
    model(tokens(), use_cache=True)
    model(tokens(), return_loop_logits=True)
    model(tokens(), exit_loop=1, use_cache=True)
    model(tokens(), exit_loop=1, return_loop_logits=True)
    model.generate(tokens()[:1], max_new_tokens=3, do_sample=False, exit_loop=1, pad_token_id=0)
    model.exiting_after(1)(tokens())
    after = _module_states(model)
    assert before.keys() == after.keys()
    for name in before:
        changed = {k for k in before[name].keys() | after[name].keys()}
        changed = {k for k in changed if before[name].get(k) is not after[name].get(k)}
        assert not changed, f"{name}: {changed}"
    assert model.config.to_dict() == config


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox"])
def test_activation_checkpointing_gives_the_same_gradients_with_fewer_saved_activations(family):
    source = source_model(family)
    x = tokens(batch=2, length=16)

    def gradients(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
        model = relax(convert(source, loops=2, init="average"), source, rank=4).train()
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        saved = []

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x, labels=x, return_loop_logits=True)
            loss = out.loss + out.loop_logits[0].float().pow(2).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return grads, sum(saved)

    plain, plain_bytes = gradients(False)
    checkpointed, checkpointed_bytes = gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6, rtol=1e-5), name
    assert checkpointed_bytes < 0.6 * plain_bytes


@torch.no_grad()
def test_loop_exits_survive_accelerates_mixed_precision_output_conversion():
    """accelerate's bf16 wrapper rebuilds the output from its declared fields: the per-loop exits
    must be one of them (this lost them before, and crashed GPU uptraining)."""
    from accelerate.utils import convert_outputs_to_fp32

    source = source_model("llama")
    model = relax(convert(source, loops=3, init="average"), source, rank=4)
    forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=torch.bfloat16)(model.forward))
    out = forward(tokens(), return_loop_logits=True)
    assert len(out.loop_logits) == 3
    assert all(logits.dtype == torch.float32 for logits in out.loop_logits)
    assert torch.equal(out.loop_logits[-1], out.logits)


@torch.no_grad()
def test_the_compiled_forward_equals_the_eager_one_in_one_graph():
    import torch._dynamo

    source = source_model("llama")
    model = relax(convert(source, loops=2, init="average"), source, rank=4)
    x = tokens()
    explained = torch._dynamo.explain(model)(x, use_cache=False)
    assert explained.graph_break_count == 0
    compiled = torch.compile(model, backend="aot_eager")
    assert max_diff(compiled(x, use_cache=False).logits, model(x, use_cache=False).logits) < 1e-5


@torch.no_grad()
def test_conversion_and_relaxation_keep_the_sources_dtype():
    source = source_model("llama")
    half = source_model("llama").to(torch.bfloat16)
    x = tokens()
    for init in ("average", "random"):
        recursive = convert(half, loops=2, init=init)
        assert {p.dtype for p in recursive.parameters()} == {torch.bfloat16}
    relaxed = relax(convert(half, loops=2, init="average"), half, rank=4)
    assert {p.dtype for p in relaxed.parameters()} == {torch.bfloat16}
    reference = relax(convert(source, loops=2, init="average"), source, rank=4)
    assert max_diff(relaxed(x).logits.float(), reference(x).logits) < 0.1


@torch.no_grad()
def test_the_public_api_converts_and_relaxes_in_two_calls():
    source = source_model("llama")
    relaxed = rrt.relax(rrt.convert(source, loops=2, init="average"), source, rank="full")
    x = tokens()
    assert max_diff(relaxed(x).logits, source(x).logits) < TOL  # full rank is exact


@torch.no_grad()
def test_loop_spans_run_each_loop_on_its_slice_of_tokens_sorted_by_loop():
    from rrt.model.modeling import LoopedNorm, LoopSpans

    torch.manual_seed(0)
    linear = LoopedLinear(8, 6, num_loops=3, rank=2, bias=True, loop_bias=True)
    torch.nn.init.normal_(linear.lora_B)
    torch.nn.init.normal_(linear.bias)
    loops = [0, 0, 1, 2, 2, 2]
    spans = LoopSpans.of(loops)
    assert spans.spans == ((0, 0, 2), (1, 2, 3), (2, 3, 6))
    x = torch.randn(1, 6, 8)
    y = linear(x, spans)
    for t, loop in enumerate(loops):
        assert torch.allclose(y[0, t], linear(x[:, t : t + 1], loop)[0, 0], atol=1e-6)
    norm = LoopedNorm([torch.nn.LayerNorm(8) for _ in range(3)], heads_first=True)
    for i, n in enumerate(norm.loops):
        torch.nn.init.constant_(n.weight, i + 1.0)
    heads = torch.randn(1, 4, 6, 8)  # [batch, heads, seq, dim]
    z = norm(heads, spans)
    for t, loop in enumerate(loops):
        assert torch.allclose(z[:, :, t], norm.loops[loop](heads[:, :, t]))
    with pytest.raises(ValueError, match="sorted by loop"):
        LoopSpans.of([1, 0])
    with pytest.raises(ValueError, match="loop ids must be in 0..2"):
        linear(x, LoopSpans(((3, 0, 6),)))


def test_a_rank_above_full_is_recorded_as_the_rank_the_linears_hold():
    source = source_model("llama")
    asked = relax(convert(source, loops=2), source, rank=10_000)
    full = relax(convert(source, loops=2), source, rank="full")
    assert asked.config.lora_rank == full.config.lora_rank
    assert all(r < 10_000 for r in asked.config.lora_rank.values())
