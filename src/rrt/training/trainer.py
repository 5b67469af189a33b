"""One causal-LM trainer: pretraining the embedded source model now, uptraining later.

Why transformers' ``Trainer``: it brings AdamW, the cosine schedule with warmup, gradient
accumulation and clipping, mixed precision on GPUs, and checkpoints that hold the optimizer,
scheduler and RNG states. What this module adds:

- a **loss hook** (:data:`LossFn`): any ``(model, batch) -> (loss, {name: component})``, so
  uptraining can add forward-KL distillation and early-exit losses (paper sec. 2.3, app. J)
  without touching the loop; every component lands in the per-step log;
- a **token budget**: steps = budget / tokens per step, with gradient accumulation reaching the
  tokens per step from a micro-batch that fits in memory;
- **packed data** from a token file written once per corpus and tokenizer, in an order fixed by
  the seed, so a resumed run sees exactly the batches an unbroken run would;
- **atomic checkpoints**: the Trainer writes ``checkpoint-N`` in place and picks the highest
  ``checkpoint-N`` on resume, so a kill during a save would leave a half checkpoint that resume
  takes; here each checkpoint is written into a staging folder and renamed into place, so every
  ``checkpoint-N`` is complete, and a rerun resumes from the last one by itself;
- per-step metrics through ``Trainer.log``, so every ``TrainerCallback.on_log`` sees them: a
  JSONL file, the progress bar and, when tracking is on, an MLflow run (:mod:`rrt.tracking`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from transformers.utils import logging as hf_logging

from rrt import store
from rrt.config import defaults, section, validate
from rrt.contracts import TrainingMetrics
from rrt.errors import UserError
from rrt.io import atomic_path, die_with_launcher, sha256_of, write_json
from rrt.memory import PeakMemory
from rrt.tracking import RUN_ID_FILE, JobRun, Tracking
from rrt.training.data import read_meta, read_texts

LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, Tensor]]]
"""A training objective: the loss to minimise and its named components (detached is fine)."""

STEPS_FILE = "steps.jsonl"
STAGING = "staging"  # never matches Trainer's checkpoint pattern, so resume never picks it


def causal_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy, the model's own (labels are shifted inside the model)."""
    loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    return loss, {"ce": loss.detach()}


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@section("train")
class TrainConfig:
    """Everything that decides a training run (``train`` in the config schema)."""

    tokens: int
    seq_len: int
    tokens_per_step: int
    micro_batch_size: int
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    grad_clip: float
    seed: int
    save_every: int
    keep_checkpoints: int
    eval_tokens: int
    precision: str
    gradient_checkpointing: bool

    def plan(self, world_size: int = 1) -> TrainPlan:
        """Steps and per-process accumulation from the budget, or a UserError naming the bad value.

        With ``world_size`` data-parallel processes each micro-batch step covers ``world_size``
        micro-batches, so accumulation shrinks and the tokens per optimizer step stay the same.
        """
        resolve_precision(self.precision)
        micro_tokens = self.micro_batch_size * self.seq_len * world_size
        if self.tokens_per_step % micro_tokens:
            raise UserError(
                f"tokens_per_step {self.tokens_per_step} must be a multiple of micro_batch_size "
                f"x seq_len x processes = {self.micro_batch_size} x {self.seq_len} x "
                f"{world_size} = {micro_tokens}"
            )
        accumulation = self.tokens_per_step // micro_tokens
        steps = math.ceil(self.tokens / self.tokens_per_step)
        sequences = steps * accumulation * self.micro_batch_size * world_size
        return TrainPlan(steps, accumulation, sequences)


def uptrain_recipe() -> TrainConfig:
    """The train recipe with ``uptrain``'s values (budget and learning rate by default)."""
    overrides = {k: v for k, v in defaults("uptrain").items() if k != "loss"}
    return TrainConfig(**{**defaults("train"), **overrides})


def resolve_precision(precision: str) -> str:
    """``bf16`` or ``fp32``: ``auto`` is bf16 on a GPU that has it, fp32 on the CPU (exact and
    resumable bit for bit). bf16 is mixed precision: fp32 weights, bf16 autocast."""
    validate(precision, "train.precision")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise UserError("precision bf16: this GPU has no bf16 support; use --precision fp32")
    return precision


@dataclass(frozen=True)
class TrainPlan:
    steps: int
    accumulation: int  # micro-batches per optimizer step in each process
    sequences: int  # sequences over the whole run, all processes together


