"""scripts/uptrain_ablation.py: rows per run, seeds averaged, KD paired with no KD per seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "uptrain_ablation.py"
spec = importlib.util.spec_from_file_location("uptrain_ablation", SCRIPT)
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def _write(out: Path, name: str, model: str, kd: float, seed: int, ce: float, ee: bool = False):
    folder = out / name
    folder.mkdir(parents=True)
    metrics = {
        "tokens": 4096 if ee else 8192,
        "tokens_per_second": 100.0,
        "config": {"seed": seed},
        "validation": {"ce": ce},
        "held_out_exits": {"acc_loop1": ce / 2, "acc_loop2": ce},
        "run": {"model": model, "teacher": "source" if kd else None,
                "loss": {"kd_weight": kd, "early_exit": ee}},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_summary_pairs_each_kd_run_with_the_no_kd_run_of_its_seed(tmp_path):
    for seed, (plain, kd) in enumerate([(1.0, 0.9), (1.2, 1.0)]):
        _write(tmp_path, ablation.run_name("rec", 8192, 0.0, seed), "res/rec", 0.0, seed, plain)
        parent = _write(
            tmp_path, ablation.run_name("rec", 8192, 0.5, seed), "res/rec", 0.5, seed, kd
        )
        _write(tmp_path, f"{parent.name}-ee4096", str(parent), 0.5, seed, kd + 0.01, ee=True)
    runs = ablation.collect(tmp_path)
    assert len(runs) == 6 and set(runs["model"]) == {"rec"}
    summary = ablation.summarize(runs)
    kd = summary.filter(kd_weight=0.5, early_exit_tokens=0).row(0, named=True)
    assert kd["seeds"] == 2 and kd["held_out_ce"] == pytest.approx(0.95)
    assert kd["minus_no_kd_mean"] == pytest.approx(-0.15)  # (-0.1 - 0.2) / 2
    assert kd["minus_no_kd_max"] == pytest.approx(-0.1)
    post = summary.filter(early_exit_tokens=4096).row(0, named=True)
    assert post["tokens"] == 8192 and post["kd_weight"] == 0.5  # the parent's budget and weight
    assert post["held_out_ce"] == pytest.approx(0.96)
