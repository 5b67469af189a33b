"""The GPU kit: every GPU check in one process, each under its own time budget (issue 21).

A GPU is lent rarely and briefly (15 minutes, one command at most ~8), so everything that must be
known on one runs here in one call, on random-weight models built from configs on the device (no
downloads), and writes ``summary.json`` and ``summary.md`` to ``--out`` after every check (a
command cut short keeps what it measured). ``--device cpu --tiny`` runs the same sequence with
tiny shapes on a CPU (tests/test_gpu_check.py). It reuses the project's code: models from configs
(:mod:`rrt.model`), :mod:`rrt.method.convert` and :mod:`rrt.method.relax`, the trainer
(:func:`rrt.training.trainer.train` with :func:`rrt.training.objective.uptrain_loss`), the serving
engine and the benchmark's systems, ceilings and roofline (:mod:`rrt.benchmark.bench`), the
serving cost model for FLOPs (:mod:`rrt.serving.cost`), and ``rrt uptrain`` under torchrun.

The checks, in order, with their budgets on a GPU (seconds, model builds included; 420 in all):

- ``ceilings`` (15): memory bandwidth and matmul rate in bf16 and fp32, as ``rrt benchmark``
  measures them.
- ``uptrain_1b`` (120): bf16 uptraining at TinyLlama-1.1B's shape: full-size, recursive (B = 2),
  relaxed (r = hidden / 4 = 512), relaxed + KD, relaxed + KD + early exit; tokens/s, model FLOPs
  utilisation, peak memory.
- ``engine_1b`` (80): serving at TinyLlama's shape in bf16, 64 requests at batch 64: the engine
  sequence-wise on the full-size model (system c), ``generate``, transformers' continuous
  batching, the engine on the recursive model sequence- and depth-wise; tokens/s, roofline.
- ``checkpointing_1b`` (50): relaxed + KD at the experiment's micro-batch (8 x 2048), activation
  checkpointing on and off; peak memory and tokens/s.
- ``convert_relax_1b`` (60): ``convert`` (average, B = 2) and ``relax`` (r = 64) at TinyLlama's
  shape; a relax stopped by its budget reports the SVDs done and an estimate of the whole.
- ``uptrain_190m`` (40): bf16 uptraining of a ~190M Llama: full-size, recursive, relaxed.
- ``data_parallel`` (55): ``torchrun --nproc-per-node 2 -m rrt uptrain`` of the ~190M Llama (two
  GPUs only): tokens/s and its scaling against one GPU (uptrain_190m's full-size model).

Budgets are checked at every step boundary: after each training step (a trainer callback), between
a check's parts (training variants, served systems) and before each SVD of ``relax``. A check's
first step always runs; one past its budget stops at the next boundary and is recorded as ``over
budget`` with what it measured. Each training variant gets an equal share of what is left of its
check's budget (``stopped_by_budget`` in its figures when the share ended it). A check that raises
is recorded with its error (one line and where) and the run goes on; so does a part (a variant, a
system) that raises, an out-of-memory error included. No check starts after ``--max-seconds``.

Targets (GPU only; on the CPU every target reads ``not applicable (cpu)``):

- bf16 uptraining at 1B scale: model FLOPs utilisation >= 35% (FLOPs from the serving cost model:
  3 x the student's forward, plus the teacher's forward under KD; activation recomputation not
  counted; against the GPU's data-sheet dense bf16 peak where its name is known, else the measured
  matmul rate);
- recursive and relaxed training: step time per token within 1.2x the full-size model's (same
  objective, same shape);
- the engine's sequence-wise continuous system (c) at batch 64: >= 30% of its decode roofline (its
  decode steps' bytes and FLOPs against the measured bandwidth and matmul rate; the larger share).

Usage:  python scripts/gpu_check.py --out DIR             (on the GPU: the default sizes)
        python scripts/gpu_check.py --out DIR --device cpu --tiny --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from rrt import config as schema
from rrt import store
from rrt.benchmark import bench
from rrt.memory import PeakMemory
from rrt.method import convert as convert_module
from rrt.method import relax as relax_module
from rrt.model.modeling import RecursiveForCausalLM
from rrt.model.sizes import build_on_meta, count_parameters
from rrt.serving.cost import CostModel
from rrt.serving.request import Request, Work
from rrt.serving.runner import Runner
from rrt.stories.corpus import CorpusConfig, write_corpus
from rrt.stories.tokenizer import TokenizerConfig, build_tokenizer
from rrt.training.objective import UptrainLoss, uptrain_loss
from rrt.training.trainer import STEPS_FILE, token_file, train, uptrain_recipe, work_dir

NOT_APPLICABLE = "not applicable (cpu)"
MFU_TARGET = 0.35
TIME_RATIO_TARGET = 1.2
DECODE_ROOFLINE_TARGET = 0.30
LOOPS = 2
# Dense bf16 peaks from NVIDIA's data sheets (TFLOP/s), by a substring of the device's name,
# first match wins. A GPU not listed is judged against its measured matmul rate.
DATASHEET_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
)


# --------------------------------------------------------------------------------------------
# Sizes: the GPU's and the CPU's tiny stand-ins, one table each
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """What a run builds and how long it trains and serves."""

    name: str
    big: dict[str, Any]  # LlamaConfig of the 1B-scale model
    small: dict[str, Any]  # LlamaConfig of the ~190M model
    seq_len: int
    micro_batch: int
    accumulation: int
    steps: int  # optimizer steps a training variant runs at most
    checkpointing_micro_batch: int
    relax_rank: int  # the rank relax is timed at
    requests: int  # the engine's workload: requests, each prompt and new tokens, batch
    prompt_tokens: int
    new_tokens: int
    max_batch: int
    corpus_tokens: int
    tokenizer_vocab: int

    def rank(self, shape: dict[str, Any]) -> int:
        """The relaxed models' LoRA rank in training: a quarter of the width (512 at 1B, as the
        TinyLlama experiment's r = 512)."""
        return shape["hidden_size"] // 4

    def describe(self, shape: dict[str, Any]) -> str:
        what = (
            f"{shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, intermediate "
            f"{shape['intermediate_size']}, {shape['num_attention_heads']} heads, "
            f"{shape['num_key_value_heads']} KV heads, vocab {shape['vocab_size']}"
        )
        label = "TinyLlama-1.1B's shape" if shape is self.big else "a ~190M Llama"
        if self.name == "tiny":
            return f"a tiny Llama ({what}) standing in for {label}"
        return f"{label} ({what})"