# --------------------------------------------------------------------------------------------
# Data: a token file per corpus split and tokenizer, cut into fixed-length blocks
# --------------------------------------------------------------------------------------------
def cache_dir(out: str | Path) -> Path:
    """Where a training to ``out`` keeps what it derives from its inputs (token files): beside
    the output, shared by the outputs of one folder, never inside an input."""
    return Path(out).parent / ".rrt-cache"


def token_files(corpus: str | Path, tokenizer_dir: str | Path, out: str | Path) -> dict[str, Path]:
    """The corpus's train and validation splits as token files (:func:`token_file`, cached for
    ``out``), as :func:`train`'s keyword arguments ``train_tokens`` and ``validation_tokens``."""
    splits = ("train", "validation")
    return {f"{s}_tokens": token_file(corpus, tokenizer_dir, s, cache_dir(out)) for s in splits}


def token_file(corpus: str | Path, tokenizer_dir: str | Path, split: str, cache: Path) -> Path:
    """The split's tokens as one array (.npy, memory-mapped when read), written once into
    ``cache``: uint16 where the vocabulary fits, else uint32 (Gemma's 256k).

    Every document is preceded by the tokenizer's BOS (else EOS) token, the separator that
    lm-eval also puts before a document. The file name carries a hash of the split file's
    content as it is now (not as meta.json recorded it) and of the tokenizer, so a corpus edited
    in place or another tokenizer never reuses a stale file. Tokens are streamed to disk as they
    come, so a split larger than memory (the paper's billions of tokens) tokenizes in constant
    memory.
    """
    from transformers import AutoTokenizer

    meta = read_meta(corpus)
    content = sha256_of(Path(corpus) / f"{split}.jsonl")
    key = f"{content}:{store.tokenizer_fingerprint(tokenizer_dir)}"
    path = cache / f"tokens-{split}-{_short_hash(key)}.npy"
    if path.is_file():
        return path
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sep = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if sep is None:
        raise UserError(f"{tokenizer_dir}: the tokenizer has neither a BOS nor an EOS token")
    dtype = np.dtype(np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.uint32)
    documents = meta["splits"][split].get("documents")
    bar = tqdm(total=documents, unit="doc", desc=f"tokenizing {split}", file=sys.stderr)
    with atomic_path(path) as tmp:
        raw = tmp.with_suffix(".raw")
        count = 0
        with open(raw, "wb") as out:
            batch: list[str] = []
            for text in [*read_texts(corpus, split), None]:
                if text is not None:
                    batch.append(text)
                if batch and (text is None or len(batch) == 2048):
                    ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
                    flat = np.fromiter((t for doc in ids for t in (sep, *doc)), dtype=dtype)
                    flat.tofile(out)
                    count += len(flat)
                    bar.update(len(batch))
                    batch.clear()
        tokens = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(count,))
        source = np.memmap(raw, dtype=dtype, mode="r", shape=(count,)) if count else tokens
        for start in range(0, count, 1 << 26):
            tokens[start : start + (1 << 26)] = source[start : start + (1 << 26)]
        tokens.flush()
        del tokens, source
        raw.unlink()
    bar.close()
    return path


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class PackedBlocks(torch.utils.data.Dataset):
    """``length`` blocks of ``seq_len`` tokens from a token file, in an order fixed by ``seed``.

    Each pass over the file is a fresh permutation seeded by (seed, pass), so the budget may
    exceed the file; ``seed=None`` keeps file order (for evaluation). Item i depends on i alone,
    which is what lets a resumed run skip to exactly where the killed one stopped.
    """

    def __init__(
        self, path: str | Path, seq_len: int, length: int | None, seed: int | None
    ) -> None:
        self.tokens = np.load(path, mmap_mode="r")
        self.seq_len = seq_len
        self.blocks = len(self.tokens) // seq_len
        if self.blocks == 0:
            raise UserError(
                f"{path} holds {len(self.tokens)} tokens, fewer than one block of {seq_len}"
            )
        self.length = self.blocks if length is None else length
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            self._orders = {epoch: rng.permutation(self.blocks)}
        return self._orders[epoch]

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        epoch, j = divmod(i, self.blocks)
        block = j if self.seed is None else int(self._order(epoch)[j])
        start = block * self.seq_len
        ids = torch.from_numpy(self.tokens[start : start + self.seq_len].astype(np.int64))
        return {"input_ids": ids, "labels": ids}


