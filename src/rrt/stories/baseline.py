"""Shallow baselines for the embedded tasks: unigram and bigram word models, scored by lm-eval.

Why: a task only measures what the source model learned from the stories if surface statistics
do not solve it. Word n-grams fitted on the train split see word frequencies and adjacent pairs
but no story state, so they should sit near chance on every task while the pretrained source
model scores well above it. They run through the same lm-eval task YAMLs and metrics as any
model (:class:`NgramLM` is an lm-eval ``LM``), so the comparison is like for like.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM

from rrt.errors import UserError
from rrt.stories.tasks import CHANCE, GROUP, HEADLINE_METRIC, TASKS, task_manager
from rrt.training.data import read_texts

_TOKEN = re.compile(r"\w+|[^\w\s]")
START = "<s>"


def words(text: str) -> list[str]:
    return _TOKEN.findall(text)


class NgramLM(LM):
    """A unigram (order 1) or bigram (order 2) word model, as an lm-eval ``LM``.

    Unigram probabilities are add-one smoothed; the bigram interpolates its counts with the
    unigram (Jelinek-Mercer, weight ``lam``), so unseen pairs keep a small probability.
    "Greedy" (lm-eval's ``acc`` for the cloze) means every continuation word is the model's
    most probable next word.
    """

    def __init__(self, texts: Iterable[str], order: int = 2, lam: float = 0.9) -> None:
        super().__init__()
        if order not in (1, 2):
            raise UserError(f"n-gram order {order} is not supported; use 1 or 2")
        self.order, self.lam = order, lam
        self.unigrams: Counter[str] = Counter()
        self.bigrams: dict[str, Counter[str]] = defaultdict(Counter)
        for text in texts:
            tokens = [START, *words(text)]
            self.unigrams.update(tokens[1:])
            if order == 2:
                for prev, word in zip(tokens, tokens[1:], strict=False):
                    self.bigrams[prev][word] += 1
        self.total = sum(self.unigrams.values())
        self.vocab = len(self.unigrams) + 1  # + unknown
        self.top_unigram = self.unigrams.most_common(1)[0][0] if self.unigrams else START
        self.top_after = {p: c.most_common(1)[0][0] for p, c in self.bigrams.items()}
        self.after_total = {p: sum(c.values()) for p, c in self.bigrams.items()}

    def logprob(self, prev: str, word: str) -> float:
        p = (self.unigrams.get(word, 0) + 1) / (self.total + self.vocab)
        if self.order == 2 and prev in self.bigrams:
            p = (
                self.lam * self.bigrams[prev].get(word, 0) / self.after_total[prev]
                + (1 - self.lam) * p
            )
        return math.log(p)

    def greedy(self, prev: str) -> str:
        if self.order == 2 and prev in self.top_after:
            return self.top_after[prev]
        return self.top_unigram

    def _score(self, context: str, continuation: str) -> tuple[float, bool]:
        prev = (words(context) or [START])[-1]
        total, is_greedy = 0.0, True
        for word in words(continuation):
            total += self.logprob(prev, word)
            is_greedy = is_greedy and self.greedy(prev) == word
            prev = word
        return total, is_greedy

    # ---- lm-eval's interface ----------------------------------------------------------------
    def loglikelihood(
        self, requests: list[Any], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        return [self._score(*req.args) for req in requests]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        return [self._score("", req.args[0])[0] for req in requests]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        raise NotImplementedError(
            "the n-gram baseline only scores; the embedded tasks never generate"
        )


def headline(results: dict[str, Any]) -> dict[str, float]:
    """Each embedded task's headline metric from lm-eval's ``results`` section."""
    out = {}
    for task in TASKS:
        metrics = results.get(task, {})
        value = metrics.get(f"{HEADLINE_METRIC[task]},none")
        if value is not None:
            out[task] = value
    return out


def evaluate(lm: LM, tasks_dir: str | Path, tasks: list[str] | None = None) -> dict[str, Any]:
    """Run lm-eval on ``lm`` over the embedded tasks (offline; the YAMLs hold absolute paths)."""
    from lm_eval import simple_evaluate

    output = simple_evaluate(
        model=lm,
        tasks=tasks or [GROUP],
        task_manager=task_manager(tasks_dir),
        log_samples=False,
    )
    return output["results"]


def run_baselines(corpus: str | Path, tasks_dir: str | Path) -> dict[str, Any]:
    """Unigram and bigram headline metrics on every embedded task, beside chance."""
    texts = list(read_texts(corpus, "train"))
    report: dict[str, Any] = {"chance": CHANCE}
    for order, name in ((1, "unigram"), (2, "bigram")):
        results = evaluate(NgramLM(texts, order), tasks_dir)
        report[name] = headline(results)
        report[f"{name}_results"] = results
    return report
