"""Uptraining (paper app. E, I) and early-exit post-training (sec. 3.7, app. J).

All weights train (shared block and LoRAs alike) on a token budget with the objective of
:mod:`rrt.training.objective`: CE plus forward-KL distillation from the full-size source, or, with
``early_exit``, the paper's aggressive early-exit loss. The same trainer uptrains the full-size
baseline: any causal LM works where early exit is off.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn
from transformers import set_seed

from rrt import store
from rrt.errors import UserError
from rrt.model.modeling import RecursiveForCausalLM
from rrt.model.sizes import count_parameters
from rrt.tracking import Tracking
from rrt.training.objective import UptrainLoss, exit_metrics, load_teacher, uptrain_loss
from rrt.training.trainer import (
    PackedBlocks,
    TrainConfig,
    evaluate_loss,
    resolve_precision,
    token_files,
    train,
)


def held_out_exits(
    model: nn.Module, tokens: str | Path, seq_len: int, max_tokens: int, batch_size: int = 16
) -> dict[str, float]:
    """Per-loop held-out CE and next-token accuracy over the first ``max_tokens`` tokens."""
    blocks = PackedBlocks(tokens, seq_len, None, None)
    blocks.length = max(1, min(blocks.blocks, max_tokens // seq_len))
    metrics = evaluate_loss(model, blocks, batch_size, exit_metrics)
    metrics.pop("loss")
    return metrics


def uptrain(
    model_dir: str | Path,
    corpus: str | Path,
    out: str | Path,
    recipe: TrainConfig,
    loss: UptrainLoss,
    teacher_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    tracking: Tracking | None = None,
) -> dict[str, Any]:
    """Uptrain the model in ``model_dir`` on ``corpus``; resumes a killed run by itself."""
    loss.check(has_teacher=teacher_dir is not None)
    recipe.plan()  # fail on a bad budget before loading anything
    store.model_dir(model_dir)  # a missing model is named as one, not as a missing tokenizer
    tokenizer_dir = Path(tokenizer_dir or model_dir)
    tokenizer = store.load_tokenizer(tokenizer_dir)
    set_seed(recipe.seed)
    model = store.load_model(model_dir)
    if loss.early_exit and not isinstance(model, RecursiveForCausalLM):
        raise UserError(
            f"--early-exit needs a recursive model; {model_dir} is {type(model).__name__}"
        )
    text = model.config.get_text_config()
    if len(tokenizer) > text.vocab_size:
        raise UserError(
            f"the tokenizer in {tokenizer_dir} has {len(tokenizer):,} tokens, more than the "
            f"model's vocabulary of {text.vocab_size:,}: use the model's own tokenizer"
        )
    context = getattr(text, "max_position_embeddings", None)
    if context is not None and recipe.seq_len > context:
        raise UserError(
            f"--seq-len {recipe.seq_len} is beyond the model's context of {context} positions"
        )
    teacher = None
    if teacher_dir is not None and loss.kd_weight > 0:
        teacher = load_teacher(teacher_dir, text.vocab_size)
    model.train()
    tokens = token_files(corpus, tokenizer_dir, out)

    def final_metrics(trained: nn.Module) -> dict[str, Any]:
        if recipe.eval_tokens <= 0:
            return {}
        validation, batch = tokens["validation_tokens"], recipe.micro_batch_size
        exits = held_out_exits(trained, validation, recipe.seq_len, recipe.eval_tokens, batch)
        return {"held_out_exits": exits}

    run_info = {
        "model": str(model_dir),
        "model_files": store.model_fingerprint(model_dir),
        "teacher": str(teacher_dir) if teacher else None,
        "teacher_files": store.model_fingerprint(teacher_dir) if teacher else None,
        "loss": asdict(loss),
        "parameters": count_parameters(model),
        "tokenizer": store.tokenizer_fingerprint(tokenizer_dir),
    }
    return train(
        model,
        tokenizer,
        **tokens,
        out=out,
        config=recipe,
        loss_fn=uptrain_loss(loss, teacher, resolve_precision(recipe.precision)),
        run_info=run_info,
        final_metrics=final_metrics,
        tracking=tracking,
        stage="uptrain",
    )
