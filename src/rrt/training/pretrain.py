"""Pretraining from scratch: the embedded default's source model and the reduced-size baselines.

Why: with no hub access the method still needs a "pretrained model" to convert, so the
embedded default pretrains transformers' own ``LlamaForCausalLM`` on the generated corpus,
exactly as a hub model would arrive (save_pretrained + tokenizer). The paper's reduced-size
baseline (sec. 3, app. I) is the same recipe with N/B layers, trained from scratch on the same
tokens: ``rrt pretrain --layers 4`` for B = 2 of an 8-layer source, distilled from the source
like the recursive models (``--teacher``), as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    set_seed,
)

from rrt import store
from rrt.config import section
from rrt.errors import UserError
from rrt.method.reduced import shallower
from rrt.store import load_tokenizer, tokenizer_fingerprint
from rrt.tracking import Tracking
from rrt.training.data import read_meta
from rrt.training.objective import UptrainLoss, load_teacher, uptrain_loss
from rrt.training.trainer import (
    TrainConfig,
    causal_lm_loss,
    resolve_precision,
    token_files,
    train,
)


@section("source.embedded")
class ModelShape:
    """The Llama pretrained here (``source.embedded`` in the config schema)."""

    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    intermediate_size: int
    rope_theta: float
    tie_embeddings: bool

    def check(self) -> None:
        if self.hidden_size % self.heads or self.heads % self.kv_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} must divide by heads {self.heads}, "
                f"and heads by kv_heads {self.kv_heads}"
            )


def llama_config(
    shape: ModelShape, tokenizer: PreTrainedTokenizerBase, max_positions: int
) -> LlamaConfig:
    shape.check()
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max_positions,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def pretrain(
    corpus: str | Path,
    tokenizer_dir: str | Path,
    out: str | Path,
    shape: ModelShape,
    recipe: TrainConfig,
    tracking: Tracking | None = None,
    teacher_dir: str | Path | None = None,
    loss: UptrainLoss | None = None,
    like: str | Path | None = None,
) -> dict[str, Any]:
    """Pretrain a fresh Llama of ``shape`` on ``corpus``; resumes a killed run by itself.

    With ``teacher_dir`` the objective is uptraining's CE + forward KL (``loss``), which is how
    the paper trains its reduced-size baselines. With ``like`` the model is instead the
    architecture of the model in that folder (a hub source's) with ``shape.layers`` layers.
    """
    meta = read_meta(corpus)
    tokenizer = load_tokenizer(tokenizer_dir)
    recipe.plan()  # fail on a bad budget before tokenizing anything
    loss = loss or UptrainLoss()
    if teacher_dir is not None:
        loss.check(has_teacher=True)
        if loss.early_exit:
            raise UserError("--early-exit is for recursive models, not for pretraining")
    set_seed(recipe.seed)  # the model and teacher first: a bad shape fails before tokenizing
    if like is not None:
        model = AutoModelForCausalLM.from_config(shallower(store.load_config(like), shape.layers))
    else:
        model = LlamaForCausalLM(llama_config(shape, tokenizer, recipe.seq_len))
    loss_fn = causal_lm_loss
    if teacher_dir is not None and loss.kd_weight > 0:
        teacher = load_teacher(teacher_dir, model.config.vocab_size)
        loss_fn = uptrain_loss(loss, teacher, resolve_precision(recipe.precision))
    run_info = {
        "model": asdict(shape) if like is None else {"like": str(like), "layers": shape.layers},
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_sha256": {s: meta["splits"][s]["sha256"] for s in ("train", "validation")},
        "tokenizer": tokenizer_fingerprint(tokenizer_dir),
        "teacher": str(teacher_dir) if teacher_dir is not None else None,
        "teacher_files": store.model_fingerprint(teacher_dir) if teacher_dir is not None else None,
        "loss": asdict(loss) if teacher_dir is not None else None,
    }
    return train(
        model,
        tokenizer,
        **token_files(corpus, tokenizer_dir, out),
        out=out,
        config=recipe,
        run_info=run_info,
        loss_fn=loss_fn,
        tracking=tracking,
        stage="pretrain",
    )
