"""Offline few-shot tasks from any corpus folder's held-out (test) split: lm-eval YAMLs over JSONL.

Why: the embedded tasks (:mod:`rrt.stories.tasks`) need the generated stories' annotations, so a
model trained on real text (documentation, books) had no few-shot tasks of its own offline. These
need nothing but the text: each item is cut from a test document at a sentence boundary, in the
form of one paper task (app. E), and scored against the document itself.

| task | paper kind | output type | metrics |
|---|---|---|---|
| text_cloze | LAMBADA | loglikelihood | acc, perplexity |
| text_continuation | HellaSwag | multiple_choice (4) | acc, acc_norm |
| text_perplexity | held-out perplexity | loglikelihood_rolling | word/byte perplexity, bits/byte |

- cloze: the last word (letters only, 3 or more, trailing punctuation dropped) of a sentence or
  paragraph of 4+ words, mostly letters (no heading or code line), after the document's text
  before it.
- continuation: the document up to a sentence boundary (two sentences in at least), then its
  true next sentence among three sentences of similar length from other test documents. The
  choices are prose (:func:`is_sentence`: 4-60 words, mostly letters, a capital first and
  . ! ? last, so no headings or code lines), with line breaks inside folded to spaces: a
  hard-wrapped text must not give the true one away by where its lines break. Each choice
  starts with a space, or with a blank line where the true sentence starts a paragraph.
- perplexity: the first ``perplexity_documents`` documents, each cut at a whitespace to its
  longest head that fits ``max_tokens``. Cut, not dropped as the embedded task drops long
  stories: real documents are mostly longer than a model's context, and dropping them would
  keep only the short (often atypical) ones.

A context too long for ``max_tokens`` (with its longest answer) loses its beginning, cut at a
whitespace; an item keeps at least :data:`MIN_CONTEXT_WORDS` words of context or is not made.
Without a tokenizer a word counts as one token (fewer than a subword tokenizer counts, so lm-eval
may still cut). Sentences are split by a simple rule (:data:`SENTENCE_END`): . ! ? (closing
quotes and brackets kept) before whitespace and a capital or opening quote, or a blank line;
abbreviations such as "e.g. Django" split too, which costs a few odd items, not wrong ones.

Every draw comes from ``random.Random(f"rrt-text-tasks:{seed}:{task}")``, documents are taken in
corpus order and give one item each at most, so the items are fixed by the corpus and the seed.
"""

from __future__ import annotations

import bisect
import random
import re
from collections.abc import Callable
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from rrt.errors import UserError
from rrt.io import sha256_of
from rrt.stories.tasks import (
    Item,
    Items,
    TasksConfig,
    TaskSuite,
    choice_item,
    draw_items,
    token_counter,
)
from rrt.training.data import read_meta, read_texts

GROUP = "text"
TASKS = ("text_cloze", "text_continuation", "text_perplexity")
TEMPLATES = resources.files("rrt.evaluation") / "task_templates"

# A sentence ends at . ! ? (and the closing quotes or brackets after it) where whitespace and a
# capital or an opening quote follow, or at its paragraph's last character before a blank line.
SENTENCE_END = re.compile(r"""[.!?]["'”’)\]]*(?=\s+["'“‘(\[]?[A-Z])|\S(?=[ \t]*\n[ \t]*\n)""")
SENTENCE_SHAPE = re.compile(r"""["'“‘(\[]?[A-Z].*[.!?]["'”’)\]]*""", re.DOTALL)
SPACE = re.compile(r"\s+")
BLANK_LINE = re.compile(r"\n[ \t]*\n")
TRAILING = ".,;:!?\"'”’)]}»"  # punctuation a cloze word sheds

MIN_CONTEXT_WORDS = 8  # an item's context, after any cut
MIN_CONTEXT_SENTENCES = 2  # sentences before a continuation's true one
SENTENCE_WORDS = (4, 60)  # a prose sentence's length in words
LETTER_SHARE = 0.6  # of a prose sentence's non-space characters
CLOZE_LETTERS = 3  # a cloze word's length at least
NEAREST = 12  # wrong continuations are drawn from this many nearest in length
CHARS_PER_TOKEN = 8  # a context is looked for in the last max_tokens * this many characters

WHY_NONE = {
    "text_cloze": f"no sentence ends in a word of {CLOZE_LETTERS}+ letters after "
    f"{MIN_CONTEXT_WORDS}+ words",
    "text_continuation": f"no prose sentence follows {MIN_CONTEXT_SENTENCES}+ sentences with 3 "
    "prose sentences of other documents to set beside it",
    "text_perplexity": "no document has a head that fits max_tokens",
}

Span = tuple[int, int]  # [start, end) of a sentence in its document
Count = Callable[[str], int]  # a text's length in tokens


