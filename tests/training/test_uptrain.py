"""Uptraining with distillation and early-exit post-training (paper app. E, sec. 3.7)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from rrt.errors import UserError
from rrt.method.convert import convert
from rrt.method.relax import relax
from rrt.stories.corpus import CorpusConfig, write_corpus
from rrt.stories.tokenizer import TokenizerConfig, build_tokenizer
from rrt.training.objective import UptrainLoss, forward_kl, next_token_ce, uptrain_loss
from rrt.training.trainer import TrainConfig
from rrt.training.uptrain import uptrain

TINY_TRAIN = dict(
    tokens=4096, seq_len=32, tokens_per_step=512, micro_batch_size=8, lr=3e-3,
    warmup_steps=1, save_every=2, eval_tokens=1024,
)  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("uptrain")
    corpus, tokenizer = root / "corpus", root / "tokenizer"
    write_corpus(corpus, CorpusConfig(tokens=40_000, validation_documents=40, test_documents=5))
    build_tokenizer(corpus, tokenizer, TokenizerConfig(vocab_size=300))
    from rrt.store import load_tokenizer

    tok = load_tokenizer(tokenizer)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    source = LlamaForCausalLM(config).eval()
    paths = {"root": root, "corpus": corpus, "tokenizer": tokenizer}
    for name, model in {
        "source": source,
        "recursive": convert(source, loops=2, init="stepwise"),
        "relaxed": relax(convert(source, loops=2, init="average"), source, rank=4),
    }.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
    return paths


def test_forward_kl_is_the_kl_divergence_and_zero_for_identical_logits():
    teacher, student = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    expected = torch.nn.functional.kl_div(
        student[:, :-1].log_softmax(-1), teacher[:, :-1].log_softmax(-1),
        log_target=True, reduction="none",
    ).sum(-1).mean()  # fmt: skip
    assert forward_kl(teacher, student).item() == pytest.approx(expected.item(), rel=1e-5)
    assert forward_kl(teacher, teacher).abs().item() < 1e-6
    assert forward_kl(teacher, student, temperature=2.0) > 0


def test_loss_mixes_cross_entropy_and_distillation(workspace):
    from rrt.store import load_model

    student, teacher = load_model(workspace["recursive"]), load_model(workspace["source"])
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    loss, parts = uptrain_loss(UptrainLoss(kd_weight=0.3, temperature=2.0), teacher)(student, batch)
    logits = student(input_ids=ids).logits
    ce = next_token_ce(logits, ids)
    kd = forward_kl(teacher(input_ids=ids).logits, logits, 2.0)
    assert loss.item() == pytest.approx((0.7 * ce + 0.3 * kd).item(), rel=1e-5)
    assert set(parts) == {"ce", "kd"}


def test_early_exit_loss_weights_intermediate_loops_and_self_distills(workspace):
    from rrt.store import load_model

    model = load_model(workspace["relaxed"])
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    batch = {"input_ids": ids, "labels": ids}
    loss, parts = uptrain_loss(UptrainLoss(kd_weight=0.0, early_exit=True))(model, batch)
    first, final = model.loop_logits(ids)
    expected = next_token_ce(final, ids) + 0.1 * (
        next_token_ce(first, ids) + forward_kl(final.detach(), first)
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(parts) == {"ce", "ce_loop1", "sd_loop1"}
    loss.backward()  # the final loop's logits get no gradient from self-distillation targets
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


def test_uptrain_writes_a_model_with_metrics_and_lowers_the_loss(workspace, tmp_path):
    out = tmp_path / "uptrained"
    metrics = uptrain(
        workspace["relaxed"], workspace["corpus"], out, TrainConfig(**TINY_TRAIN),
        UptrainLoss(kd_weight=0.5), teacher_dir=workspace["source"],
    )  # fmt: skip
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["tokens"] == 4096 and saved["tokens_per_second"] > 0
    assert saved["peak_memory_mb"] > 0  # the process's peak resident set, on the CPU
    assert set(saved["held_out_exits"]) == {"ce_loop1", "ce_loop2", "acc_loop1", "acc_loop2"}
    assert {"ce", "kd"} <= set(saved["validation"])
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert {"loss", "ce", "kd", "learning_rate", "tokens", "tokens_per_second"} <= set(steps[0])
    assert steps[-1]["ce"] < steps[0]["ce"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert metrics["run"]["teacher"] == str(workspace["source"])


def test_uptraining_is_tracked_in_mlflow_with_its_held_out_exits(workspace, tmp_path):
    from mlflow import MlflowClient

    from rrt.tracking import Tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "uptrained"
    uptrain(
        workspace["recursive"], workspace["corpus"], out, TrainConfig(**TINY_TRAIN),
        UptrainLoss(kd_weight=0.0), tracking=Tracking(uri, "uptrain-test", "recursive-up"),
    )  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("uptrain-test").experiment_id])
    assert run.data.tags["rrt.stage"] == "uptrain" and run.info.status == "FINISHED"
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("acc_loop1", "ce_loop2"):
        logged = run.data.metrics[f"final.held_out_exits.{key}"]
        assert logged == pytest.approx(saved["held_out_exits"][key])
    assert json.loads(run.data.params["run.loss.kd_weight"]) == 0.0


@pytest.mark.parametrize("early_exit", [False, True])
def test_bf16_mixed_precision_uptraining_keeps_the_loop_exits_and_saves(
    workspace, tmp_path, early_exit
):
    """accelerate's bf16 mixed precision (the GPU default) wraps the forward; on the CPU it runs
    the same wrapper. Both held-out exits and early-exit training read the per-loop exits."""
    from rrt.cli import main

    out = tmp_path / "bf16"
    args = ["uptrain", "--model", str(workspace["relaxed"]),
            "--teacher", str(workspace["source"]), "--corpus", str(workspace["corpus"]),
            "--out", str(out), "--precision", "bf16"]  # fmt: skip
    for key, value in TINY_TRAIN.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    assert main(args + (["--early-exit"] if early_exit else [])) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["run"]["precision"] == "bf16"
    assert set(saved["held_out_exits"]) == {"ce_loop1", "ce_loop2", "acc_loop1", "acc_loop2"}
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert ("ce_loop1" in steps[0]) == early_exit
    assert (out / "model.safetensors").is_file()


def test_gradient_checkpointing_trains_to_the_same_loss(workspace, tmp_path):
    config = dict(TINY_TRAIN, tokens=1024, eval_tokens=0)
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"gc-{checkpointing}"
        uptrain(
            workspace["relaxed"], workspace["corpus"], out,
            TrainConfig(**config, gradient_checkpointing=checkpointing),
            UptrainLoss(kd_weight=0.0, early_exit=True),
        )  # fmt: skip
        runs[checkpointing] = [
            json.loads(line)["loss"] for line in (out / "steps.jsonl").read_text().splitlines()
        ]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)


def test_an_unknown_precision_fails_clearly(workspace, tmp_path):
    with pytest.raises(
        UserError, match="train.precision: 'fp16' is not allowed; choose one of auto, bf16, fp32"
    ):
        uptrain(workspace["recursive"], workspace["corpus"], tmp_path / "p",
                TrainConfig(**TINY_TRAIN, precision="fp16"),
                UptrainLoss(kd_weight=0.0))  # fmt: skip


def test_bad_uptrain_settings_fail_clearly(workspace, tmp_path):
    config = TrainConfig(**TINY_TRAIN)
    with pytest.raises(UserError, match="needs a --teacher"):
        uptrain(workspace["recursive"], workspace["corpus"], tmp_path / "a", config, UptrainLoss())
    with pytest.raises(UserError, match="--early-exit needs a recursive model"):
        uptrain(workspace["source"], workspace["corpus"], tmp_path / "b", config,
                UptrainLoss(kd_weight=0.0, early_exit=True))  # fmt: skip
    with pytest.raises(
        UserError, match="uptrain.loss.kd_weight: 1.5 is greater than the maximum of 1"
    ):
        uptrain(workspace["recursive"], workspace["corpus"], tmp_path / "c", config,
                UptrainLoss(kd_weight=1.5), teacher_dir=workspace["source"])  # fmt: skip


def _uptrain_command(workspace: dict[str, Path], out: Path) -> list[str]:
    args = [sys.executable, "-m", "rrt", "uptrain", "--model", str(workspace["relaxed"]),
            "--teacher", str(workspace["source"]), "--corpus", str(workspace["corpus"]),
            "--out", str(out)]  # fmt: skip
    for key, value in {**TINY_TRAIN, "tokens": 12288}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.mark.slow
def test_killed_uptraining_resumes_to_the_same_final_loss(workspace, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    unbroken = tmp_path / "unbroken"
    subprocess.run(_uptrain_command(workspace, unbroken), check=True, env=env, capture_output=True)

    out = tmp_path / "killed"
    work = out.with_name(out.name + ".work")
    process = subprocess.Popen(
        _uptrain_command(workspace, out), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 120
    while not list(work.glob("checkpoint-4")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists(), "the run finished before it could be killed"
    assert list(work.glob("checkpoint-*"))

    # Resuming with another corpus (its train split edited) is refused, naming what changed.
    other = shutil.copytree(workspace["corpus"], tmp_path / "other-corpus")
    lines = (other / "train.jsonl").read_text().splitlines()
    (other / "train.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    command = _uptrain_command(workspace, out)
    command[command.index("--corpus") + 1] = str(other)
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "run.train_tokens" in refused.stderr.splitlines()[-1]
    assert list(work.glob("checkpoint-*")), "the refusal lost the checkpoints"

    result = subprocess.run(
        _uptrain_command(workspace, out), env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = json.loads((out / "metrics.json").read_text())
    reference = json.loads((unbroken / "metrics.json").read_text())
    assert resumed["resumed_from_step"] >= 4
    assert resumed["final_step"]["loss"] == pytest.approx(reference["final_step"]["loss"], rel=1e-4)
    assert resumed["validation"]["ce"] == pytest.approx(reference["validation"]["ce"], rel=1e-4)
