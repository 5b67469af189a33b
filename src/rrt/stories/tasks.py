"""Offline few-shot tasks for the embedded default: lm-eval YAMLs over JSONL from held-out stories.

Why: the paper evaluates on lm-eval tasks (app. E) that need the hub; the embedded default
needs the same kinds of task offline. Each task here copies one paper task's form, and every
item is cut from a held-out (test) story at a span that earlier sentences determine (a
:class:`rrt.stories.corpus.Slot`), with wrong choices of the same kind drawn from the same story
first, then from the vocabulary. A model must track the story to score; word frequencies cannot
help, which :mod:`rrt.stories.baseline` checks with a unigram and a bigram model.

| task | paper kind | output type | metric |
|---|---|---|---|
| embedded_cloze | LAMBADA | loglikelihood | acc, perplexity |
| embedded_continuation | HellaSwag | multiple_choice (4) | acc_norm |
| embedded_choice2 | PIQA / WinoGrande | multiple_choice (2) | acc |
| embedded_qa | ARC / OpenBookQA | multiple_choice (4) | acc_norm |
| embedded_perplexity | held-out perplexity | loglikelihood_rolling | word_perplexity |

The YAMLs are templates shipped in ``rrt/stories/task_templates``; generation fills in the
absolute path of each JSONL (:func:`write_tasks`, which writes :mod:`rrt.evaluation.text_tasks`'
suite too), because lm-eval resolves a relative ``data_files`` against the working directory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from rrt.config import section
from rrt.errors import UserError
from rrt.io import atomic_path
from rrt.stories.corpus import (
    CorpusConfig,
    Question,
    Slot,
    Story,
    held_out_stories,
    question_prompt,
    read_generated_meta,
)
from rrt.training.data import read_texts

GROUP = "embedded"
TASKS = (
    "embedded_cloze",
    "embedded_continuation",
    "embedded_choice2",
    "embedded_qa",
    "embedded_perplexity",
)
HEADLINE_METRIC = {
    "embedded_cloze": "acc",
    "embedded_continuation": "acc_norm",
    "embedded_choice2": "acc",
    "embedded_qa": "acc_norm",
    "embedded_perplexity": "word_perplexity",
}
CHANCE = {  # accuracy of a uniform guess; the cloze is open-vocabulary
    "embedded_cloze": None,
    "embedded_continuation": 0.25,
    "embedded_choice2": 0.5,
    "embedded_qa": 0.25,
    "embedded_perplexity": None,
}
TEMPLATES = resources.files("rrt.stories") / "task_templates"


@section("tasks")
class TasksConfig:
    """How many items of each task (``tasks`` in the config schema)."""

    seed: int
    items: int
    perplexity_documents: int
    max_tokens: int


Item = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Items, one builder per task: story -> the candidate items that story offers
# --------------------------------------------------------------------------------------------
def _join(before: str, text: str) -> str:
    return f"{before} {text}" if before else text


def _distractors(
    alternatives: tuple[str, ...], fallbacks: tuple[str, ...], k: int, rng: random.Random
) -> list[str] | None:
    """``k`` wrong fillers: the story's own first, then a sample of the vocabulary's."""
    chosen = list(alternatives[:k])
    if len(chosen) < k:
        if len(fallbacks) < k - len(chosen):
            return None
        chosen += rng.sample(fallbacks, k - len(chosen))
    return chosen


def choice_item(
    context: str, right: str, wrong: list[str], rng: random.Random, **extra: Any
) -> Item:
    """The right choice among the wrong ones in a random order, and where it went (``gold``)."""
    choices = [right, *wrong]
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "gold": choices.index(right), **extra}


def _by_kind(
    candidates: list[tuple[str, Callable[[], Item | None]]], rng: random.Random
) -> Item | None:
    """Pick a kind uniformly, then the first of its candidates (in random order) that makes an
    item: keeps the rarer kinds represented."""
    kinds = sorted({kind for kind, _ in candidates})
    rng.shuffle(kinds)
    for kind in kinds:
        options = [make for k, make in candidates if k == kind]
        rng.shuffle(options)
        for make in options:
            item = make()
            if item is not None:
                return item
    return None


def _slots(story: Story) -> Iterator[tuple[Slot, str, str]]:
    """Every slot with the story before its sentence and the sentence itself."""
    for i, sentence in enumerate(story.sentences):
        before = " ".join(s.text for s in story.sentences[:i])
        for slot in sentence.slots:
            yield slot, before, sentence.text


def _from_slots(
    story: Story, rng: random.Random, make: Callable[[Slot, str, str], Item | None]
) -> Item | None:
    return _by_kind([(s.kind, partial(make, s, b, t)) for s, b, t in _slots(story)], rng)


def cloze_item(story: Story, rng: random.Random) -> Item | None:
    """The last word of a sentence whose final span the story determines."""

    def make(slot: Slot, before: str, text: str) -> Item | None:
        if slot.end != len(text) - 1:  # only spans that end the sentence
            return None
        word = slot.answer.rsplit(" ", 1)[-1]
        context = _join(before, text[: slot.end - len(word)].rstrip(" "))
        return {"context": context, "target": " " + word, "kind": slot.kind}

    return _from_slots(story, rng, make)


def choice2_item(story: Story, rng: random.Random) -> Item | None:
    """Two ways to finish a sentence from a determined span on: right filler or a wrong one."""

    def make(slot: Slot, before: str, text: str) -> Item | None:
        wrong = _distractors(slot.alternatives, slot.fallbacks, 1, rng)
        if wrong is None:
            return None
        context = _join(before, text[: slot.start].rstrip(" "))
        rest = text[slot.end :]
        right, other = " " + slot.answer + rest, " " + wrong[0] + rest
        return choice_item(context, right, [other], rng, kind=slot.kind)

    return _from_slots(story, rng, make)


def continuation_item(story: Story, rng: random.Random) -> Item | None:
    """Four next sentences: the story's, and three with a determined span swapped."""

    def make(slot: Slot, before: str, text: str) -> Item | None:
        wrong = _distractors(slot.alternatives, slot.fallbacks, 3, rng)
        if wrong is None or not before:
            return None
        head, tail = " " + text[: slot.start], text[slot.end :]
        endings = [head + w + tail for w in wrong]
        return choice_item(before, head + slot.answer + tail, endings, rng, kind=slot.kind)

    return _from_slots(story, rng, make)


