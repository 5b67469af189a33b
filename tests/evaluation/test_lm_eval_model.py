"""The relaxed recursive model runs through lm-eval's HFLM as it is, lm-eval unpatched."""

from __future__ import annotations

import json

import pytest
import torch
from _eval_fixtures import make_embedded_tasks, make_model, make_tokenizer

from rrt.method.convert import convert
from rrt.method.relax import relax


@pytest.fixture(scope="module")
def relaxed_and_tokenizer():
    tokenizer = make_tokenizer()
    source = make_model(tokenizer, layers=4)
    return relax(convert(source, loops=2, init="average"), source, rank=4), tokenizer


def choice_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation | context), encoded as lm-eval encodes a request."""
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = model(ids).logits.log_softmax(-1)[0]
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_relaxed_model_runs_through_lm_eval_simple_evaluate(relaxed_and_tokenizer, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = relaxed_and_tokenizer
    task_dir = make_embedded_tasks(tmp_path / "tasks")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4)
    names = ["embedded_choice2", "embedded_cloze", "embedded_perplexity"]
    out = simple_evaluate(
        model=lm,
        tasks=names,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=False,
    )
    results = out["results"]
    assert set(names) <= set(results)
    assert 0.0 <= results["embedded_cloze"]["acc,none"] <= 1.0
    assert results["embedded_perplexity"]["word_perplexity,none"] > 1.0

    # lm-eval's accuracy is the one our own scoring of the same model gives.
    rows = [json.loads(line) for line in (task_dir / "data" / "choice2.jsonl").open()]
    correct = 0
    for row in rows:
        scores = [choice_loglikelihood(model, tokenizer, row["sentence"], " " + option)
                  for option in row["options"]]  # fmt: skip
        correct += scores.index(max(scores)) == 0
    assert results["embedded_choice2"]["acc,none"] == pytest.approx(correct / len(rows))
