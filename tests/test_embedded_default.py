"""The README's main job, scripts/embedded_default.sh, end to end at toy size."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "embedded_default.sh"
TRAIN = (
    "--seq-len 128 --tokens-per-step 1024 --micro-batch-size 8 --warmup-steps 1 --eval-tokens 1024"
)
TOY = {
    "CORPUS_ARGS": "--tokens 30000 --validation-documents 20 --test-documents 40",
    "TOKENIZER_ARGS": "--vocab-size 300",
    "TASKS_ARGS": "--items 8 --perplexity-documents 4",
    "PRETRAIN_ARGS": f"--layers 2 --hidden-size 32 --heads 2 --kv-heads 1 --intermediate-size 64 "
    f"--tokens 8192 {TRAIN}",
    "UPTRAIN_ARGS": f"--tokens 4096 {TRAIN}",
    "EARLY_EXIT_ARGS": "--tokens 2048",
    "LORA_RANK": "4",
    "EVAL_ARGS": "--threads 1 --batch-size 4",
}


@pytest.mark.slow
def test_embedded_default_script_runs_end_to_end_and_skips_finished_steps(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, **TOY}
    first = subprocess.run(
        ["bash", str(SCRIPT), str(results)], env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    for model in ("source", "reduced", "recursive-up", "relaxed-up", "relaxed-ee"):
        report = json.loads((results / "eval" / f"{model}.json").read_text())
        assert set(report["tasks"]) >= {"embedded_cloze", "embedded_qa", "embedded_perplexity"}
    exits = json.loads((results / "relaxed-ee" / "metrics.json").read_text())["held_out_exits"]
    assert set(exits) == {"ce_loop1", "ce_loop2", "acc_loop1", "acc_loop2"}
    assert json.loads((results / "reduced" / "config.json").read_text())["num_hidden_layers"] == 1
    for b in (1, 2):
        report = json.loads((results / "eval" / f"relaxed-ee-exit{b}.json").read_text())
        assert report["model"]["exit_loop"] == b

    again = subprocess.run(
        ["bash", str(SCRIPT), str(results)], env=env, capture_output=True, text=True
    )
    assert again.returncode == 0
    assert "rrt " not in again.stdout.replace("exists, skipped", "")  # nothing ran twice