def qa_item(story: Story, rng: random.Random) -> Item | None:
    """A question about the story's final state with four answers."""

    def make(q: Question) -> Item | None:
        wrong = _distractors(q.alternatives, q.fallbacks, 3, rng)
        if wrong is None:
            return None
        context = f"{story.body}\n\n{question_prompt(q)}"
        return choice_item(context, " " + q.answer, [" " + w for w in wrong], rng, kind=q.kind)

    return _by_kind([(q.kind, partial(make, q)) for q in story.questions], rng)


BUILDERS: dict[str, Callable[[Story, random.Random], Item | None]] = {
    "embedded_cloze": cloze_item,
    "embedded_continuation": continuation_item,
    "embedded_choice2": choice2_item,
    "embedded_qa": qa_item,
}


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def token_counter(tokenizer_dir: str | Path | None) -> Callable[[str], int] | None:
    """How many tokens a text takes under the tokenizer, one more for the BOS lm-eval may put
    before it; None without a tokenizer."""
    if tokenizer_dir is None:
        return None
    from rrt.store import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    # verbose=False: a text longer than the model's context is counted, not warned about
    return lambda text: (
        len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]) + 1
    )


def _length_filter(tokenizer_dir: str | Path | None, max_tokens: int) -> Callable[[Item], bool]:
    """Keep items whose context plus longest answer fits the model's context (lm-eval would cut)."""
    count = token_counter(tokenizer_dir)
    if count is None:
        return lambda item: True

    def fits(item: Item) -> bool:
        endings = item.get("choices") or [item.get("target", "")]
        text = item.get("context", item.get("text", "")) + max(endings, key=len)
        return count(text) <= max_tokens

    return fits


