"""The embedded corpus: deterministic short stories whose later sentences depend on earlier state.

Why: the embedded default must pretrain a source model with no download, on text where depth
matters. Every story tracks characters (with pronoun agreement), where they are, what they hold
and how many, and which item lies in which container; later sentences restate that state. The
same generator annotates the spans that earlier sentences determine (:class:`Slot`), so the
held-out split doubles as the source of the few-shot tasks (:mod:`rrt.stories.tasks`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rrt.config import section
from rrt.errors import UserError
from rrt.io import atomic_path, write_json
from rrt.training.data import SPLITS, read_meta

# Bump when the generated text changes for a given seed: tasks and token caches key on it.
GENERATOR_VERSION = 2

# --------------------------------------------------------------------------------------------
# The world's vocabulary. Every list is sampled uniformly, so no word is more frequent than its
# peers: a unigram or bigram model cannot tell a right filler from a wrong one of the same kind.
# --------------------------------------------------------------------------------------------
FEMALE = (
    "Anna", "Mia", "Lily", "Emma", "Sara", "Lucy", "Nora", "Ella", "Ruby", "Grace", "Alice",
    "Rosa", "Julia", "Clara", "Maya", "Zoe", "Ivy", "Hannah", "Olivia", "Sophie", "Laura",
    "Eva", "Amy", "Kate",
)  # fmt: skip
MALE = (
    "Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Noah", "Paul", "Hugo", "Oscar", "Adam", "Eric",
    "Felix", "Henry", "Jacob", "Luke", "Mark", "Owen", "Peter", "Ryan", "Simon", "Victor",
    "David", "Omar",
)  # fmt: skip
# (place, preposition): the preposition travels with its place in every filler.
PLACES = (
    ("kitchen", "in"), ("garden", "in"), ("market", "at"), ("forest", "in"), ("school", "at"),
    ("library", "in"), ("park", "in"), ("river", "at"), ("farm", "on"), ("beach", "on"),
    ("station", "at"), ("bakery", "at"), ("castle", "in"), ("village", "in"), ("hill", "on"),
    ("barn", "in"), ("shop", "at"), ("harbor", "at"), ("meadow", "in"), ("museum", "in"),
)  # fmt: skip
# Countable goods, (singular, plural): the counts of these change as the story goes on.
GOODS = (
    ("apple", "apples"), ("pear", "pears"), ("egg", "eggs"), ("shell", "shells"),
    ("stone", "stones"), ("book", "books"), ("pencil", "pencils"), ("cookie", "cookies"),
    ("flower", "flowers"), ("marble", "marbles"), ("button", "buttons"), ("candle", "candles"),
    ("plum", "plums"), ("cherry", "cherries"), ("leaf", "leaves"), ("peach", "peaches"),
)  # fmt: skip
# Unique items that get hidden in containers and found again.
THINGS = (
    "key", "ring", "ball", "spoon", "cup", "hat", "toy", "letter", "map", "bell", "kite",
    "sock", "brush", "coin", "card", "whistle",
)  # fmt: skip
CONTAINERS = (
    "box", "basket", "bag", "drawer", "jar", "chest", "cupboard", "bucket", "pot", "pocket",
)  # fmt: skip
COLORS = (
    "red", "blue", "green", "yellow", "white", "black", "brown", "pink", "purple", "gray",
    "golden", "silver",
)  # fmt: skip
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_COUNT = 9
# (feeling, what one does about it): the pronoun in between must agree with the named character.
FEELINGS = (
    ("tired", "sat down"), ("hungry", "ate some bread"), ("happy", "sang a song"),
    ("sad", "cried a little"), ("cold", "put on a coat"), ("bored", "read a story"),
    ("thirsty", "drank some water"), ("sleepy", "took a nap"),
)  # fmt: skip

_WORD_TOKEN = re.compile(r"\w+|[^\w\s]")
_PUNCTUATION = (".", ",", "?", ":")


def count_word_tokens(text: str) -> int:
    """Words and punctuation marks: the corpus's token unit before any tokenizer exists.

    Stories use no punctuation but ``.,?:`` and always attach it to a word, so counting is
    cheap; :func:`count_word_tokens_slow` is the definition, kept for the tests.
    """
    return len(text.split()) + sum(map(text.count, _PUNCTUATION))


def count_word_tokens_slow(text: str) -> int:
    return len(_WORD_TOKEN.findall(text))


# --------------------------------------------------------------------------------------------
# Annotated stories
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """A span of a sentence that earlier sentences determine, with wrong fillers of its kind.

    Replacing the span by any alternative gives a fluent sentence that contradicts the story.
    ``alternatives`` come from the same story, most confusable first; ``fallbacks`` are drawn
    from the vocabulary, for tasks that need more wrong choices than the story offers.
    """

    kind: str
    start: int
    answer: str
    alternatives: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()

    @property
    def end(self) -> int:
        return self.start + len(self.answer)


@dataclass(frozen=True)
class Sentence:
    text: str
    slots: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Question:
    """A question about the story's final state, answered by a phrase the story determines."""

    kind: str
    question: str
    answer: str
    alternatives: tuple[str, ...]
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Story:
    sentences: tuple[Sentence, ...]
    questions: tuple[Question, ...]
    asked: int  # how many of ``questions`` the document itself asks and answers

    @property
    def body(self) -> str:
        return " ".join(s.text for s in self.sentences)

    @property
    def text(self) -> str:
        qa = "".join(f"\n\n{question_prompt(q)} {q.answer}" for q in self.questions[: self.asked])
        return self.body + qa