# --------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------
def sentence_spans(text: str) -> list[Span]:
    """Where each sentence of ``text`` starts and ends (:data:`SENTENCE_END`), without the
    whitespace between them."""
    spans: list[Span] = []
    start = len(text) - len(text.lstrip())
    for end in [*(m.end() for m in SENTENCE_END.finditer(text)), len(text.rstrip())]:
        if end > start:
            spans.append((start, end))
            gap = SPACE.match(text, end)
            start = gap.end() if gap else end
    return spans


def fold(text: str) -> str:
    """Every run of whitespace one space."""
    return " ".join(text.split())


def _wordy(sentence: str) -> bool:
    """Enough words, and mostly letters (not a rule line, a table or a formula)."""
    words = sentence.split()
    chars = "".join(words)
    letters = sum(map(str.isalpha, chars))
    return len(words) >= SENTENCE_WORDS[0] and letters >= LETTER_SHARE * len(chars)


def is_sentence(sentence: str) -> bool:
    """Prose fit to be a choice: 4-60 words, mostly letters, a capital first and . ! ? last."""
    return (
        SENTENCE_SHAPE.fullmatch(sentence) is not None
        and len(sentence.split()) <= SENTENCE_WORDS[1]
        and _wordy(sentence)
    )


# --------------------------------------------------------------------------------------------
# Fitting into max_tokens
# --------------------------------------------------------------------------------------------
def _fit(text: str, size: Count, budget: int, *, keep_end: bool) -> str | None:
    """The longest piece of ``text`` cut at a whitespace whose ``size`` is within ``budget``:
    its end (a context that loses its beginning) or its start (a document that loses its end);
    None if none is."""
    window = budget * CHARS_PER_TOKEN
    whole = len(text) <= window
    if keep_end:  # (one character more: a word that starts the window shows its whitespace)
        text = text if whole else text[-window - 1 :]
        starts = ([0] if whole else []) + [m.end() for m in SPACE.finditer(text)]
        starts = [c for c in starts if c < len(text)]
        cuts, lengths = [slice(c, None) for c in starts], [len(text) - c for c in starts]
    else:
        text = text if whole else text[: window + 1]
        ends = ([len(text)] if whole else []) + [m.start() for m in SPACE.finditer(text)][::-1]
        ends = [c for c in ends if c > 0]
        cuts, lengths = [slice(0, c) for c in ends], ends
    if not cuts:
        return None
    longest = size(text[cuts[0]])
    if longest <= budget:
        return text[cuts[0]]
    # Tokens spread about evenly over characters: start from the piece as long as that says,
    # near the answer, so that a few counts find it rather than log2(len(cuts)).
    share = lengths[0] * budget / longest
    guess = next((i for i, n in enumerate(lengths) if n <= share), len(cuts) - 1)
    first = _first_fitting(len(cuts), lambda i: size(text[cuts[i]]) <= budget, max(guess, 1))
    return text[cuts[first]] if first < len(cuts) else None


def _first_fitting(n: int, fits: Callable[[int], bool], guess: int) -> int:
    """The first of ``n`` pieces (longest first, so fitting is monotone) that fits, or ``n``:
    galloping out from ``guess`` to bracket it, then bisecting."""
    lo, hi, step = 0, n, 1  # pieces before lo do not fit; the one at hi does (or hi is n)
    if fits(guess):
        hi = guess
        while hi - step >= lo:
            if not fits(hi - step):
                lo = hi - step + 1
                break
            hi, step = hi - step, step * 2
    else:
        lo = guess + 1
        while lo + step - 1 < hi:
            if fits(lo + step - 1):
                hi = lo + step - 1
                break
            lo, step = lo + step, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _context(before: str, ending: str, count: Count, max_tokens: int) -> str | None:
    """The end of ``before`` that fits ``max_tokens`` with ``ending`` after it, with at least
    :data:`MIN_CONTEXT_WORDS` words; None if it cannot have them."""
    context = _fit(before, lambda c: count(c + ending), max_tokens, keep_end=True)
    return context if context and len(context.split()) >= MIN_CONTEXT_WORDS else None


def _words(text: str) -> int:
    return len(text.split())


# --------------------------------------------------------------------------------------------
# Items, one builder per task: a document -> its item, or None
# --------------------------------------------------------------------------------------------
class Sentences:
    """Every test document's prose sentences (folded), by length: where wrong continuations of
    about the right length come from."""

    def __init__(self, texts: list[str]):
        documents: dict[str, set[int]] = {}
        for index, text in enumerate(texts):
            for start, end in sentence_spans(text):
                if is_sentence(sentence := fold(text[start:end])):
                    documents.setdefault(sentence, set()).add(index)
        self.documents = documents
        self.by_length = sorted((len(s), s) for s in documents)
        self.lengths = [n for n, _ in self.by_length]

    def near(self, right: str, document: int, k: int, rng: random.Random) -> list[str] | None:
        """``k`` sentences of other documents than ``document``, none ``right``, drawn from the
        :data:`NEAREST` closest to ``right`` in length."""
        below = bisect.bisect_left(self.lengths, len(right)) - 1
        above = below + 1
        found: list[str] = []
        while len(found) < NEAREST and (below >= 0 or above < len(self.by_length)):
            up = above < len(self.by_length) and (
                below < 0 or self.lengths[above] - len(right) <= len(right) - self.lengths[below]
            )
            sentence = self.by_length[above if up else below][1]
            above, below = (above + 1, below) if up else (above, below - 1)
            if sentence != right and document not in self.documents[sentence]:
                found.append(sentence)
        return rng.sample(found, k) if len(found) >= k else None


