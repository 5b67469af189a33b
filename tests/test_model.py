"""Exactness of the recursive model core, for every supported family (paper sec. 2.2-2.3)."""

from __future__ import annotations

import pytest
import torch
from _families import FAMILY_CONFIGS, source_model, tokens
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import rrt
from rrt.convert import convert, init_groups, stepwise_indices
from rrt.errors import UserError
from rrt.modeling import LoopedLinear, RecursiveForCausalLM
from rrt.relax import relax

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


def test_exit_loop_runs_only_the_first_loops():
    source = source_model("llama")
    model = convert(source, loops=3, init="average")
    x = tokens()
    with torch.no_grad():
        full = model(x).logits
        model.set_exit_loop(1)
        first = model(x).logits
        model.set_exit_loop(3)
        assert torch.equal(model(x).logits, full)
        model.set_exit_loop(None)
    assert max_diff(first, full) > 1e-3
    with pytest.raises(ValueError, match="1..3"):
        model.set_exit_loop(4)


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
        (dict(loops=4), "does not divide the source's 6 layers; allowed: 1, 2, 3, 6"),
        (dict(loops=0), "does not divide"),
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
        model.set_exit_loop(loop)
        assert max_diff(logits, model(x).logits) < 1e-5
    model.set_exit_loop(None)
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
