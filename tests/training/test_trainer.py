"""The generic trainer: budget, seeded packed data, loss hook, atomic checkpoints, resume."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from _embedded import RECIPE, SHAPE, corpus, tokenizer
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint

from rrt.errors import UserError
from rrt.store import load_tokenizer
from rrt.training.pretrain import llama_config
from rrt.training.trainer import (
    LossHookTrainer,
    PackedBlocks,
    TrainConfig,
    causal_lm_loss,
    token_file,
    train,
    work_dir,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    corpus_dir = corpus(root)
    tok_dir = tokenizer(corpus_dir, root)
    return {
        "corpus": corpus_dir,
        "tokenizer": tok_dir,
        "train": token_file(corpus_dir, tok_dir, "train", root / "cache"),
        "validation": token_file(corpus_dir, tok_dir, "validation", root / "cache"),
    }


def _model(data, seed: int = 0):
    set_seed(seed)
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(data["tokenizer"])
    return LlamaForCausalLM(llama_config(SHAPE, tok, RECIPE.seq_len)), tok


def _run(data, out: Path, config: TrainConfig = RECIPE, **kwargs):
    model, tok = _model(data)
    metrics = train(
        model,
        tok,
        train_tokens=data["train"],
        validation_tokens=data["validation"],
        out=out,
        config=config,
        **kwargs,
    )
    return metrics, model


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_plan_turns_the_token_budget_into_steps_and_accumulation():
    plan = TrainConfig(tokens=10_000, seq_len=32, tokens_per_step=256, micro_batch_size=4).plan()
    assert plan.accumulation == 2  # 256 tokens per step = 2 micro-batches of 4 x 32
    assert plan.steps == 40  # ceil(10_000 / 256)
    assert plan.sequences == 40 * 2 * 4


def test_data_parallel_processes_share_the_accumulation_and_keep_the_tokens_per_step():
    config = TrainConfig(tokens=10_000, seq_len=32, tokens_per_step=256, micro_batch_size=4)
    plan = config.plan(world_size=2)
    assert (plan.steps, plan.accumulation, plan.sequences) == (40, 1, 40 * 1 * 4 * 2)
    with pytest.raises(UserError, match="4 x 32 x 4 = 512"):
        config.plan(world_size=4)


def test_plan_rejects_a_step_size_that_micro_batches_cannot_reach():
    with pytest.raises(UserError, match="tokens_per_step 100 .* 128"):
        TrainConfig(seq_len=32, tokens_per_step=100, micro_batch_size=4).plan()
    with pytest.raises(UserError, match="train.tokens: 0 is less than the minimum of 1"):
        TrainConfig(tokens=0)


def test_a_vocabulary_over_65535_tokens_gets_uint32_token_files(data, tmp_path):
    """Gemma's 256k vocabulary does not fit uint16."""
    import shutil

    tok = load_tokenizer(data["tokenizer"])
    tok.add_tokens([f"<extra{i}>" for i in range(70_000)])
    tok.save_pretrained(tmp_path / "big")
    corpus_dir = shutil.copytree(data["corpus"], tmp_path / "corpus")
    tokens = np.load(token_file(corpus_dir, tmp_path / "big", "validation", tmp_path / "cache"))
    small = np.load(data["validation"])
    assert tokens.dtype == np.uint32 and np.array_equal(tokens, small)


def test_token_file_is_cached_and_starts_every_document_with_the_separator(data):
    tokens = np.load(data["train"])
    tok = load_tokenizer(data["tokenizer"])
    assert tokens.dtype == np.uint16 and tokens[0] == tok.eos_token_id
    docs = (tokens == tok.eos_token_id).sum()
    meta = json.loads((data["corpus"] / "meta.json").read_text())
    assert docs == meta["splits"]["train"]["documents"]
    mtime = data["train"].stat().st_mtime_ns
    cache = data["train"].parent
    assert token_file(data["corpus"], data["tokenizer"], "train", cache) == data["train"]
    assert data["train"].stat().st_mtime_ns == mtime  # written once
    assert not list(data["corpus"].glob("*.npy")), "the cache went into the input corpus"


def test_a_split_edited_in_place_is_tokenized_again(data, tmp_path):
    """The cache keys on the split file's content, not on what meta.json recorded."""
    import shutil

    corpus_dir = shutil.copytree(data["corpus"], tmp_path / "corpus")
    cache = tmp_path / "cache"
    before = token_file(corpus_dir, data["tokenizer"], "validation", cache)
    lines = (corpus_dir / "validation.jsonl").read_text().splitlines()
    (corpus_dir / "validation.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    after = token_file(corpus_dir, data["tokenizer"], "validation", cache)
    assert after != before and len(np.load(after)) < len(np.load(before))


def test_packed_blocks_visit_every_block_once_per_pass_in_a_seeded_order(data):
    blocks = PackedBlocks(data["train"], 32, None, seed=7)
    n = blocks.blocks
    two_passes = PackedBlocks(data["train"], 32, 2 * n, seed=7)
    firsts = [int(two_passes[i]["input_ids"][0]) for i in range(2 * n)]
    tokens = np.load(data["train"])
    expected = sorted(int(tokens[b * 32]) for b in range(n))
    assert sorted(firsts[:n]) == expected and sorted(firsts[n:]) == expected
    assert firsts[:n] != firsts[n:]  # each pass has its own permutation
    again = PackedBlocks(data["train"], 32, 2 * n, seed=7)
    assert all(torch.equal(again[i]["input_ids"], two_passes[i]["input_ids"]) for i in range(5))
    other = PackedBlocks(data["train"], 32, n, seed=8)
    assert [int(other[i]["input_ids"][0]) for i in range(n)] != firsts[:n]


def test_gradient_accumulation_matches_one_large_batch(data, tmp_path):
    one = replace(RECIPE, tokens=256, micro_batch_size=8, eval_tokens=0)
    two = replace(one, micro_batch_size=4)  # 2 micro-batches of 4 reach the same 256 tokens
    _, a = _run(data, tmp_path / "a", one)
    _, b = _run(data, tmp_path / "b", two)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6), name