def question_prompt(q: Question) -> str:
    """The question block up to its answer; the QA task cuts documents at the same place."""
    return f"Question: {q.question}\nAnswer:"


class _Character:
    __slots__ = ("name", "female", "place", "goods")

    def __init__(self, name: str, female: bool, place: tuple[str, str]) -> None:
        self.name = name
        self.female = female
        self.place = place
        self.goods: dict[tuple[str, str], int] = {}

    @property
    def subj(self) -> str:
        return "she" if self.female else "he"

    @property
    def obj(self) -> str:
        return "her" if self.female else "him"

    @property
    def poss(self) -> str:
        return "her" if self.female else "his"


def amount(n: int, good: tuple[str, str]) -> str:
    """A count with number agreement: "no apples", "one apple", "three apples"."""
    return f"{NUMBERS[n]} {good[0] if n == 1 else good[1]}"


def place_phrase(place: tuple[str, str]) -> str:
    """ "in the garden", "at the market": a place always keeps its own preposition."""
    return f"{place[1]} the {place[0]}"


def _others(items: list[str] | tuple[str, ...], exclude: set[str]) -> tuple[str, ...]:
    """``items`` without ``exclude`` and without repeats, in order."""
    seen = set(exclude)
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return tuple(out)


_ALL_PLACES = tuple(place_phrase(p) for p in PLACES)
_ALL_NAMES = FEMALE + MALE
_ALL_ITEMS = tuple(f"{c} {t}" for t in THINGS for c in COLORS)
_ALL_THE_ITEMS = tuple(f"the {a}" for a in _ALL_ITEMS)