def _llama(layers, hidden, intermediate, heads, kv_heads, vocab, context) -> dict[str, Any]:
    return dict(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=intermediate,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
        max_position_embeddings=context, rms_norm_eps=1e-5, tie_word_embeddings=False,
    )  # fmt: skip


GPU_SIZES = Sizes(
    name="gpu",
    big=_llama(22, 2048, 5632, 32, 4, 32000, 2048),  # TinyLlama-1.1B
    small=_llama(12, 1024, 2560, 16, 4, 32000, 2048),  # 191M parameters
    seq_len=2048,
    micro_batch=4,
    accumulation=2,
    steps=8,
    checkpointing_micro_batch=8,  # the TinyLlama experiment's
    relax_rank=64,
    requests=64,
    prompt_tokens=128,
    new_tokens=128,
    max_batch=64,
    corpus_tokens=300_000,
    tokenizer_vocab=2000,
)
TINY_SIZES = Sizes(
    name="tiny",
    big=_llama(4, 64, 128, 4, 2, 512, 256),
    small=_llama(2, 32, 64, 2, 1, 512, 256),
    seq_len=64,
    micro_batch=2,
    accumulation=2,
    steps=3,
    checkpointing_micro_batch=4,
    relax_rank=8,
    requests=8,
    prompt_tokens=16,
    new_tokens=16,
    max_batch=8,
    corpus_tokens=20_000,
    tokenizer_vocab=300,
)


# --------------------------------------------------------------------------------------------
# Results: one definition, read by the Markdown writer and the test
# --------------------------------------------------------------------------------------------
@dataclass
class Verdict:
    """One project target: what it asks, the value measured, and pass/fail (GPU only)."""

    name: str
    target: str
    value: float | None
    verdict: str  # pass | fail | not measured | not applicable (cpu)


@dataclass
class CheckResult:
    name: str
    what: str
    status: str  # ok | error | over budget | skipped
    budget_s: float
    seconds: float
    figures: dict[str, Any]
    targets: list[Verdict]
    reason: str | None = None  # why skipped or stopped
    error: str | None = None  # one line
    where: str | None = None  # file:line in function (and our own innermost frame)
    traceback: str | None = None  # the last frames, for the JSON only


STATUSES = ("ok", "error", "over budget", "skipped")


class OverBudget(Exception):
    """A check's time is spent: raised at its next step boundary."""


class Skipped(Exception):
    """A check that cannot run here (one GPU, a CPU)."""


@dataclass
class Budget:
    seconds: float
    started: float = field(default_factory=time.monotonic)
    parent: Budget | None = None

    def left(self) -> float:
        own = self.seconds - (time.monotonic() - self.started)
        return min(own, self.parent.left()) if self.parent else own

    def spent(self) -> bool:
        return self.left() <= 0

    def check(self, where: str) -> None:
        """A step boundary: stop here if the time is spent."""
        if self.spent():
            raise OverBudget(f"stopped before {where}: the budget of {self.seconds:.0f} s is spent")

    def share(self, parts_left: int) -> Budget:
        """An equal share of what is left, for the next of ``parts_left`` parts."""
        return Budget(max(0.0, self.left()) / max(1, parts_left), parent=self)


