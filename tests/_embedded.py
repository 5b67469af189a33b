"""Tiny versions of the embedded default (corpus, tokenizer, model, recipe) for fast tests."""

from __future__ import annotations

from pathlib import Path

from rrt.stories.corpus import CorpusConfig, write_corpus
from rrt.stories.tokenizer import TokenizerConfig, build_tokenizer
from rrt.training.pretrain import ModelShape
from rrt.training.trainer import TrainConfig

CORPUS = CorpusConfig(tokens=40_000, validation_documents=40, test_documents=120, seed=0)
TOKENIZER = TokenizerConfig(vocab_size=400, model_max_length=256)
SHAPE = ModelShape(layers=2, hidden_size=32, heads=2, kv_heads=1, intermediate_size=64)
RECIPE = TrainConfig(
    tokens=8 * 256,
    seq_len=32,
    tokens_per_step=256,
    micro_batch_size=4,
    lr=3e-3,
    warmup_steps=2,
    save_every=2,
    eval_tokens=512,
)


def corpus(root: Path, config: CorpusConfig = CORPUS) -> Path:
    return Path(write_corpus(root / "corpus", config) and root / "corpus")


def tokenizer(corpus_dir: Path, root: Path) -> Path:
    return build_tokenizer(corpus_dir, root / "tokenizer", TOKENIZER)


def shape_args(shape: ModelShape = SHAPE) -> list[str]:
    return [
        "--layers", str(shape.layers), "--hidden-size", str(shape.hidden_size),
        "--heads", str(shape.heads), "--kv-heads", str(shape.kv_heads),
        "--intermediate-size", str(shape.intermediate_size),
    ]  # fmt: skip


def recipe_args(recipe: TrainConfig = RECIPE) -> list[str]:
    return [
        "--tokens", str(recipe.tokens), "--seq-len", str(recipe.seq_len),
        "--tokens-per-step", str(recipe.tokens_per_step),
        "--micro-batch-size", str(recipe.micro_batch_size), "--lr", str(recipe.lr),
        "--warmup-steps", str(recipe.warmup_steps), "--save-every", str(recipe.save_every),
        "--eval-tokens", str(recipe.eval_tokens),
    ]  # fmt: skip