class StoryWriter:
    """Writes one story event by event, keeping the world state its sentences must agree with.

    With ``annotate`` false the writer skips building slots and alternatives, which only the
    held-out split needs. Annotation never draws from ``rng``, so the text is the same either way.
    """

    def __init__(self, rng: random.Random, annotate: bool) -> None:
        self.rng = rng
        self.annotate = annotate
        self.sentences: list[Sentence] = []
        self.last_subject: _Character | None = None

    # ---- helpers ----------------------------------------------------------------------------
    def _say(self, text: str, slots: list[Slot] | None = None) -> None:
        self.sentences.append(Sentence(text, tuple(slots) if slots else ()))

    def _subject(self, c: _Character) -> str:
        """Name, or a pronoun when the character was the previous sentence's subject."""
        if self.last_subject is c and self.rng.random() < 0.5:
            return c.subj.capitalize()
        return c.name

    @staticmethod
    def _slot(
        text: str, marker: str, kind: str, answer: str, story: list[str], vocab: tuple[str, ...]
    ) -> Slot:
        """The slot whose span is ``answer``, found where ``marker`` (ending with it) occurs."""
        start = text.index(marker) + marker.rindex(answer)
        alternatives = _others(story, {answer})
        return Slot(kind, start, answer, alternatives, _others(vocab, {answer, *alternatives}))

    def _story_places(self, answer: tuple[str, str]) -> list[str]:
        return [place_phrase(p) for p in self.places if p != answer]

    def _story_names(self, exclude: set[str]) -> list[str]:
        return [c.name for c in self.chars if c.name not in exclude]

    def _story_items(self, color: str, thing: str) -> list[str]:
        items = [f"{c} {t}" for c, t in self.hidden.values()]
        items += [f"{c} {thing}" for c in self.colors] + [f"{color} {t}" for t in self.things]
        return items

    @staticmethod
    def _counts(n: int, before: int, good: tuple[str, str], low: int = 0) -> list[str]:
        near = (before, n + 1, n - 1, n + 2, n - 2, n + 3, n - 3, n + 4, n - 4)
        return [amount(k, good) for k in near if low <= k <= MAX_COUNT and k != n]

    # ---- events -----------------------------------------------------------------------------
    def intro(self, c: _Character) -> None:
        verb = self.rng.choice(("was", "was", "woke up", "played"))
        self._say(f"{c.name} {verb} {place_phrase(c.place)}.")
        self.last_subject = c

    def start_goods(self, c: _Character, good: tuple[str, str]) -> None:
        n = self.rng.randint(2, 6)
        c.goods[good] = n
        self._say(f"{self._subject(c)} had {amount(n, good)}.")
        self.last_subject = c

    def move(self, c: _Character, place: tuple[str, str] | None = None) -> None:
        if place is None:
            place = self.rng.choice([p for p in self.places if p != c.place])
        c.place = place
        s = self._subject(c)
        if self.rng.random() < 0.5:
            self._say(f"{s} went to the {place[0]}.")
        else:
            s = s if s == c.name else s.lower()
            self._say(f"Then {s} walked to the {place[0]}.")
        self.last_subject = c

    def give(self, a: _Character, b: _Character) -> None:
        held = [g for g, n in a.goods.items() if n > 0 and b.goods.get(g, 0) < MAX_COUNT]
        if not held:
            return self.find(a)
        good = self.rng.choice(held)
        if a.place != b.place:
            self.move(a, b.place)
        before_a, before_b = a.goods[good], b.goods.get(good, 0)
        k = self.rng.randint(1, min(before_a, MAX_COUNT - before_b))
        a.goods[good] -= k
        b.goods[good] = before_b + k
        self._say(f"{self._subject(a)} gave {amount(k, good)} to {b.name}.")
        self.last_subject = a
        self.givers.setdefault((b.name, good), []).append(a)
        if self.rng.random() < 0.4:
            text = f"{b.name} said thank you to {a.name}."
            slots = []
            if self.annotate:
                story = self._story_names({a.name, b.name})
                vocab = _others(_ALL_NAMES, {b.name})
                slots = [self._slot(text, f" to {a.name}", "name", a.name, story, vocab)]
            self._say(text, slots)
            self.last_subject = b
        elif self.rng.random() < 0.6:
            who, before = (a, before_a) if self.rng.random() < 0.5 else (b, before_b)
            self.count(who, good, before)

    def count(self, c: _Character, good: tuple[str, str], before: int) -> None:
        phrase = amount(c.goods[good], good)
        text = f"Now {c.name} had {phrase}."
        slots = []
        if self.annotate:
            alts = self._counts(c.goods[good], before, good)
            slots = [self._slot(text, f" had {phrase}", "count", phrase, alts, ())]
        self._say(text, slots)
        self.last_subject = c

    def find(self, c: _Character) -> None:
        good = self.rng.choice(self.goods)
        have = c.goods.get(good, 0)
        if have >= MAX_COUNT:
            return
        k = self.rng.randint(1, min(3, MAX_COUNT - have))
        c.goods[good] = have + k
        where = place_phrase(c.place)
        text = f"{self._subject(c)} found {amount(k, good)} {where}."
        slots = []
        if self.annotate:
            story = self._story_places(c.place)
            slots = [self._slot(text, f" {where}.", "place", where, story, _ALL_PLACES)]
        self._say(text, slots)
        self.last_subject = c
        if self.rng.random() < 0.4:
            self.count(c, good, have)

    def lose(self, c: _Character) -> None:
        held = [g for g, n in c.goods.items() if n > 0]
        if not held:
            return
        good = self.rng.choice(held)
        before = c.goods[good]
        k = self.rng.randint(1, before)
        c.goods[good] = before - k
        self._say(f"{self._subject(c)} lost {amount(k, good)}.")
        self.last_subject = c
        if self.rng.random() < 0.6:
            self.count(c, good, before)

    def hide(self, c: _Character) -> None:
        used = {t for _, t in self.hidden.values()}
        free = [x for x in self.containers if x not in self.hidden]
        things = [t for t in self.things if t not in used]
        if not free or not things:
            return
        container, thing = self.rng.choice(free), self.rng.choice(things)
        color = self.rng.choice(self.colors)
        self.hidden[container] = (color, thing)
        self._say(f"{self._subject(c)} put the {color} {thing} in the {container}.")
        self.last_subject = c

    def _hidden_one(self) -> tuple[str, str, str] | None:
        """A container holding a hidden item, chosen at random, and the item's colour and thing."""
        if not self.hidden:
            return None
        container = self.rng.choice(list(self.hidden))
        return container, *self.hidden[container]

    def reveal(self, c: _Character) -> None:
        if (found := self._hidden_one()) is None:
            return
        container, color, thing = found
        item = f"{color} {thing}"
        text = f"Later, {c.name} opened the {container} and found the {item}."
        slots = []
        if self.annotate:
            story = self._story_items(color, thing)
            slots = [self._slot(text, f" the {item}.", "item", item, story, _ALL_ITEMS)]
        self._say(text, slots)
        self.last_subject = c

    def seek(self, c: _Character) -> None:
        if (found := self._hidden_one()) is None:
            return
        container, color, thing = found
        text = f"{c.name} wanted the {color} {thing}, so {c.subj} opened the {container}."
        slots = []
        if self.annotate:
            other = "he" if c.female else "she"
            story = [x for x in self.containers if x != container]
            slots = [
                self._slot(text, f", so {c.subj}", "pronoun", c.subj, [other], ()),
                self._slot(text, f" the {container}.", "container", container, story, CONTAINERS),
            ]
        self._say(text, slots)
        self.last_subject = c

    def feel(self, c: _Character) -> None:
        feeling, action = self.rng.choice(FEELINGS)
        text = f"{c.name} was {feeling}, so {c.subj} {action}."
        slots = []
        if self.annotate:
            other = "he" if c.female else "she"
            slots = [self._slot(text, f", so {c.subj}", "pronoun", c.subj, [other], ())]
        self._say(text, slots)
        self.last_subject = c

    def look_for(self, a: _Character, b: _Character) -> None:
        where = place_phrase(b.place)
        text = f"{self._subject(a)} looked for {b.name} and found {b.obj} {where}."
        a.place = b.place
        slots = []
        if self.annotate:
            other = "her" if b.obj == "him" else "him"
            story = self._story_places(b.place)
            slots = [
                self._slot(text, f" found {b.obj}", "pronoun", b.obj, [other], ()),
                self._slot(text, f" {where}.", "place", where, story, _ALL_PLACES),
            ]
        self._say(text, slots)
        self.last_subject = a

    def count_final(self) -> None:
        options = [(c, g) for c in self.chars for g, n in c.goods.items() if n > 0]
        if not options:
            return
        c, good = self.rng.choice(options)
        n = c.goods[good]
        text = f"{c.name} counted {c.poss} {good[1]} and found {NUMBERS[n]}."
        slots = []
        if self.annotate:
            alts = [a.split(" ")[0] for a in self._counts(n, -1, good, low=1)]
            slots = [self._slot(text, f" found {NUMBERS[n]}", "count", NUMBERS[n], alts, ())]
        self._say(text, slots)

    # ---- the final state, as questions ------------------------------------------------------
    def _question(
        self,
        kind: str,
        question: str,
        answer: str,
        fillers: Callable[[], tuple[list[str], tuple[str, ...]]],
    ) -> Question:
        """A question; ``fillers`` (story, vocabulary) is only called when annotating."""
        if not self.annotate:
            return Question(kind, question, answer, ())
        story, vocab = fillers()
        alternatives = _others(story, {answer})
        fallbacks = _others(vocab, {answer, *alternatives})
        return Question(kind, question, answer, alternatives, fallbacks)

    def questions(self) -> list[Question]:
        qs: list[Question] = []
        for c in self.chars:
            q = f"Where is {c.name}?"
            place = c.place
            fill = lambda p=place: (self._story_places(p), _ALL_PLACES)  # noqa: E731
            qs.append(self._question("place", q, place_phrase(place), fill))
            for good, n in c.goods.items():
                if n > 0:
                    q = f"How many {good[1]} does {c.name} have?"
                    fill = lambda n=n, g=good: (  # noqa: E731
                        [a.split(" ")[0] for a in self._counts(n, -1, g, low=1)],
                        (),
                    )
                    qs.append(self._question("count", q, NUMBERS[n], fill))
        for container, (color, thing) in self.hidden.items():
            q = f"What is in the {container}?"
            fill = lambda c=color, t=thing: (  # noqa: E731
                [f"the {a}" for a in self._story_items(c, t)],
                _ALL_THE_ITEMS,
            )
            qs.append(self._question("item", q, f"the {color} {thing}", fill))
        for (receiver, good), givers in self.givers.items():
            if len({g.name for g in givers}) == 1:
                giver = givers[0].name
                q = f"Who gave {good[1]} to {receiver}?"
                fill = lambda g=giver, r=receiver: (  # noqa: E731
                    self._story_names({g, r}),
                    _others(_ALL_NAMES, {r}),
                )
                qs.append(self._question("name", q, giver, fill))
        self.rng.shuffle(qs)
        return qs

    # ---- the whole story --------------------------------------------------------------------
    def write(self) -> Story:
        rng = self.rng
        self.places = rng.sample(PLACES, 5)
        self.goods = rng.sample(GOODS, 3)
        self.things = rng.sample(THINGS, 4)
        self.containers = rng.sample(CONTAINERS, 4)
        self.colors = rng.sample(COLORS, 3)
        self.hidden: dict[str, tuple[str, str]] = {}
        self.givers: dict[tuple[str, tuple[str, str]], list[_Character]] = {}
        n_chars = rng.choice((2, 3, 3))
        females = rng.randint(0, n_chars)
        names = [(n, True) for n in rng.sample(FEMALE, females)]
        names += [(n, False) for n in rng.sample(MALE, n_chars - females)]
        rng.shuffle(names)
        self.chars = [_Character(n, f, rng.choice(self.places)) for n, f in names]

        for c in self.chars:
            self.intro(c)
            if rng.random() < 0.7:
                self.start_goods(c, rng.choice(self.goods))
        if rng.random() < 0.6:  # hidden items early, so later sentences can ask for them
            self.hide(rng.choice(self.chars))
        for _ in range(rng.randint(5, 9)):
            event = rng.choice(_EVENTS)
            c = rng.choice(self.chars)
            if event in ("give", "look_for"):
                getattr(self, event)(c, rng.choice([o for o in self.chars if o is not c]))
            else:
                getattr(self, event)(c)
        if rng.random() < 0.5:
            self.count_final()
        questions = self.questions()
        asked = min(rng.choice((0, 1, 2, 2)), len(questions))
        return Story(tuple(self.sentences), tuple(questions), asked)