class StopAtDeadline(TrainerCallback):
    """Ends training at the first step boundary past the budget."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.stopped = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.budget.spent() and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped = True


# --------------------------------------------------------------------------------------------
# The run's context: device, sizes, data, ceilings, earlier results
# --------------------------------------------------------------------------------------------
@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    work: Path
    results: dict[str, CheckResult] = field(default_factory=dict)
    _ceilings: dict[str, dict[str, Any]] = field(default_factory=dict)
    _data: dict[str, Path] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def ceilings(self, dtype: torch.dtype) -> dict[str, Any]:
        """The machine's bandwidth and matmul rate in ``dtype``, measured once by the
        benchmark's own :func:`rrt.benchmark.bench.peaks`."""
        key = str(dtype).removeprefix("torch.")
        if key not in self._ceilings:
            self._ceilings[key] = bench.peaks(self.device, dtype)
        return self._ceilings[key]

    def peak_flops(self) -> tuple[float, str]:
        """The bf16 peak model FLOPs utilisation is judged against, and where it comes from."""
        if self.cuda:
            name = torch.cuda.get_device_name(self.device)
            for part, tflops in DATASHEET_BF16_TFLOPS:
                if part in name:
                    return tflops * 1e12, f"data sheet, {name}: {tflops:g} TFLOP/s dense bf16"
        measured = self.ceilings(torch.bfloat16)["matmul_gflop_per_s"] * 1e9
        return measured, "measured bf16 matmul rate"

    def data(self) -> dict[str, Path]:
        """A story corpus, its tokenizer and the train split's token file (rrt.stories)."""
        if not self._data:
            root = self.work / "data"
            corpus, tokenizer = root / "corpus", root / "tokenizer"
            config = CorpusConfig(
                tokens=self.sizes.corpus_tokens, validation_documents=8, test_documents=8, seed=0
            )
            write_corpus(corpus, config)
            context = self.sizes.big["max_position_embeddings"]
            build_tokenizer(corpus, tokenizer, TokenizerConfig(self.sizes.tokenizer_vocab, context))
            tokens = token_file(corpus, tokenizer, "train", root / "cache")
            self._data.update(corpus=corpus, tokenizer=tokenizer, tokens=tokens)
        return self._data


# --------------------------------------------------------------------------------------------
# Models from configs, on the device; FLOPs from the serving cost model
# --------------------------------------------------------------------------------------------
def build(shape: dict[str, Any], device: torch.device, dtype: torch.dtype, **recursive: Any):
    """A random-weight model of ``shape`` on ``device``: the source family's, or recursive with
    ``loops`` (and ``rank``) through :func:`rrt.model.sizes.build_on_meta`'s resolved config."""
    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    if recursive:
        resolved = build_on_meta(config, **recursive).config
        with torch.device(device):
            return RecursiveForCausalLM._from_config(resolved, dtype=dtype)
    with torch.device(device):
        return LlamaForCausalLM._from_config(config, dtype=dtype)


def forward_flops_per_token(model: torch.nn.Module, seq_len: int, exits: int = 1) -> float:
    """One forward's FLOPs per token over sequences of ``seq_len``: the serving cost model's
    count of a whole sequence as one step (every linear with every loop's LoRA, causal
    attention, the head at ``exits`` exits)."""
    count = CostModel.of(Runner(model))
    request = Request(0, [0] * seq_len, 1)
    work = Work(request, 0, 0, ids=[0] * seq_len)
    step = count.step([work], [], sequence=True, asks=seq_len * exits, embeds=seq_len)
    return step.flops / seq_len


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def part(figures: dict[str, Any], name: str, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One part of a check (a training variant, a served system): its figures go to ``row``; an
    error is recorded there and in ``figures["errors"]``, and the check goes on."""
    try:
        yield row
    except (OverBudget, Skipped):
        raise
    except Exception as err:
        row.update(error=one_line(err), where=where(err))
        lines = "".join(traceback.format_exception(err)[-8:])
        figures.setdefault("errors", []).append({"part": name, **row, "traceback": lines})
        print(f"[gpu-check]   {name} failed: {row['error']} ({row['where']})", file=sys.stderr)
    finally:
        free_memory()


# --------------------------------------------------------------------------------------------
# Training: rrt.training.trainer.train on a model built here, stopped at the budget
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    loops: int | None = None  # None: the full-size model
    relaxed: bool = False
    kd: bool = False
    early_exit: bool = False


FULL = Variant("full-size")
RECURSIVE = Variant("recursive", loops=LOOPS)
RELAXED = Variant("relaxed", loops=LOOPS, relaxed=True)
RELAXED_KD = Variant("relaxed + KD", loops=LOOPS, relaxed=True, kd=True)
RELAXED_KD_EXIT = Variant(
    "relaxed + KD + early exit", loops=LOOPS, relaxed=True, kd=True, early_exit=True
)


def train_variant(
    ctx: Context,
    budget: Budget,
    shape: dict[str, Any],
    variant: Variant,
    micro_batch: int,
    checkpointing: bool = False,
    teacher: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Uptrain one model for up to ``sizes.steps`` steps (or its budget) and return its figures:
    the median step's tokens/s (the first step, the warm-up, left out), FLOPs, utilisation,
    peak memory and loss."""
    s = ctx.sizes
    data = ctx.data()
    rank = s.rank(shape) if variant.relaxed else None
    recursive = {"loops": variant.loops, "rank": rank} if variant.loops else {}
    model = build(shape, ctx.device, torch.float32, **recursive)  # fp32 masters, bf16 autocast
    model.train()
    tokens_per_step = s.seq_len * micro_batch * s.accumulation
    recipe = dataclasses.replace(
        uptrain_recipe(),
        tokens=s.steps * tokens_per_step,
        seq_len=s.seq_len,
        tokens_per_step=tokens_per_step,
        micro_batch_size=micro_batch,
        warmup_steps=1,
        save_every=s.steps + 1,
        eval_tokens=0,
        precision="bf16",
        gradient_checkpointing=checkpointing,
    )
    loss = UptrainLoss(**schema.defaults("uptrain.loss"))  # the uptraining objective's defaults
    loss = dataclasses.replace(
        loss, kd_weight=loss.kd_weight if variant.kd else 0.0, early_exit=variant.early_exit
    )
    exits = variant.loops if variant.early_exit else 1
    flops = 3 * forward_flops_per_token(model, s.seq_len, exits)
    if variant.kd:
        flops += forward_flops_per_token(teacher, s.seq_len)
    stop = StopAtDeadline(budget)
    out = ctx.work / "train" / variant.name.replace(" ", "")
    tokenizer = store.load_tokenizer(data["tokenizer"])
    row: dict[str, Any] = {
        "parameters": count_parameters(model)["total"],
        "lora_rank": rank,
        "kd_weight": loss.kd_weight,
        "early_exit": variant.early_exit,
        "gradient_checkpointing": checkpointing,
        "tokens_per_step": tokens_per_step,
        "model_flops_per_token": flops,
    }
    try:
        metrics = train(
            model,
            tokenizer,
            train_tokens=data["tokens"],
            out=out,
            config=recipe,
            loss_fn=uptrain_loss(loss, teacher if variant.kd else None, "bf16"),
            callbacks=[stop],
            stage="gpu-check",
        )
        steps = [json.loads(line) for line in (out / STEPS_FILE).read_text().splitlines()]
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work_dir(out), ignore_errors=True)
    row.update(step_figures(steps, tokens_per_step, flops, ctx.peak_flops()))
    row.update(stopped_by_budget=stop.stopped, peak_memory_mib=metrics.get("peak_memory_mb"))
    return row