def test_loss_hook_components_reach_the_step_log_and_metrics(data, tmp_path):
    def hooked(model, batch):
        loss, parts = causal_lm_loss(model, batch)
        return loss, {**parts, "twice": 2 * parts["ce"]}

    metrics, _ = _run(data, tmp_path / "m", loss_fn=hooked)
    steps = _steps(tmp_path / "m")
    assert [s["step"] for s in steps] == list(range(1, RECIPE.plan().steps + 1))
    for s in steps:
        assert s["twice"] == pytest.approx(2 * s["ce"]) and s["loss"] == pytest.approx(s["ce"])
        assert s["tokens"] == s["step"] * RECIPE.tokens_per_step
        assert s["tokens_per_second"] > 0 and s["learning_rate"] >= 0
    assert metrics["validation"]["twice"] == pytest.approx(2 * metrics["validation"]["ce"])
    assert metrics["final_step"] == steps[-1]
    saved = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert saved["tokens"] == RECIPE.plan().steps * RECIPE.tokens_per_step
    assert not work_dir(tmp_path / "m").exists()  # checkpoints go once the model is saved


def test_learning_rate_warms_up_then_decays_by_cosine_to_its_floor(data, tmp_path):
    config = replace(RECIPE, tokens=16 * 256, warmup_steps=4, min_lr_ratio=0.1)
    _run(data, tmp_path / "m", config)
    lrs = [s["learning_rate"] for s in _steps(tmp_path / "m")]
    assert lrs[:5] == pytest.approx(
        [0, 0.25 * config.lr, 0.5 * config.lr, 0.75 * config.lr, config.lr]
    )
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert min(lrs[4:]) >= config.lr * config.min_lr_ratio


def test_a_save_that_dies_midway_leaves_no_checkpoint_that_resume_would_take(
    data, tmp_path, monkeypatch
):
    reference, _ = _run(data, tmp_path / "ref")

    saves = []
    original = LossHookTrainer._save_rng_state

    def dies_on_second_save(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(LossHookTrainer, "_save_rng_state", dies_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "m")
    monkeypatch.undo()
    work = work_dir(tmp_path / "m")
    # The half-written checkpoint-4 exists only in staging; resume would take checkpoint-2.
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2"]
    assert get_last_checkpoint(str(work)).endswith("checkpoint-2")

    resumed, _ = _run(data, tmp_path / "m")
    assert resumed["resumed_from_step"] == 2
    assert resumed["final_step"]["loss"] == pytest.approx(reference["final_step"]["loss"], abs=1e-6)
    assert resumed["validation"]["loss"] == pytest.approx(reference["validation"]["loss"], abs=1e-6)
    assert [s["step"] for s in _steps(tmp_path / "m")] == list(range(1, RECIPE.plan().steps + 1))


def test_only_the_newest_checkpoints_are_kept(data, tmp_path, monkeypatch):
    seen: list[list[str]] = []
    original = LossHookTrainer._save_checkpoint

    def record(self, model, trial):
        original(self, model, trial)
        seen.append(sorted(p.name for p in Path(self.args.output_dir).glob("checkpoint-*")))

    monkeypatch.setattr(LossHookTrainer, "_save_checkpoint", record)
    _run(data, tmp_path / "m", replace(RECIPE, keep_checkpoints=2))
    assert seen[-1] == ["checkpoint-6", "checkpoint-8"]
    assert all(len(names) <= 2 for names in seen)


def test_resuming_with_other_settings_is_refused(data, tmp_path):
    work = work_dir(tmp_path / "m")
    (work / "checkpoint-3").mkdir(parents=True)  # something to resume from
    (work / "run.json").write_text(
        json.dumps({"config": asdict(replace(RECIPE, lr=1.0)), "run": {}})
    )
    with pytest.raises(UserError, match="config.lr"):
        _run(data, tmp_path / "m")


def test_a_failed_run_without_a_checkpoint_does_not_block_a_corrected_rerun(data, tmp_path):
    work = work_dir(tmp_path / "m")
    work.mkdir(parents=True)  # a run that failed before its first checkpoint
    (work / "run.json").write_text(
        json.dumps({"config": asdict(replace(RECIPE, lr=1.0)), "run": {}})
    )
    metrics, _ = _run(data, tmp_path / "m")
    assert metrics["config"]["lr"] == RECIPE.lr and not work.exists()


def test_a_rank_variable_without_a_world_size_still_trains_and_saves(data, tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "4")  # e.g. a shell variable of that name, exported
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    metrics, _ = _run(data, tmp_path / "out")
    assert metrics["tokens"] == RECIPE.tokens and (tmp_path / "out" / "metrics.json").is_file()
