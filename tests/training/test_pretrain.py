"""`rrt pretrain`: a Llama source (or reduced baseline) that loads like a hub model, and resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import psutil
import pytest
import torch
from _embedded import RECIPE, SHAPE, corpus, recipe_args, shape_args, tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from rrt.cli import main
from rrt.errors import UserError
from rrt.method.reduced import reduced_layers
from rrt.training.trainer import TrainConfig, work_dir

# Long enough (in steps) that a kill lands mid-run; tiny steps keep it a few seconds.
LONG = replace(RECIPE, tokens=60 * RECIPE.tokens_per_step, save_every=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    corpus_dir = corpus(root)
    return {"corpus": corpus_dir, "tokenizer": tokenizer(corpus_dir, root)}


def _args(data, out: Path, recipe=RECIPE, shape=SHAPE) -> list[str]:
    return [
        "pretrain", "--corpus", str(data["corpus"]), "--tokenizer", str(data["tokenizer"]),
        "--out", str(out), "--threads", "1", *shape_args(shape), *recipe_args(recipe),
    ]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "rrt", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_after_checkpoint(proc: subprocess.Popen, work: Path, step: int) -> None:
    """SIGKILL the run as soon as checkpoint-``step`` (or a later one) exists."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(int(p.name.split("-")[1]) >= step for p in work.glob("checkpoint-*")):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        assert proc.poll() is None, f"the run ended before checkpoint-{step}: {proc.stderr.read()}"
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no checkpoint-{step} within two minutes")


def _unbroken(data, out: Path, recipe: TrainConfig = LONG) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run (--threads 1): same float sums
    try:
        assert main(_args(data, out, recipe)) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "metrics.json").read_text())


def test_a_killed_pretraining_resumes_from_its_last_checkpoint_and_ends_at_the_same_loss(
    data, tmp_path
):
    out = tmp_path / "killed"
    proc = _start(_args(data, out, LONG))
    _kill_after_checkpoint(proc, work_dir(out), step=6)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # a killed run leaves no output that looks finished
    last = max(int(p.name.split("-")[1]) for p in work_dir(out).glob("checkpoint-*"))

    rerun = _start(_args(data, out, LONG))
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == last >= 6  # continued, not started over

    unbroken = _unbroken(data, tmp_path / "unbroken")
    assert resumed["final_step"]["loss"] == pytest.approx(unbroken["final_step"]["loss"], abs=1e-6)
    assert resumed["validation"]["loss"] == pytest.approx(unbroken["validation"]["loss"], abs=1e-6)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, LONG.plan().steps + 1))


def test_pretrained_source_loads_with_auto_classes_and_generates(data, tmp_path):
    out = tmp_path / "source"
    assert main(_args(data, out)) == 0
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.num_hidden_layers == SHAPE.layers
    assert model.config.num_key_value_heads == SHAPE.kv_heads
    assert model.config.vocab_size == len(tok)
    assert model.config.max_position_embeddings == RECIPE.seq_len
    ids = tok("Anna was in the", return_tensors="pt")["input_ids"]
    generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == ids.shape[1] + 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["model"] == asdict(SHAPE)
    assert metrics["tokens"] == RECIPE.tokens and metrics["validation"]["loss"] > 0
    assert (out / "steps.jsonl").is_file()


def test_reduced_baseline_has_n_over_b_layers():
    assert reduced_layers(8, 2) == 4 and reduced_layers(8, 4) == 2
    with pytest.raises(UserError, match="3 loops do not divide the source's 8 layers"):
        reduced_layers(8, 3)


def test_a_shape_that_heads_cannot_split_is_a_one_line_cli_error(data, tmp_path, capsys):
    bad = replace(SHAPE, heads=3)
    assert main(_args(data, tmp_path / "m", shape=bad)) == 2
    err = capsys.readouterr().err.strip()
    assert "heads 3" in err and "\n" not in err