def step_figures(
    steps: list[dict[str, Any]],
    tokens_per_step: int,
    flops_per_token: float,
    peak: tuple[float, str],
) -> dict[str, Any]:
    """The median step (the first left out as the warm-up, where there is more than one)."""
    timed = steps[1:] or steps
    tokens_per_s = statistics.median(s["tokens_per_second"] for s in timed)
    return {
        "steps": len(steps),
        "tokens_per_s": tokens_per_s,
        "step_s": tokens_per_step / tokens_per_s,
        "mfu": tokens_per_s * flops_per_token / peak[0],
        "mfu_peak": peak[1],
        "loss_first": steps[0]["loss"],
        "loss_last": steps[-1]["loss"],
    }


def run_training(
    ctx: Context,
    budget: Budget,
    figures: dict[str, Any],
    shape: dict[str, Any],
    variants: list[Variant],
    micro_batch: int,
    checkpointing: list[bool] | None = None,
) -> None:
    """Each variant in turn (or each checkpointing setting), an equal share of the budget each."""
    runs = [(v, c) for v in variants for c in (checkpointing or [False])]
    rows = figures.setdefault("variants", {})
    teacher = None
    for i, (variant, checkpoint) in enumerate(runs):
        if i:
            budget.check(variant.name)
        name = f"{variant.name}{', checkpointing' if checkpoint else ''}"
        print(f"[gpu-check]   training: {name}", file=sys.stderr, flush=True)
        if variant.kd and teacher is None:
            teacher = build(shape, ctx.device, torch.bfloat16).eval().requires_grad_(False)
        with part(figures, name, rows.setdefault(name, {})) as row:
            share = budget.share(len(runs) - i)
            row.update(train_variant(ctx, share, shape, variant, micro_batch, checkpoint, teacher))
    base = rows.get(FULL.name, {})
    for row in rows.values():
        if base.get("tokens_per_s") and row.get("tokens_per_s"):
            ratio = base["tokens_per_s"] / row["tokens_per_s"]
            row["time_per_token_vs_full_size"] = ratio
            # the same over the FLOPs each token needs: what the implementation adds
            flops = row["model_flops_per_token"] / base["model_flops_per_token"]
            row["time_per_flop_vs_full_size"] = ratio / flops


def training_targets(ctx: Context, figures: dict[str, Any], mfu: bool = True) -> list[Verdict]:
    rows = figures.get("variants", {})
    verdicts = []
    if mfu:
        for name, row in rows.items():
            verdicts.append(
                judge(ctx, f"{name}: model FLOPs utilisation", f">= {MFU_TARGET:.0%}",
                      row.get("mfu"), lambda v: v >= MFU_TARGET)
            )  # fmt: skip
    for variant in (RECURSIVE, RELAXED):
        row = rows.get(variant.name, {})
        verdicts.append(
            judge(ctx, f"{variant.name}: step time per token / full-size's",
                  f"<= {TIME_RATIO_TARGET}", row.get("time_per_token_vs_full_size"),
                  lambda v: v <= TIME_RATIO_TARGET)
        )  # fmt: skip
    return verdicts


def judge(ctx: Context, name: str, target: str, value: float | None, ok) -> Verdict:
    if not ctx.cuda:
        verdict = NOT_APPLICABLE
    elif value is None:
        verdict = "not measured"
    else:
        verdict = "pass" if ok(value) else "fail"
    return Verdict(name, target, value, verdict)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------
