"""The uptraining objective (paper sec. 2.3, app. E, I; early exit sec. 3.7, app. J).

``(1 - w) * CE + w * T^2 * KL(teacher || student)``, the teacher being the frozen full-size
source (forward KL was the paper's best). With ``early_exit`` it becomes the paper's
"aggressive" post-training loss: the final loop keeps weight 1, and every intermediate loop's
exit (through the shared final norm and head) adds ``exit_weight`` times its own CE plus a
self-distillation KL from the detached final loop. Uptraining, the reduced-size baselines'
pretraining and held-out evaluation all use these functions.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrt import store
from rrt.config import section
from rrt.errors import UserError
from rrt.model.modeling import RecursiveForCausalLM
from rrt.training.trainer import LossFn


@section("uptrain.loss")
class UptrainLoss:
    """The uptraining objective (``uptrain.loss`` in the config schema)."""

    kd_weight: float
    temperature: float
    early_exit: bool
    exit_weight: float

    def check(self, has_teacher: bool) -> None:
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
    """The loss hook for :func:`rrt.training.trainer.train`; components are logged per step.

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