def draw_items(
    builders: dict[str, Callable[[Any, random.Random], Item | None]],
    documents: list[Any],
    wanted: int,
    stream: str,
    key: str,
    keep: Callable[[Item], bool] = lambda item: True,
) -> dict[str, list[Item]]:
    """Up to ``wanted`` items of each task, one a document at most, in document order, each
    recording its document's index under ``key``. Each task draws from its own seeded stream
    ``{stream}:{task}``, so one task never shifts another's items."""
    items: dict[str, list[Item]] = {}
    for task, build in builders.items():
        rng = random.Random(f"{stream}:{task}")
        chosen: list[Item] = []
        for index, document in enumerate(documents):
            if len(chosen) == wanted:
                break
            item = build(document, rng)
            if item is not None and keep(item):
                chosen.append({**item, key: index})
        items[task] = chosen
    return items


def build_items(
    stories: list[Story], texts: list[str], config: TasksConfig, fits: Callable[[Item], bool]
) -> dict[str, list[Item]]:
    """Every task's items, each task from its own seeded stream (one task never shifts another)."""
    stream = f"rrt-tasks:{config.seed}"
    items = draw_items(BUILDERS, stories, config.items, stream, "story", fits)
    docs = [{"text": t, "story": i} for i, t in enumerate(texts)]
    items["embedded_perplexity"] = [d for d in docs if fits(d)][: config.perplexity_documents]
    return items


Items = dict[str, list[Item]]  # task -> its items


def story_items(
    corpus: str | Path, config: TasksConfig, tokenizer_dir: str | Path | None = None
) -> tuple[Items, dict[str, Any]]:
    """The embedded tasks' items, from the stories of a generated corpus's test split, and what
    their meta.json records of the corpus."""
    meta = read_generated_meta(corpus)
    corpus_config = CorpusConfig(**meta["config"])
    stories = held_out_stories(corpus_config, "test")
    texts = list(read_texts(corpus, "test"))
    if [s.text for s in stories] != texts:
        raise UserError(
            f"{corpus}/test.jsonl does not match the stories its meta.json (seed "
            f"{corpus_config.seed}) generates; regenerate the corpus with `rrt corpus`"
        )
    items = build_items(stories, texts, config, _length_filter(tokenizer_dir, config.max_tokens))
    for task, rows in items.items():
        if not rows:
            raise UserError(f"no items for {task}: the test split has too few stories")
    return items, {"config": meta["config"], "test_sha256": meta["splits"]["test"]["sha256"]}


class TaskSuite(NamedTuple):
    """A suite of offline lm-eval tasks: its group, its YAML templates, and its items from a
    corpus folder's test split (:func:`story_items`; :func:`rrt.evaluation.text_tasks.text_items`)
    with what the suite's meta.json records of that corpus."""

    group: str
    templates: Traversable
    items: Callable[[str | Path, TasksConfig, str | Path | None], tuple[Items, dict[str, Any]]]


EMBEDDED = TaskSuite(GROUP, TEMPLATES, story_items)


def write_tasks(
    suite: TaskSuite,
    corpus: str | Path,
    out: str | Path,
    config: TasksConfig,
    tokenizer_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``suite``'s tasks from ``corpus`` into ``out``, atomically as a whole: each task's
    JSONL and YAML (its template, reading the JSONL by absolute path), the group's YAML and
    meta.json; return the meta: the group, each task's item count, the settings, the corpus and
    the tokenizer."""
    items, corpus_info = suite.items(corpus, config, tokenizer_dir)
    final, group, templates = Path(out).resolve(), suite.group, suite.templates
    info = {
        "group": group,
        "tasks": {t: len(rows) for t, rows in items.items()},
        "config": asdict(config),
        "corpus": corpus_info,
        "tokenizer": str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None,
    }
    with atomic_path(final) as tmp:
        tmp.mkdir()
        for task, rows in items.items():
            with open(tmp / f"{task}.jsonl", "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
            spec = yaml.safe_load((templates / f"{task}.yaml").read_text())
            spec["dataset_kwargs"]["data_files"]["test"] = str(final / f"{task}.jsonl")
            (tmp / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        (tmp / f"{group}.yaml").write_text((templates / f"{group}.yaml").read_text())
        (tmp / "meta.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def task_manager(tasks_dir: str | Path) -> Any:
    """An lm-eval TaskManager that sees only these tasks (loads in ~0 s, offline)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(Path(tasks_dir).resolve()), include_defaults=False)
