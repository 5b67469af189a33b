"""Uptraining (paper app. E, I) and early-exit post-training (sec. 3.7, app. J).

All weights train (shared block and LoRAs alike) on a token budget with
``(1 - w) * CE + w * T^2 * KL(teacher || student)``, the teacher being the full-size source model
(forward KL was the paper's best). With ``early_exit`` the objective becomes the paper's
"aggressive" post-training loss: the final loop keeps weight 1, and every intermediate loop's
exit (through the shared final norm and head) adds ``exit_weight`` times its own CE plus a
self-distillation KL from the detached final loop. The same trainer uptrains the full-size and
the reduced-size baselines: any causal LM works where early exit is off.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import set_seed

from rrt import store
from rrt import tracking as mlflow_tracking
from rrt.errors import UserError
from rrt.modeling import RecursiveForCausalLM
from rrt.params import count_parameters
from rrt.tokenizer import fingerprint, load_tokenizer
from rrt.tracking import Tracking
from rrt.train import (
    LossFn,
    PackedBlocks,
    TrainConfig,
    add_config_arguments,
    config_from_arguments,
    evaluate_loss,
    resolve_precision,
    token_file,
    train,
)

# The pretraining recipe with uptraining's budget and learning rate (``uptrain`` in config.yaml).
# The budget is an eighth of the source's pretraining, so that, as in the paper, the student stays
# below its teacher: with 1M tokens the embedded recursive model passes its (small) teacher's
# held-out CE, and distilling from it then costs more than it brings.
UPTRAIN_RECIPE = TrainConfig(tokens=262_144, lr=1e-3)


@dataclass
class UptrainLoss:
    """The uptraining objective. Defaults mirror ``uptrain.loss`` in config/config.yaml."""

    kd_weight: float = 0.5  # w: the paper gives no mix, we take half CE, half forward KL
    temperature: float = 1.0
    early_exit: bool = False  # the aggressive early-exit post-training loss (sec. 3.7)
    exit_weight: float = 0.1  # weight of each intermediate loop's exit

    def check(self, has_teacher: bool) -> None:
        if not 0.0 <= self.kd_weight <= 1.0:
            raise UserError(f"kd_weight must be in [0, 1], got {self.kd_weight}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be positive, got {self.temperature}")
        if self.exit_weight < 0:
            raise UserError(f"exit_weight must be >= 0, got {self.exit_weight}")
        if self.kd_weight > 0 and not has_teacher:
            raise UserError(f"kd_weight {self.kd_weight} needs a --teacher (or set --kd-weight 0)")


def next_token_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of predicting token t+1 from position t."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def forward_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 * KL(p_teacher || p_student) per next-token position, averaged (Hinton et al.)."""
    t = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    s = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def load_teacher(teacher_dir: str | Path, vocab_size: int) -> nn.Module:
    """The frozen full-size teacher; :func:`uptrain_loss` moves it to the student's device."""
    teacher = store.load_model(teacher_dir)
    teacher.requires_grad_(False)
    if teacher.config.get_text_config().vocab_size != vocab_size:
        raise UserError(
            f"teacher {teacher_dir} has a vocabulary of "
            f"{teacher.config.get_text_config().vocab_size} tokens, "
            f"the student {vocab_size}: distillation needs the same tokenizer"
        )
    return teacher


