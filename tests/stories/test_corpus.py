"""The embedded story corpus: deterministic, disjoint splits, annotations that match the text."""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from _embedded import CORPUS

from rrt.cli import main
from rrt.io import MARKER
from rrt.stories.corpus import (
    GOODS,
    NUMBERS,
    CorpusConfig,
    Story,
    count_word_tokens,
    count_word_tokens_slow,
    held_out_stories,
    write_corpus,
    write_story,
)
from rrt.training.data import read_texts

SMALL = replace(CORPUS, tokens=5_000, validation_documents=20, test_documents=30)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_gives_byte_identical_corpus_and_another_seed_does_not(tmp_path):
    write_corpus(tmp_path / "a", SMALL)
    write_corpus(tmp_path / "b", SMALL)
    write_corpus(tmp_path / "c", replace(SMALL, seed=1))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert set(a) == {"train.jsonl", "validation.jsonl", "test.jsonl", "meta.json", MARKER}
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]


def test_splits_share_no_document(tmp_path):
    write_corpus(tmp_path / "c", SMALL)
    splits = {s: list(read_texts(tmp_path / "c", s)) for s in ("train", "validation", "test")}
    assert len(splits["validation"]) == SMALL.validation_documents
    assert len(splits["test"]) == SMALL.test_documents
    seen: set[str] = set()
    for texts in splits.values():
        assert len(set(texts)) == len(texts)
        assert not seen & set(texts)
        seen |= set(texts)


def test_meta_records_config_sizes_and_hashes(tmp_path):
    meta = write_corpus(tmp_path / "c", SMALL)
    assert meta["config"] == asdict(SMALL)
    train = meta["splits"]["train"]
    words = sum(count_word_tokens(t) for t in read_texts(tmp_path / "c", "train"))
    assert train["word_tokens"] == words >= SMALL.tokens
    assert json.loads((tmp_path / "c" / "meta.json").read_text()) == meta


def test_annotation_never_changes_the_text():
    for seed in range(50):
        plain = write_story(random.Random(seed), annotate=False)
        annotated = write_story(random.Random(seed), annotate=True)
        assert plain.text == annotated.text


def test_every_slot_spans_its_answer_and_no_alternative_equals_it():
    rng = random.Random(0)
    kinds = set()
    for _ in range(300):
        story = write_story(rng)
        for sentence in story.sentences:
            for slot in sentence.slots:
                kinds.add(slot.kind)
                assert sentence.text[slot.start : slot.end] == slot.answer
                assert slot.answer not in slot.alternatives + slot.fallbacks
                assert len(set(slot.alternatives + slot.fallbacks)) == len(
                    slot.alternatives + slot.fallbacks
                )
        for q in story.questions:
            assert q.answer not in q.alternatives + q.fallbacks
    assert kinds == {"place", "count", "name", "item", "container", "pronoun"}


def _replay_counts(story: Story) -> int:
    """Replay goods through every have/give/find/lose; assert each stated count; return how many.

    Re-implements the story grammar from the outside: a pronoun subject is the previous
    sentence's subject, as the generator promises.
    """
    number = {w: i for i, w in enumerate(NUMBERS)}
    plural = {s: p for s, p in GOODS} | {p: p for _, p in GOODS}
    counts: dict[tuple[str, str], int] = {}
    last = None
    checked = 0
    for sentence in story.sentences:
        text = re.sub(r"^(Then|Later,) ", "", sentence.text.rstrip("."))
        first = text.split(" ")[0]
        subject = last if first.lower() in ("she", "he") else first
        if m := re.fullmatch(r"Now (\w+) had (\w+) (\w+)", text):
            assert counts.get((m[1], plural[m[3]]), 0) == number[m[2]], sentence.text
            checked += 1
            subject = m[1]
        elif m := re.fullmatch(r"\w+ had (\w+) (\w+)", text):
            counts[(subject, plural[m[2]])] = number[m[1]]
        elif m := re.fullmatch(r"\w+ gave (\w+) (\w+) to (\w+)", text):
            k, good = number[m[1]], plural[m[2]]
            counts[(subject, good)] = counts.get((subject, good), 0) - k
            counts[(m[3], good)] = counts.get((m[3], good), 0) + k
        elif m := re.fullmatch(r"\w+ found (\w+) (\w+) (in|at|on) the \w+", text):
            good = plural[m[2]]
            counts[(subject, good)] = counts.get((subject, good), 0) + number[m[1]]
        elif m := re.fullmatch(r"\w+ lost (\w+) (\w+)", text):
            good = plural[m[2]]
            counts[(subject, good)] = counts.get((subject, good), 0) - number[m[1]]
        elif m := re.fullmatch(r"(\w+) counted \w+ (\w+) and found (\w+)", text):
            assert counts.get((m[1], m[2]), 0) == number[m[3]], sentence.text
            checked += 1
        assert all(0 <= n <= 9 for n in counts.values()), sentence.text
        last = subject
    return checked


def test_stated_counts_agree_with_the_story_arithmetic():
    rng = random.Random(3)
    assert sum(_replay_counts(write_story(rng)) for _ in range(300)) > 100


def test_held_out_stories_regenerate_the_written_test_split(tmp_path):
    write_corpus(tmp_path / "c", SMALL)
    for split in ("test", "validation"):
        stories = held_out_stories(SMALL, split)
        assert [s.text for s in stories] == list(read_texts(tmp_path / "c", split))


def test_word_token_count_matches_its_regex_definition():
    rng = random.Random(1)
    for _ in range(100):
        text = write_story(rng).text
        assert count_word_tokens(text) == count_word_tokens_slow(text)


def test_corpus_cli_rejects_non_positive_tokens_with_one_line(tmp_path, capsys):
    assert main(["corpus", "--out", str(tmp_path / "c"), "--tokens", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corpus.tokens: 0 is less than the minimum of 1" in err
    assert not (tmp_path / "c").exists()


@pytest.mark.slow
def test_corpus_scales_to_twenty_million_tokens_in_under_three_minutes(tmp_path):
    start = time.perf_counter()
    meta = write_corpus(tmp_path / "c", CorpusConfig(tokens=20_000_000))
    assert meta["splits"]["train"]["word_tokens"] >= 20_000_000
    assert time.perf_counter() - start < 180