# --------------------------------------------------------------------------------------------
# The Trainer with a loss hook and atomic checkpoints
# --------------------------------------------------------------------------------------------
class LossHookTrainer(Trainer):
    """``Trainer`` whose loss comes from ``loss_fn`` and whose checkpoints appear atomically."""

    # compute_loss returns a mean over the micro-batch: training_step divides by accumulation.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args: Any,
        loss_fn: LossFn,
        tokens_per_step: int,
        keep_checkpoints: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self.tokens_per_step = tokens_per_step
        self.keep_checkpoints = max(1, keep_checkpoints)
        self.model_accepts_loss_kwargs = False  # no token counting: every block is full
        self._components: dict[str, Tensor] = {}
        self._staging: Path | None = None
        self._clock = 0.0
        self._train_seconds: float | None = None

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._clock = time.perf_counter()
        self._train_seconds = None
        return super().train(*args, **kwargs)

    # ---- loss -------------------------------------------------------------------------------
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        loss, components = self.loss_fn(model, inputs)
        if model.training:
            share = 1.0 / self.current_gradient_accumulation_steps
            for name, value in components.items():
                value = value.detach().float() * share
                self._components[name] = self._components.get(name, 0.0) + value
        return (loss, None) if return_outputs else loss

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler:
        # PackedBlocks already orders blocks by the seed; a sequential sampler keeps that order
        # a pure function of the step, which exact resumption relies on.
        return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    # ---- per-step metrics -------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add loss components, tokens and throughput to each step's training log."""
        if "loss" in logs:
            if self._train_seconds is None:  # first log of this process: continue the history
                timed = [h for h in self.state.log_history if "train_seconds" in h]
                self._train_seconds = timed[-1]["train_seconds"] if timed else 0.0
                self._logged_step = timed[-1]["step"] if timed else 0
            now = time.perf_counter()
            elapsed, self._clock = now - self._clock, now
            self._train_seconds += elapsed
            done = (self.state.global_step - self._logged_step) * self.tokens_per_step
            self._logged_step = self.state.global_step
            for name, value in sorted(self._components.items()):  # same order in every process
                logs[name] = float(self.accelerator.reduce(value, reduction="mean"))
            self._components.clear()
            logs["tokens"] = self.state.global_step * self.tokens_per_step
            logs["tokens_per_second"] = done / elapsed if elapsed > 0 else 0.0
            logs["train_seconds"] = self._train_seconds
        super().log(logs, start_time)

    # ---- atomic checkpoints -----------------------------------------------------------------
    def _get_output_dir(self, trial: Any) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        # Every process writes into the staging folder (each its own RNG state); the main one
        # renames it into place once all have finished, and nobody goes on before that.
        run_dir = Path(self.args.output_dir)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        main = self.args.process_index == 0
        self._staging = run_dir / STAGING
        if main:
            shutil.rmtree(self._staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            super()._save_checkpoint(model, trial)
        finally:
            staged, self._staging = self._staging / name, None
        self.accelerator.wait_for_everyone()
        if main:
            final = run_dir / name
            if final.exists():
                _remove(final)
            os.replace(staged, final)  # the commit point: before it, resume sees the previous one
            shutil.rmtree(run_dir / STAGING, ignore_errors=True)
            for old in sorted(_checkpoints(run_dir), key=_step_of)[: -self.keep_checkpoints]:
                _remove(old)
        self.accelerator.wait_for_everyone()


def _checkpoints(run_dir: Path) -> list[Path]:
    return [
        p for p in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and _step_of(p) >= 0
    ]


def _step_of(path: Path) -> int:
    suffix = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
    return int(suffix) if suffix.isdigit() else -1


def _remove(path: Path) -> None:
    """Rename first, so a kill mid-delete never leaves a half checkpoint under its own name."""
    trash = path.with_name(f".trash-{path.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Callbacks: the step log and the progress bar
# --------------------------------------------------------------------------------------------
class StepLog(TrainerCallback):
    """Appends each step's metrics to a JSONL file; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        kept = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by the kill
                if record["step"] > state.global_step:
                    break
                kept.append(line + "\n")
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(kept))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if logs and "loss" in logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class ProgressBar(TrainerCallback):
    """A tqdm bar over optimizer steps with the loss and tokens/s."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, unit="step", file=sys.stderr
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        if self.bar is not None and logs and "loss" in logs:
            self.bar.update(state.global_step - self.bar.n)
            postfix = {"loss": f"{logs['loss']:.3f}"}
            if "tokens_per_second" in logs:
                postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
            self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TrainingRun(JobRun, TrainerCallback):
    """The run of a training job: a Trainer callback for the per-step metrics, reopened on
    resume from the run id kept in the work folder (so replayed steps are not logged twice)."""

    def __init__(
        self,
        tracking: Tracking,
        work: Path,
        stage: str,
        params: dict[str, Any],
        key: str | None = None,
    ) -> None:
        id_file = work / RUN_ID_FILE
        self._id_file = id_file
        super().__init__(tracking, stage, params, key)
        if not id_file.is_file():
            id_file.write_text(self.run_id)
        self.logged_step = self._last_logged_step()

    def _reopen(self, tracking: Tracking, key: str | None) -> str | None:
        if not self._id_file.is_file():
            return None
        run_id = self._id_file.read_text().strip()
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _last_logged_step(self) -> int:
        history = self.client.get_metric_history(self.run_id, "loss")
        return max((m.step for m in history), default=-1)

    # ---- TrainerCallback --------------------------------------------------------------------
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        # A resumed job replays the steps between its checkpoint and the kill; they were logged.
        if logs and "loss" in logs and state.global_step > self.logged_step:
            self.log_metrics(logs, state.global_step)
            self.logged_step = state.global_step

    def finish(self, metrics: dict[str, Any], out: Path | None, step: int = 0) -> None:
        """Final metrics (under ``final.``), the output's JSON files, and status FINISHED."""
        final = {k: v for k, v in metrics.items() if k not in ("config", "run", "final_step")}
        super().finish({"final": final}, out, step)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def work_dir(out: str | Path) -> Path:
    """Where checkpoints and the live step log go while ``out`` is being trained."""
    out = Path(out)
    return out.with_name(out.name + ".work")


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, blocks: PackedBlocks, batch_size: int, loss_fn: LossFn = causal_lm_loss
) -> dict[str, float]:
    """Mean of each loss component over ``blocks`` (all blocks are full, so means compose)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    batches = 0
    for start in range(0, len(blocks), batch_size):
        items = [blocks[i] for i in range(start, min(start + batch_size, len(blocks)))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        loss, components = loss_fn(model, batch)
        for name, value in {"loss": loss, **components}.items():
            sums[name] = sums.get(name, 0.0) + float(value) * len(items)
        batches += len(items)
    model.train(was_training)
    return {name: total / batches for name, total in sums.items()}


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    train_tokens: str | Path,
    out: str | Path,
    config: TrainConfig,
    validation_tokens: str | Path | None = None,
    loss_fn: LossFn = causal_lm_loss,
    callbacks: Iterable[TrainerCallback] = (),
    run_info: dict[str, Any] | None = None,
    final_metrics: Callable[[nn.Module], dict[str, Any]] | None = None,
    tracking: Tracking | None = None,
    stage: str = "train",
) -> dict[str, Any]:
    """Train ``model`` on packed ``train_tokens`` and save it with ``tokenizer`` to ``out``.

    Resumes by itself from the last checkpoint in :func:`work_dir` (``out`` + ``.work``) when a
    previous run with the same configuration was killed. ``out`` appears atomically, holding the
    model (save_pretrained), the tokenizer, ``metrics.json`` and the step log ``steps.jsonl``.
    ``run_info`` (model shape, data paths) is checked on resume and kept in metrics.json.
    ``final_metrics(model)`` adds stage-specific results to metrics.json before ``out`` appears.
    With ``tracking`` on, the run is logged to MLflow as ``stage`` (and reopened on resume).

    Data parallel: started by ``torchrun``/``accelerate launch``, every process runs this
    function; the Trainer shards the batches, and only the main process logs, evaluates and
    writes ``out`` (the others return an empty dict).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))  # set by torchrun; checked below
    die_with_launcher()
    plan = config.plan(world_size)
    out, work = Path(out), work_dir(out)
    work.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(config.precision)
    data = {"train_tokens": Path(train_tokens).name}  # named by the content they come from
    if validation_tokens is not None:
        data["validation_tokens"] = Path(validation_tokens).name
    run = {**(run_info or {}), **data, "precision": precision}
    identity = {"config": asdict(config), "run": run}

    hf_logging.disable_progress_bar()  # no "Writing model shards" bar at every checkpoint
    torch.manual_seed(config.seed)
    cuda = torch.cuda.is_available()
    if config.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", 0):
        raise UserError(f"{type(model).__name__} does not support gradient checkpointing")
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=plan.steps,
        per_device_train_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=plan.accumulation,
        learning_rate=config.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": config.min_lr_ratio},
        warmup_steps=config.warmup_steps,
        optim="adamw_torch",
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        max_grad_norm=config.grad_clip,
        bf16=precision == "bf16",
        use_cpu=not cuda,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        seed=config.seed,
        data_seed=config.seed,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=None,  # LossHookTrainer keeps the newest keep_checkpoints itself
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # every weight takes part in every step
    )
    if args.world_size != world_size:
        raise UserError(
            f"the Trainer sees {args.world_size} processes but WORLD_SIZE is {world_size}: "
            "start data-parallel runs with torchrun or accelerate launch"
        )
    main = args.process_index == 0  # the Trainer's own view, as in its checkpoint saving
    if main:
        shutil.rmtree(work / STAGING, ignore_errors=True)
        _check_same_run(work / "run.json", identity)
    dataset = PackedBlocks(train_tokens, config.seq_len, plan.sequences, config.seed)
    steps_file = work / STEPS_FILE
    tracker = None
    if main and tracking is not None and tracking.enabled:
        tracker = TrainingRun(tracking, work, stage, identity, str(out.resolve()))
    progress = ProgressBar()
    reporters = [StepLog(steps_file), progress, *([tracker] if tracker else [])]
    trainer = LossHookTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[*(reporters if main else []), *callbacks],
        loss_fn=loss_fn,
        tokens_per_step=config.tokens_per_step,
        keep_checkpoints=config.keep_checkpoints,
    )
    trainer.remove_callback(PrinterCallback)  # ProgressBar and StepLog report instead
    resume = get_last_checkpoint(str(work))
    memory = PeakMemory(args.device)
    memory.reset()
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
        wall = time.perf_counter() - started
        if not main:
            return {}
        metrics = {**_metrics(config, plan, steps_file, wall, resume), "processes": world_size}
        # CUDA's peak allocation while training, or on the CPU the process's peak resident set
        # while training (the models it holds included)
        metrics["peak_memory_mb"] = memory.mb()
        if validation_tokens is not None and config.eval_tokens > 0:
            blocks = PackedBlocks(validation_tokens, config.seq_len, None, None)
            blocks.length = max(1, min(blocks.blocks, config.eval_tokens // config.seq_len))
            metrics["validation"] = evaluate_loss(model, blocks, config.micro_batch_size, loss_fn)
            metrics["validation_tokens"] = blocks.length * config.seq_len
        if final_metrics is not None:
            metrics.update(final_metrics(model))
        metrics.update(identity)
        TrainingMetrics.from_dict(metrics, f"{out}/metrics.json", strict=True)  # the readers'

        with atomic_path(out) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            shutil.copyfile(steps_file, tmp / STEPS_FILE)
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / store.PROVENANCE, store.provenance(stage, identity))
        if tracker is not None:
            tracker.finish(metrics, out, plan.steps)
    except BaseException as err:
        progress.close()  # before the error's message, not after it at exit
        if tracker is not None:  # a kill by signal never gets here: its run stays RUNNING
            tracker.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _metrics(
    config: TrainConfig, plan: TrainPlan, steps_file: Path, wall: float, resume: str | None
) -> dict[str, Any]:
    steps = [json.loads(line) for line in steps_file.read_text().splitlines()]
    metrics: dict[str, Any] = {
        "steps": plan.steps,
        "tokens": plan.steps * config.tokens_per_step,
        "train_seconds": steps[-1]["train_seconds"] if steps else 0.0,
        "wall_seconds_this_run": wall,
        "resumed_from_step": _step_of(Path(resume)) if resume else None,
        "final_step": steps[-1] if steps else None,
    }
    metrics["tokens_per_second"] = (
        metrics["tokens"] / metrics["train_seconds"] if metrics["train_seconds"] else None
    )
    return metrics


def _check_same_run(path: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a run with different settings or data: its checkpoints would not fit.
    A work folder without a checkpoint holds nothing to resume, so it takes the new settings."""
    identity = json.loads(json.dumps(identity))  # as it reads back from JSON
    if path.is_file() and _checkpoints(path.parent):
        previous = json.loads(path.read_text())
        if previous != identity:
            changed = sorted(
                f"{section}.{k}"
                for section in ("config", "run")
                for k in set(previous.get(section, {})) | set(identity.get(section, {}))
                if previous.get(section, {}).get(k) != identity.get(section, {}).get(k)
            )
            raise UserError(
                f"{path.parent} holds checkpoints of a run with other settings "
                f"({', '.join(changed)}); delete that folder or rerun with the same settings"
            )
    else:
        write_json(path, identity)