def uptrain_loss(
    loss: UptrainLoss, teacher: nn.Module | None = None, precision: str = "fp32"
) -> LossFn:
    """The loss hook for :func:`rrt.train.train`; components are logged per step.

    The teacher runs in bf16 when training does (``precision``): its logits only feed the KL.
    """
    teacher_dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def loss_fn(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        ids, labels = batch["input_ids"], batch["labels"]
        out = (
            model(input_ids=ids, return_loop_logits=True)
            if loss.early_exit
            else model(input_ids=ids)
        )
        exits = out.loop_logits if loss.early_exit else [out.logits]
        final = exits[-1]
        ce = next_token_ce(final, labels)
        components = {"ce": ce.detach()}
        total = ce
        if teacher is not None and loss.kd_weight > 0:
            if teacher.device != ids.device or teacher.dtype != teacher_dtype:
                teacher.to(ids.device, dtype=teacher_dtype)  # once: the Trainer placed the batch
            with torch.no_grad():
                teacher_logits = teacher(input_ids=ids).logits
            kd = forward_kl(teacher_logits, final, loss.temperature)
            total = (1 - loss.kd_weight) * ce + loss.kd_weight * kd
            components["kd"] = kd.detach()
        target = final.detach()
        for loop, logits in enumerate(exits[:-1], start=1):
            exit_ce = next_token_ce(logits, labels)
            self_distill = forward_kl(target, logits)
            total = total + loss.exit_weight * (exit_ce + self_distill)
            components[f"ce_loop{loop}"] = exit_ce.detach()
            components[f"sd_loop{loop}"] = self_distill.detach()
        return total, components

    return loss_fn


@torch.no_grad()
def exit_metrics(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token CE and accuracy of every loop's exit (one loop for a non-recursive model)."""
    ids, labels = batch["input_ids"], batch["labels"]
    if isinstance(model, RecursiveForCausalLM):
        exits = model.loop_logits(ids)
    else:
        exits = [model(input_ids=ids).logits]
    out: dict[str, Tensor] = {}
    for loop, logits in enumerate(exits, start=1):
        out[f"ce_loop{loop}"] = next_token_ce(logits, labels)
        predicted = logits[:, :-1].argmax(-1)
        out[f"acc_loop{loop}"] = (predicted == labels[:, 1:]).float().mean()
    return out[f"ce_loop{len(exits)}"], out


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
    config: TrainConfig,
    loss: UptrainLoss,
    teacher_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    tracking: Tracking | None = None,
) -> dict[str, Any]:
    """Uptrain the model in ``model_dir`` on ``corpus``; resumes a killed run by itself."""
    loss.check(has_teacher=teacher_dir is not None)
    config.plan()  # fail on a bad budget before loading anything
    tokenizer_dir = Path(tokenizer_dir or model_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    set_seed(config.seed)
    model = store.load_model(model_dir)
    if loss.early_exit and not isinstance(model, RecursiveForCausalLM):
        raise UserError(
            f"--early-exit needs a recursive model; {model_dir} is {type(model).__name__}"
        )
    teacher = None
    if teacher_dir is not None and loss.kd_weight > 0:
        teacher = load_teacher(teacher_dir, model.config.get_text_config().vocab_size)
    model.train()
    train_tokens = token_file(corpus, tokenizer_dir, "train")
    validation_tokens = token_file(corpus, tokenizer_dir, "validation")

    def final_metrics(trained: nn.Module) -> dict[str, Any]:
        if config.eval_tokens <= 0:
            return {}
        exits = held_out_exits(
            trained, validation_tokens, config.seq_len, config.eval_tokens, config.micro_batch_size
        )
        return {"held_out_exits": exits}

    run_info = {
        "model": str(model_dir),
        "teacher": str(teacher_dir) if teacher else None,
        "loss": asdict(loss),
        "parameters": count_parameters(model),
        "tokenizer": fingerprint(tokenizer_dir),
    }
    return train(
        model,
        tokenizer,
        train_tokens=train_tokens,
        validation_tokens=validation_tokens,
        out=out,
        config=config,
        loss_fn=uptrain_loss(loss, teacher, resolve_precision(config.precision)),
        run_info=run_info,
        final_metrics=final_metrics,
        tracking=tracking,
        stage="uptrain",
    )


def add_cli(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, type=Path, help="model folder to start from")
    p.add_argument("--corpus", required=True, type=Path, help="folder written by `rrt corpus`")
    p.add_argument("--out", required=True, type=Path, help="output model folder")
    p.add_argument("--teacher", type=Path, help="full-size teacher model folder (KD)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the model's)")
    add_config_arguments(p, UptrainLoss, UptrainLoss())
    add_config_arguments(p, TrainConfig, UPTRAIN_RECIPE)
    mlflow_tracking.add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    loss = config_from_arguments(UptrainLoss, args)
    config = config_from_arguments(TrainConfig, args)
    tracking = mlflow_tracking.from_arguments(args)
    metrics = uptrain(
        args.model, args.corpus, args.out, config, loss, args.teacher, args.tokenizer, tracking
    )
    if not metrics:  # a data-parallel process other than the main one
        return
    held_out = "no held-out evaluation (--eval-tokens 0)"
    if "held_out_exits" in metrics:
        accuracy = [v for k, v in metrics["held_out_exits"].items() if k.startswith("acc")]
        held_out = (
            f"held-out CE {metrics['validation']['ce']:.4f}; per-loop next-token accuracy "
            + ", ".join(f"{v:.3f}" for v in accuracy)
        )
    print(
        f"uptrained on {metrics['tokens']:,} tokens in {metrics['train_seconds']:.0f} s "
        f"({metrics['tokens_per_second']:.0f} tokens/s); {held_out}; saved to {args.out}"
    )