def run_ceilings(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    for i, dtype in enumerate((torch.bfloat16, torch.float32)):
        if i:
            budget.check(f"measuring {dtype}")
        figures[str(dtype).removeprefix("torch.")] = ctx.ceilings(dtype)
    peak, source = ctx.peak_flops()
    figures.update(mfu_peak_tflops=peak / 1e12, mfu_peak=source)


def run_uptrain_1b(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    variants = [FULL, RECURSIVE, RELAXED, RELAXED_KD, RELAXED_KD_EXIT]
    run_training(ctx, budget, figures, ctx.sizes.big, variants, ctx.sizes.micro_batch)


def run_uptrain_190m(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    variants = [FULL, RECURSIVE, RELAXED]
    run_training(ctx, budget, figures, ctx.sizes.small, variants, 2 * ctx.sizes.micro_batch)


def run_checkpointing(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    s = ctx.sizes
    micro = s.checkpointing_micro_batch
    run_training(ctx, budget, figures, s.big, [RELAXED_KD], micro, checkpointing=[True, False])
    rows = figures["variants"]
    on, off = (rows.get(f"{RELAXED_KD.name}{k}", {}) for k in (", checkpointing", ""))
    if on.get("peak_memory_mib") and off.get("peak_memory_mib"):
        figures["memory_saved"] = 1 - on["peak_memory_mib"] / off["peak_memory_mib"]
    if on.get("tokens_per_s") and off.get("tokens_per_s"):
        figures["tokens_per_s_with_vs_without"] = on["tokens_per_s"] / off["tokens_per_s"]


def run_convert_relax(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    s = ctx.sizes
    started = time.perf_counter()
    source = build(s.big, ctx.device, torch.float32)
    synchronize(ctx.device)
    figures.update(build_s=time.perf_counter() - started, dtype="float32", loops=LOOPS)
    started = time.perf_counter()
    recursive = convert_module.convert(source, loops=LOOPS, init="average")
    synchronize(ctx.device)
    figures["convert_s"] = time.perf_counter() - started
    figures.update(relax_rank=s.relax_rank, svds_done=0, svd_s=0.0)
    figures["svds_total"] = s.big["num_hidden_layers"] * len(recursive.family.linears)
    started = time.perf_counter()
    with timed_svds(ctx.device, budget, figures):
        relax_module.relax(recursive, source, rank=s.relax_rank)
        synchronize(ctx.device)
    figures["relax_s"] = time.perf_counter() - started
    del figures["relax_estimate_s"]  # measured whole


@contextlib.contextmanager
def timed_svds(device: torch.device, budget: Budget, figures: dict[str, Any]) -> Iterator[None]:
    """Time every SVD of ``relax`` and stop before the next one once the budget is spent; the
    figures keep the SVDs done and an estimate of the whole relax from them (relax has no hook
    of its own, so its ``svd_init`` is wrapped while this runs)."""
    original = relax_module.svd_init
    started = time.perf_counter()

    def timed(residual: torch.Tensor, rank: int, generator: torch.Generator):
        if figures["svds_done"]:
            budget.check(f"SVD {figures['svds_done'] + 1} of {figures['svds_total']}")
        begin = time.perf_counter()
        out = original(residual, rank, generator)
        synchronize(device)
        figures["svds_done"] += 1
        figures["svd_s"] += time.perf_counter() - begin
        share = figures["svds_total"] / figures["svds_done"]
        figures["relax_estimate_s"] = (time.perf_counter() - started) * share
        return out

    relax_module.svd_init = timed
    try:
        yield
    finally:
        relax_module.svd_init = original


def run_engine(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    s = ctx.sizes
    cfg = schema.from_values(
        bench.BenchConfig,
        {
            "requests": s.requests,
            "min_prompt_tokens": s.prompt_tokens,
            "max_prompt_tokens": s.prompt_tokens,
            "max_new_tokens": s.new_tokens,
            "max_batch": s.max_batch,
        },
    )
    dtype = torch.bfloat16 if ctx.cuda else torch.float32  # the benchmark's dtype "auto"
    rng = np.random.default_rng(0)
    vocab, length = s.big["vocab_size"], s.prompt_tokens + s.new_tokens
    docs = [rng.integers(1, vocab, length).tolist() for _ in range(s.requests)]
    work = bench.draw_workload(docs, cfg, s.big["max_position_embeddings"])
    ceilings = ctx.ceilings(dtype)
    figures.update(
        dtype=str(dtype).removeprefix("torch."),
        workload=work.describe(cfg),
        ceilings=ceilings,
        cuda_graphs="none in the engine; hf_continuous as transformers decides on this device",
    )
    full = build(s.big, ctx.device, dtype).eval()
    models: dict[str, Any] = {"full": full}

    def recursive() -> Any:
        if "recursive" not in models:
            models["recursive"] = build(s.big, ctx.device, dtype, loops=LOOPS).eval()
        return models["recursive"]

    plan: list[tuple[str, Callable[[], bench.Served]]] = [
        ("sequence_continuous", lambda: bench.serve_engine(full, work, cfg, mode="sequence")),
        ("vanilla", lambda: bench.serve_vanilla(full, work, cfg)),
        ("hf_continuous", lambda: bench.serve_hf_continuous(full, work, cfg)),
        (
            "recursive_sequence",
            lambda: bench.serve_engine(recursive(), work, cfg, mode="sequence"),
        ),
        ("depthwise", lambda: bench.serve_engine(recursive(), work, cfg)),
    ]
    warm = bench.Workload(work.prompts[:2], [2, 2], [0.0, 0.0])
    memory = PeakMemory(ctx.device)
    rows = figures.setdefault("systems", {})
    outputs: dict[str, list[list[int]]] = {}
    for i, (name, serve) in enumerate(plan):
        if i:
            budget.check(name)
        print(f"[gpu-check]   serving: {name}", file=sys.stderr, flush=True)
        with part(figures, name, rows.setdefault(name, {})) as row:
            if name == "vanilla":
                bench.serve_vanilla(full, warm, cfg)  # generate's first call off the clock
            memory.reset()
            served = serve()
            served.peak_mem_mb = memory.mb()
            outputs[name] = served.tokens
            row.update(bench.summarize(served, work, {"agreement": None}, ceilings))
            shares = [row.get("decode_bandwidth_fraction"), row.get("decode_compute_fraction")]
            if None not in shares:
                row["decode_roofline_fraction"] = max(shares)
    for name, tokens in outputs.items():
        if name != "vanilla" and name in bench.FULL_SIZE_SYSTEMS and "vanilla" in outputs:
            rows[name]["sequence_agreement_vs_vanilla"] = bench.sequence_agreement(
                tokens, outputs["vanilla"]
            )


def engine_targets(ctx: Context, figures: dict[str, Any]) -> list[Verdict]:
    row = figures.get("systems", {}).get("sequence_continuous", {})
    batch = figures.get("workload", {}).get("max_batch")
    return [
        judge(ctx, f"sequence_continuous (c) at batch {batch}: share of its decode roofline",
              f">= {DECODE_ROOFLINE_TARGET:.0%}", row.get("decode_roofline_fraction"),
              lambda v: v >= DECODE_ROOFLINE_TARGET)
    ]  # fmt: skip


def run_data_parallel(ctx: Context, budget: Budget, figures: dict[str, Any]) -> None:
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    if gpus < 2:
        raise Skipped(f"needs 2 GPUs; this machine has {gpus} ({ctx.device.type})")
    figures["processes"] = 2
    s = ctx.sizes
    data = ctx.data()
    model_dir, out = ctx.work / "dp" / "model", ctx.work / "dp" / "out"
    model = build(s.small, torch.device("cpu"), torch.float32)
    model.save_pretrained(model_dir)
    store.load_tokenizer(data["tokenizer"]).save_pretrained(model_dir)
    del model
    micro = 2 * s.micro_batch  # as uptrain_190m, with one process per accumulated micro-batch
    tokens_per_step = s.seq_len * micro * 2
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "rrt", "uptrain", "--model", str(model_dir), "--corpus", str(data["corpus"]),
        "--out", str(out), "--kd-weight", "0", "--precision", "bf16",
        "--seq-len", str(s.seq_len), "--micro-batch-size", str(micro),
        "--tokens-per-step", str(tokens_per_step), "--tokens", str(s.steps * tokens_per_step),
        "--warmup-steps", "1", "--save-every", str(s.steps + 1), "--eval-tokens", "0",
    ]  # fmt: skip
    figures["command"] = " ".join(command[1:])
    log = ctx.work / "dp" / "log.txt"
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
        while proc.poll() is None and not budget.spent():
            time.sleep(0.5)
        stopped = proc.poll() is None
        if stopped:
            kill_tree(proc)
    steps_file = out / STEPS_FILE if out.is_dir() else work_dir(out) / STEPS_FILE
    steps = (
        [json.loads(x) for x in steps_file.read_text().splitlines()] if steps_file.is_file() else []
    )
    figures["log_tail"] = log.read_text()[-2000:]
    if steps:
        timed = steps[1:] or steps
        figures.update(steps=len(steps), tokens_per_step=tokens_per_step)
        figures["tokens_per_s"] = statistics.median(x["tokens_per_second"] for x in timed)
        one = ctx.results.get("uptrain_190m")
        single = one.figures.get("variants", {}).get(FULL.name, {}) if one else {}
        if single.get("tokens_per_s"):
            figures["one_gpu_tokens_per_s"] = single["tokens_per_s"]
            figures["scaling_efficiency"] = figures["tokens_per_s"] / (2 * single["tokens_per_s"])
    if (out / "metrics.json").is_file():
        figures["peak_memory_mib"] = json.loads((out / "metrics.json").read_text()).get(
            "peak_memory_mb"
        )
    if stopped:
        raise OverBudget(f"torchrun stopped after {len(steps)} steps: the budget is spent")
    if proc.returncode:
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {figures['log_tail'][-300:]}")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process under it. torchrun starts its workers in sessions of
    their own, and they die with it only once rrt's trainer has set PR_SET_PDEATHSIG, so a
    worker still importing would outlive a kill of the launcher alone."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def no_targets(ctx: Context, figures: dict[str, Any]) -> list[Verdict]:
    return []


@dataclass(frozen=True)
class Check:
    name: str
    budget_s: float
    run: Callable[[Context, Budget, dict[str, Any]], None]
    judge: Callable[[Context, dict[str, Any]], list[Verdict]]
    what: Callable[[Sizes], str]


CHECKS: tuple[Check, ...] = (
    Check("ceilings", 15, run_ceilings, no_targets,
          lambda s: "memory bandwidth (a large copy) and matmul rate in bf16 and fp32, as "
                    "rrt benchmark measures them; the bf16 peak utilisation is judged against"),
    Check("uptrain_1b", 120, run_uptrain_1b, training_targets,
          lambda s: f"bf16 uptraining of {s.describe(s.big)}, random weights: full-size, "
                    f"recursive B={LOOPS}, relaxed r={s.rank(s.big)}, relaxed + KD, relaxed + KD "
                    f"+ early exit; {s.micro_batch} x {s.seq_len} tokens a micro-batch, "
                    f"{s.accumulation} accumulated, up to {s.steps} steps each"),
    Check("engine_1b", 80, run_engine, engine_targets,
          lambda s: f"serving {s.requests} requests ({s.prompt_tokens}-token prompts, "
                    f"{s.new_tokens} new tokens, batch {s.max_batch}) with {s.describe(s.big)}: "
                    "the engine sequence-wise (c), generate (static batches), transformers' "
                    "continuous batching, the engine on the recursive model sequence- and "
                    "depth-wise; bf16 on a GPU"),
    Check("checkpointing_1b", 50, run_checkpointing, no_targets,
          lambda s: f"bf16 uptraining of the relaxed model (r={s.rank(s.big)}, KD) of "
                    f"{s.describe(s.big)}, {s.checkpointing_micro_batch} x {s.seq_len} tokens "
                    "a micro-batch, activation checkpointing on and off: peak memory, tokens/s"),
    Check("convert_relax_1b", 60, run_convert_relax, no_targets,
          lambda s: f"rrt.convert (average, B={LOOPS}) and rrt.relax (r={s.relax_rank}, float64 "
                    f"SVDs) of {s.describe(s.big)} in fp32 on the device"),
    Check("uptrain_190m", 40, run_uptrain_190m, lambda c, f: training_targets(c, f, mfu=False),
          lambda s: f"bf16 uptraining of {s.describe(s.small)}: full-size, recursive B={LOOPS}, "
                    f"relaxed r={s.rank(s.small)}; {2 * s.micro_batch} x {s.seq_len} tokens a "
                    f"micro-batch, {s.accumulation} accumulated"),
    Check("data_parallel", 55, run_data_parallel, no_targets,
          lambda s: f"torchrun --nproc-per-node 2 -m rrt uptrain of {s.describe(s.small)}, "
                    f"bf16, {2 * s.micro_batch} x {s.seq_len} tokens a micro-batch per GPU"),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------
def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def _short(path: str) -> str:
    for mark in ("site-packages/", "/src/", "/.gpu-kit/"):
        if mark in path:
            return path.split(mark, 1)[1]
    for mark in ("/scripts/", "/tests/"):
        if mark in path:
            return mark.strip("/") + "/" + path.split(mark, 1)[1]
    return path


def where(err: BaseException) -> str:
    """``file:line in function`` of the innermost frame, and of our own innermost frame (rrt or
    this script) where that is another."""
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return "?"
    inner = frames[-1]
    text = f"{_short(inner.filename)}:{inner.lineno} in {inner.name}"
    ours = [
        f
        for f in frames
        if f.filename == __file__ or re.search(r"(site-packages|src)/rrt/", f.filename)
    ]
    if ours and ours[-1] is not inner:
        text += f" (via {_short(ours[-1].filename)}:{ours[-1].lineno} in {ours[-1].name})"
    return text


def run_check(check: Check, ctx: Context, budget_s: float) -> CheckResult:
    figures: dict[str, Any] = {}
    result = CheckResult(check.name, check.what(ctx.sizes), "ok", budget_s, 0.0, figures, [])
    started = time.monotonic()
    print(f"[gpu-check] {check.name}: budget {budget_s:.0f} s", file=sys.stderr, flush=True)
    try:
        check.run(ctx, Budget(budget_s), figures)
    except OverBudget as stop:
        result.status, result.reason = "over budget", str(stop)
    except Skipped as skip:
        result.status, result.reason = "skipped", str(skip)
    except Exception as err:
        result.status, result.error, result.where = "error", one_line(err), where(err)
        result.traceback = "".join(traceback.format_exception(err)[-12:])
    finally:
        free_memory()
    if result.status == "ok" and figures.get("errors"):
        first = figures["errors"][0]
        result.status = "error"
        result.error, result.where = f"{first['part']}: {first['error']}", first["where"]
    result.seconds = time.monotonic() - started
    try:
        result.targets = check.judge(ctx, figures)
    except Exception as err:  # a judge must not lose the figures
        result.targets = [Verdict("judging", "-", None, f"error: {one_line(err)}")]
    print(
        f"[gpu-check] {check.name}: {result.status} in {result.seconds:.1f} s"
        + (f" ({result.error or result.reason})" if result.error or result.reason else ""),
        file=sys.stderr,
        flush=True,
    )
    return result


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "versions": store.versions(),
        "hardware": store.hardware(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpus=torch.cuda.device_count(),
            gpu_memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            bf16=torch.cuda.is_bf16_supported(),
        )
    return info


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    tmp.replace(out / "summary.json")
    (out / "summary.md").write_text(markdown(summary))


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "/").replace("\n", " ")


def _value(verdict: dict[str, Any]) -> str:
    value = verdict["value"]
    if value is None:
        return ""
    return f"{value:.1%} " if "%" in verdict["target"] else f"{value:.2f} "


def headline(result: dict[str, Any]) -> str:
    """The figures a reader wants first, one cell."""
    f = result["figures"]
    cells = []
    for name, row in {**f.get("variants", {}), **f.get("systems", {})}.items():
        if "error" in row:
            cells.append(f"{name}: error")
        elif "tokens_per_s" in row:
            extra = f", MFU {row['mfu']:.1%}" if "mfu" in row else ""
            if "decode_roofline_fraction" in row:
                extra = f", {row['decode_roofline_fraction']:.1%} of decode roofline"
            if row.get("peak_memory_mib"):
                extra += f", {row['peak_memory_mib']:,.0f} MiB"
            cells.append(f"{name}: {row['tokens_per_s']:,.0f} tok/s{extra}")
    for key in ("convert_s", "relax_s", "relax_estimate_s", "svds_done", "tokens_per_s",
                "scaling_efficiency", "memory_saved", "mfu_peak_tflops"):  # fmt: skip
        if key in f:
            cells.append(f"{key} {_fmt(f[key])}")
    for dtype in ("bfloat16", "float32"):
        if dtype in f:
            cells.append(
                f"{dtype}: {f[dtype]['memory_gb_per_s']:,.0f} GB/s, "
                f"{f[dtype]['matmul_gflop_per_s'] / 1e3:,.1f} TFLOP/s"
            )
    return "; ".join(cells) or "-"


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [
        f"# GPU kit: {summary['sizes']} sizes on {env['device']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}; started "
        f"{summary['started']}; the checks took {summary['wall_s']:.0f} s (budgets "
        f"{summary['budget_s']:.0f} s).",
        "",
    ]
    if env["device"] == "cpu":
        lines += [
            "On the CPU the project's targets are not judged: every target reads "
            f"'{NOT_APPLICABLE}'.",
            "",
        ]
    lines += [
        "| check | status | s / budget | figures | targets |",
        "|---|---|---|---|---|",
    ]
    for r in summary["checks"]:
        status = r["status"]
        if r["error"]:
            status += f": {_fmt(r['error'])} (at {_fmt(r['where'])})"
        elif r["reason"]:
            status += f": {_fmt(r['reason'])}"
        targets = "; ".join(
            f"{t['name']} {t['target']}: {_value(t)}{t['verdict']}" for t in r["targets"]
        )
        lines.append(
            f"| {r['name']} | {status} | {r['seconds']:.0f} / {r['budget_s']:.0f} | "
            f"{headline(r)} | {targets or '-'} |"
        )
    for r in summary["checks"]:
        lines += ["", f"## {r['name']}", "", r["what"], ""]
        lines += details(r["figures"])
    return "\n".join(lines) + "\n"


def details(figures: dict[str, Any]) -> list[str]:
    """Scalars as a list; a mapping of rows (variants, systems) as a table of its scalars."""
    lines = []
    for key, value in figures.items():
        if key == "errors":
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            columns = [
                c
                for c in dict.fromkeys(k for row in value.values() for k in row)
                if all(not isinstance(row.get(c), dict | list) for row in value.values())
            ]
            lines += ["", f"| {key} | " + " | ".join(columns) + " |"]
            lines.append("|---" * (len(columns) + 1) + "|")
            for name, row in value.items():
                cells = " | ".join(_fmt(row.get(c, "")) for c in columns)
                lines.append(f"| {name} | {cells} |")
            lines.append("")
        elif isinstance(value, dict):
            inner = ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
            lines.append(f"- {key}: {inner}")
        elif key == "log_tail":
            continue
        else:
            lines.append(f"- {key}: {_fmt(value)}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, type=Path, help="folder for summary.json and .md")
    schema.add_setting(p, "device")
    schema.add_setting(p, "threads")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU run in minutes)")
    p.add_argument(
        "--only", type=lambda t: t.split(","), help="comma-separated checks to run (default: all)"
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        metavar="CHECK=SECONDS",
        help="another budget for one check (repeatable)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=450.0,
        help="no check starts after this many seconds (default: %(default)s)",
    )
    p.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    return p.parse_args(argv)


def budgets(args: argparse.Namespace) -> dict[str, float]:
    names = [c.name for c in CHECKS]
    chosen = {c.name: float(c.budget_s) for c in CHECKS if not args.only or c.name in args.only}
    unknown = [n for n in args.only or [] if n not in names]
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds:
            unknown.append(item)
        elif name in chosen:
            chosen[name] = float(seconds)
    if unknown:
        raise SystemExit(f"unknown checks or budgets {unknown}; the checks: {', '.join(names)}")
    return chosen


def scratch(args: argparse.Namespace) -> Path:
    """The scratch folder: ``--work``, else a temporary one in /dev/shm where it has room (model
    saves at the end of each training are then memory copies), else in the default temp dir."""
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=args.work))
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    return Path(tempfile.mkdtemp(prefix="gpu-check-", dir=shm if room > 24 * 2**30 else None))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = budgets(args)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer picks the GPU whenever it sees one
    schema.set_threads(args.threads)
    device = torch.device(store.resolve_device(args.device))
    sizes = TINY_SIZES if args.tiny else GPU_SIZES
    work = scratch(args)
    ctx = Context(device, sizes, work)
    started, clock = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    summary: dict[str, Any] = {
        "started": started,
        "sizes": sizes.name,
        "environment": environment(device),
        "budget_s": sum(chosen.values()),
        "max_seconds": args.max_seconds,
        "targets_judged": ctx.cuda,
        "wall_s": 0.0,
        "checks": [],
    }
    try:
        for check in CHECKS:
            if check.name not in chosen:
                continue
            left = args.max_seconds - (time.monotonic() - clock)
            if left <= 0:
                spent = "the run's --max-seconds are spent"
                what, budget = check.what(sizes), chosen[check.name]
                result = CheckResult(check.name, what, "skipped", budget, 0, {}, [], reason=spent)
            else:
                result = run_check(check, ctx, min(chosen[check.name], left))
            ctx.results[check.name] = result
            summary["checks"].append(dataclasses.asdict(result))
            summary["wall_s"] = time.monotonic() - clock
            write_summary(args.out, summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"[gpu-check] wrote {args.out / 'summary.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