def cloze_item(text: str, rng: random.Random, count: Count, max_tokens: int) -> Item | None:
    """The last word of a sentence or paragraph, after the document's text before it."""
    cuts = []
    for start, end in sentence_spans(text):
        last = text[start:end].rsplit(None, 1)[-1]
        word = last.rstrip(TRAILING)
        if len(word) >= CLOZE_LETTERS and word.isalpha():
            cuts.append((start, end, end - len(last), word))
    rng.shuffle(cuts)
    for start, end, at, word in cuts:
        if not _wordy(text[start:end]):  # a heading's or a code line's last word
            continue
        target = " " + word
        context = _context(text[:at].rstrip(), target, count, max_tokens)
        if context is not None:
            return {"context": context, "target": target}
    return None


def continuation_item(
    text: str,
    document: int,
    rng: random.Random,
    count: Count,
    max_tokens: int,
    pool: Sentences,
) -> Item | None:
    """The document up to a sentence boundary; its next sentence among three of other documents."""
    spans = sentence_spans(text)
    after = list(range(MIN_CONTEXT_SENTENCES, len(spans)))
    rng.shuffle(after)
    for i in after:
        right = fold(text[slice(*spans[i])])
        if right not in pool.documents:  # not prose
            continue
        wrong = pool.near(right, document, 3, rng)
        if wrong is None:
            continue
        gap = text[spans[i - 1][1] : spans[i][0]]
        sep = "\n\n" if BLANK_LINE.search(gap) else " "
        longest = sep + max([right, *wrong], key=len)
        context = _context(text[: spans[i - 1][1]], longest, count, max_tokens)
        if context is not None:
            endings = [sep + w for w in wrong]
            return choice_item(context, sep + right, endings, rng)
    return None


def perplexity_item(text: str, document: int, count: Count, max_tokens: int) -> Item | None:
    """The document, or its longest head cut at a whitespace that fits ``max_tokens``."""
    if not text.strip():
        return None
    head = _fit(text, count, max_tokens, keep_end=False)
    return {"text": head, "document": document} if head else None


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
def build_items(texts: list[str], config: TasksConfig, count: Count) -> dict[str, list[Item]]:
    """Every task's items, each task from its own seeded stream (one task never shifts another)."""
    limit, pool = config.max_tokens, Sentences(texts)
    builders: dict[str, Callable[[tuple[int, str], random.Random], Item | None]] = {
        "text_cloze": lambda doc, rng: cloze_item(doc[1], rng, count, limit),
        "text_continuation": lambda doc, rng: continuation_item(
            doc[1], doc[0], rng, count, limit, pool
        ),
    }
    stream = f"rrt-text-tasks:{config.seed}"
    items = draw_items(builders, list(enumerate(texts)), config.items, stream, "document")
    heads = (perplexity_item(text, d, count, limit) for d, text in enumerate(texts))
    items["text_perplexity"] = list(islice(filter(None, heads), config.perplexity_documents))
    return items


def text_items(
    corpus: str | Path, config: TasksConfig, tokenizer_dir: str | Path | None = None
) -> tuple[Items, dict[str, Any]]:
    """The text tasks' items, from the test split of any corpus folder, and what their
    meta.json records of the corpus."""
    meta = read_meta(corpus)
    test = meta["splits"]["test"]
    recorded = test.get("sha256") if isinstance(test, dict) else None
    if recorded is not None and sha256_of(Path(corpus) / "test.jsonl") != recorded:
        raise UserError(
            f"{corpus}/test.jsonl does not match the sha256 its meta.json records (edited after "
            "it was written?); write the corpus folder again"
        )
    texts = list(read_texts(corpus, "test"))
    items = build_items(texts, config, token_counter(tokenizer_dir) or _words)
    for task, rows in items.items():
        if not rows:
            raise UserError(
                f"no {task} items from {corpus}/test.jsonl ({len(texts)} documents): "
                f"{WHY_NONE[task]}"
            )
    corpus_info = {
        "generator": meta.get("generator"),
        "test_documents": len(texts),
        "test_sha256": recorded,
    }
    return items, corpus_info


TEXT = TaskSuite(GROUP, TEMPLATES, text_items)