# Events drawn uniformly from this list, so repeats set their relative frequency.
_EVENTS = (
    "move", "move", "give", "give", "give", "find", "lose", "hide", "hide", "reveal", "reveal",
    "seek", "seek", "feel", "look_for", "look_for",
)  # fmt: skip


def write_story(rng: random.Random, annotate: bool = True) -> Story:
    """One story drawn from ``rng``; ``annotate`` adds the slots and answers the tasks need."""
    return StoryWriter(rng, annotate).write()


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
@section("corpus")
class CorpusConfig:
    """How much text to write (``corpus`` in the config schema)."""

    tokens: int
    validation_documents: int
    test_documents: int
    seed: int


def _split_rng(seed: int, split: str) -> random.Random:
    # String seeds hash with SHA-512 in CPython, independent of PYTHONHASHSEED.
    return random.Random(f"rrt-corpus:{seed}:{split}")


def _fingerprint(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def generate_split(
    seed: int,
    split: str,
    *,
    documents: int | None = None,
    tokens: int | None = None,
    exclude: set[bytes] | None = None,
    annotate: bool = False,
) -> Iterator[Story]:
    """Stories of one split, in order, until ``documents`` stories or ``tokens`` word tokens.

    Stories whose text is in ``exclude`` (fingerprints, updated in place) are skipped, which is
    how the splits share no document.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rng = _split_rng(seed, split)
    seen = exclude if exclude is not None else set()
    made = total = 0
    while (documents is None or made < documents) and (tokens is None or total < tokens):
        story = write_story(rng, annotate=annotate)
        text = story.text
        key = _fingerprint(text)
        if key in seen:
            continue
        seen.add(key)
        made += 1
        total += count_word_tokens(text)
        yield story


def held_out_stories(config: CorpusConfig, split: str) -> list[Story]:
    """The annotated stories of a held-out split, exactly as :func:`write_corpus` wrote them."""
    if split not in ("test", "validation"):
        raise UserError(f"split {split!r} is not held out; expected 'test' or 'validation'")
    seen: set[bytes] = set()
    for name, documents in _held_out_plan(config):
        annotate = name == split
        stories = list(
            generate_split(config.seed, name, documents=documents, exclude=seen, annotate=annotate)
        )
        if name == split:
            return stories
    raise AssertionError("unreachable")


def _held_out_plan(config: CorpusConfig) -> list[tuple[str, int]]:
    # Test first, then validation, then train: each later split skips the earlier splits' texts.
    return [("test", config.test_documents), ("validation", config.validation_documents)]


def write_corpus(out: str | Path, config: CorpusConfig) -> dict:
    """Write train/validation/test JSONL and meta.json into ``out``, atomically as a whole."""
    seen: set[bytes] = set()
    plan = [(name, {"documents": n}) for name, n in _held_out_plan(config)]
    plan.append(("train", {"tokens": config.tokens}))
    splits: dict[str, dict] = {}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for split, size in plan:
            digest = hashlib.sha256()
            docs = words = 0
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for story in generate_split(config.seed, split, exclude=seen, **size):
                    text = story.text
                    line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
                    f.write(line)
                    digest.update(line.encode())
                    docs += 1
                    words += count_word_tokens(text)
            splits[split] = {"documents": docs, "word_tokens": words, "sha256": digest.hexdigest()}
        meta = {
            "generator": "rrt.stories.corpus",
            "generator_version": GENERATOR_VERSION,
            "config": asdict(config),
            "splits": {s: splits[s] for s in SPLITS},
        }
        write_json(tmp / "meta.json", meta)
    return meta


def read_generated_meta(corpus: str | Path) -> dict:
    """The meta.json of a corpus this generator wrote, refusing one of another version (its
    stories could not be generated again)."""
    meta = read_meta(corpus)
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise UserError(
            f"{corpus} was written by corpus generator version {meta.get('generator_version')}; "
            f"this rrt writes version {GENERATOR_VERSION}: regenerate it with `rrt corpus`"
        )
    return meta