@pytest.mark.slow
def test_a_run_killed_at_random_moments_still_ends_at_the_unbroken_loss(data, tmp_path):
    # Each attempt is killed at a random moment within its first second of training, so kills
    # land in steps and in saves alike (a checkpoint every 7 steps) on fast and slow machines.
    recipe = replace(RECIPE, tokens=1000 * RECIPE.tokens_per_step, save_every=7)
    out = tmp_path / "killed"
    steps_file = work_dir(out) / "steps.jsonl"
    rng = random.Random(0)
    kills = 0
    while not out.exists() and kills < 6:
        proc = _start(_args(data, out, recipe))
        before = steps_file.stat().st_mtime_ns if steps_file.exists() else 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # wait out the startup
            if steps_file.exists() and steps_file.stat().st_mtime_ns > before:
                break  # the step log was (re)written: training has begun
            time.sleep(0.01)
        try:
            proc.wait(timeout=rng.uniform(0.1, 1.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
    if not out.exists():  # a loaded machine: finish the run unkilled, from its checkpoints
        last = _start(_args(data, out, recipe))
        last.communicate()  # reads stderr, so a long progress bar cannot fill the pipe
        assert last.returncode == 0
    assert out.exists() and kills >= 2
    resumed = json.loads((out / "metrics.json").read_text())
    unbroken = _unbroken(data, tmp_path / "unbroken", recipe)
    assert resumed["final_step"]["loss"] == pytest.approx(unbroken["final_step"]["loss"], abs=1e-6)


def test_reduced_baseline_distils_from_a_teacher_with_the_uptraining_loss(data, tmp_path):
    source, reduced = tmp_path / "source", tmp_path / "reduced"
    assert main(_args(data, source)) == 0
    half = replace(SHAPE, layers=SHAPE.layers // 2)
    args = [*_args(data, reduced, shape=half), "--teacher", str(source), "--kd-weight", "0.3"]
    assert main(args) == 0
    metrics = json.loads((reduced / "metrics.json").read_text())
    assert metrics["run"]["teacher"] == str(source)
    assert metrics["run"]["loss"]["kd_weight"] == 0.3
    assert {"loss", "ce", "kd"} <= set(metrics["validation"])
    validation = metrics["validation"]
    assert validation["loss"] == pytest.approx(0.7 * validation["ce"] + 0.3 * validation["kd"])
    steps = [json.loads(line) for line in (reduced / "steps.jsonl").read_text().splitlines()]
    assert all("kd" in s for s in steps)


def test_a_reduced_baseline_like_a_hub_source_keeps_its_architecture(data, tmp_path):
    """A hub source's reduced-size baseline is its own family with N/B layers (--like)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rrt.store import load_tokenizer

    vocab = len(load_tokenizer(data["tokenizer"]))
    config = AutoConfig.for_model(
        "gemma3_text", vocab_size=vocab, hidden_size=32, intermediate_size=64,
        num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        sliding_window=8, max_position_embeddings=64,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "source")
    args = [*_args(data, tmp_path / "reduced"), "--like", str(tmp_path / "source")]
    assert main([*args, "--layers", "3"]) == 0
    reduced = AutoConfig.from_pretrained(tmp_path / "reduced")
    assert reduced.model_type == "gemma3_text" and reduced.num_hidden_layers == 3
    assert reduced.layer_types == config.layer_types[:3]


def test_a_teacher_with_another_vocabulary_is_refused(data, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    config = LlamaForCausalLM.config_class(
        vocab_size=17, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(teacher)
    assert main([*_args(data, tmp_path / "out"), "--teacher", str(teacher)]) == 2
    assert "vocabulary of 17 tokens" in capsys.readouterr().err


def _torchrun(args: list[str]) -> subprocess.Popen:
    """Two data-parallel CPU processes (gloo) under torchrun."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "rrt", *args]  # fmt: skip
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def test_data_parallel_training_killed_and_resumed_ends_at_the_one_process_loss(data, tmp_path):
    # Same tokens per optimizer step: 2 processes x 1 micro-batch instead of 1 x 2 accumulated.
    recipe = replace(LONG, tokens_per_step=2 * RECIPE.micro_batch_size * RECIPE.seq_len)
    out = tmp_path / "ddp"
    proc = _torchrun(_args(data, out, recipe))
    deadline = time.monotonic() + 120
    while not list(work_dir(out).glob("checkpoint-*")):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within two minutes"
        time.sleep(0.01)
    launcher = psutil.Process(proc.pid)  # torchrun starts its workers in sessions of their own
    for process in [*launcher.children(recursive=True), launcher]:  # all at once, as on preemption
        process.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()

    rerun = _torchrun(_args(data, out, recipe))
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()[-3000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed_from_step"] >= recipe.save_every

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_args(data, tmp_path / "one", recipe)) == 0
    finally:
        torch.set_num_threads(threads)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert resumed["tokens"] == one["tokens"] and resumed["steps"] == one["steps"]
    assert resumed["final_step"]["loss"] == pytest.approx(one["final_step"]["loss"], abs=1e-5)
    assert resumed["validation"]["ce"] == pytest.approx(one["validation"]["ce"], abs=1e-5)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, recipe.plan().steps + 1))
