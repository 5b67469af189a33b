"""Few-shot tasks from any corpus folder's test split: cut from the real text, deterministic,
fitted to the model's context, and run through lm-eval as the `text` suite."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from _eval_fixtures import make_model_dir

from rrt.cli import main
from rrt.errors import UserError
from rrt.evaluation.suites import load_suites
from rrt.evaluation.text_tasks import GROUP, TASKS, TEXT, fold
from rrt.stories.tasks import TasksConfig, token_counter, write_tasks

SMALL = TasksConfig(seed=0, items=50, perplexity_documents=50, max_tokens=256)

DOCUMENTS = [
    # documentation, with a heading, a literal block and a code line
    """Writing your first view
========================

A view is a Python function that takes a web request and returns a web response. The response
can be the HTML contents of a page, a redirect, or an error. Each view lives in a file called
views.py inside your application.

Open the file and put the following code in it::

    from django.http import HttpResponse

    def index(request):
        return HttpResponse("Hello, world.")

This is the simplest view possible in Django. To call the view, we need to map it to a URL, and
for this we need a URLconf. The URLconf tells Django which view handles which address.

When you are done, start the development server again and visit the page in your browser. You
should see the greeting you wrote, served by your own application.
""",
    # a story
    """The lighthouse keeper woke before dawn, as he had every morning for thirty years. He climbed
the narrow stairs with a lamp in one hand and a flask of tea in the other. The wind had turned
in the night and now came from the north.

At the top he found the great lens clouded with salt. He wiped it slowly, pane by pane, until
the glass shone again. Far below, a fishing boat was making for the harbour under a grey sail.

He watched it for a long time. His daughter had promised to write from the city, but no letter
had come in weeks. When the boat reached the quay, he went down to meet the postman.
""",
    # history
    """The canal was begun in the spring of 1793 and took eleven years to finish. Its builders
had to cut through two ranges of hills and cross a wide marsh. More than four hundred men worked
on it at the busiest time.

The marsh proved the hardest part of the route. Every embankment the workers raised sank within
a few weeks, and the engineers changed their plans three times. In the end they drove timber
piles deep into the peat and built the bank on top of them.

When the canal opened, the price of coal in the nearby towns fell by almost half. Mills that
had relied on river water could now run all year. Within a generation the valley had become one
of the busiest industrial districts in the country.
""",
    # science
    """Bees find their way home by the position of the sun. A worker that has found a rich patch
of flowers returns to the hive and performs a dance on the comb. The angle of the dance tells
the other workers in which direction to fly.

The length of the dance tells them how far away the flowers are. A short dance means the food
is close, while a long one means a journey of several kilometres. Scientists first decoded this
language in the middle of the last century.

Later experiments showed that bees also remember landmarks along the way. When researchers
moved a hive overnight, the returning foragers searched the old place before they found the new
one. Memory and the sun work together to guide them.
""",
    # a how-to
    """Bread needs only flour, water, salt and yeast, but the way they are combined matters a
great deal. Mix the flour and water first and let them rest for half an hour. This rest gives
the flour time to absorb the water completely.

Then add the salt and the yeast and knead the dough for ten minutes. It should become smooth and
elastic, and spring back slowly when you press it with a finger. Cover the bowl with a damp
cloth and leave it somewhere warm.

After two hours the dough will have doubled in size. Shape it gently into a round loaf and let
it rise once more. Bake it in a hot oven until the crust is deep brown and the loaf sounds
hollow when you tap the bottom.
""",
    # a letter
    """Dear Margaret, thank you for the parcel, which arrived on Tuesday in perfect condition. The
children have already eaten most of the biscuits and are asking when you will send more.

We have had a wet summer here. The river rose twice and flooded the lower meadow, so the hay was
late and much of it spoiled. Father says that he has not seen such a season since he was a boy.

Please give my love to your mother and tell her that the roses she planted are flowering at
last. I hope that you will come to stay with us in the autumn, when the weather is kinder.
""",
]


def write_corpus(folder: Path, test: list[str]) -> Path:
    """A corpus folder as rrt.training.data reads it: three JSONL splits and meta.json with
    each split's sha256; no story generator's meta."""
    folder.mkdir(parents=True)
    splits = {"train": DOCUMENTS[:2], "validation": DOCUMENTS[2:3], "test": test}
    meta = {"generator": "a test's hand-written text", "splits": {}}
    for split, texts in splits.items():
        data = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
        (folder / f"{split}.jsonl").write_bytes(data)
        meta["splits"][split] = {
            "documents": len(texts),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with its byte-level tokenizer (context 256 tokens)."""
    return make_model_dir(tmp_path_factory.mktemp("model") / "tiny-llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("text") / "corpus", DOCUMENTS)


def _rows(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]


def _cut_at(doc: str, context: str) -> int:
    """Where ``context`` ends in ``doc``, checking that it starts there at a whitespace."""
    start = doc.find(context)
    assert start >= 0 and (start == 0 or doc[start - 1].isspace()), context
    return start + len(context)


def test_same_seed_gives_byte_identical_task_files(corpus: Path, tmp_path: Path) -> None:
    write_tasks(TEXT, corpus, tmp_path / "a", SMALL)
    write_tasks(TEXT, corpus, tmp_path / "b", SMALL)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    write_tasks(TEXT, corpus, tmp_path / "a", SMALL)  # again, into the same folder
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == first
    for name, content in first.items():
        # Only the absolute data paths written into the YAMLs differ between folders.
        assert content.replace(str(tmp_path / "a").encode(), b"DIR") == (
            tmp_path / "b" / name
        ).read_bytes().replace(str(tmp_path / "b").encode(), b"DIR")
    write_tasks(TEXT, corpus, tmp_path / "c", replace(SMALL, seed=1))
    for task in ("text_cloze", "text_continuation"):
        assert (tmp_path / "c" / f"{task}.jsonl").read_bytes() != first[f"{task}.jsonl"]


def test_cloze_target_is_the_real_next_word_after_the_real_prefix(
    corpus: Path, tmp_path: Path
) -> None:
    write_tasks(TEXT, corpus, tmp_path / "t", SMALL)
    rows = _rows(tmp_path / "t", "text_cloze")
    assert [r["document"] for r in rows] == list(range(len(DOCUMENTS)))  # one each, in order
    for row in rows:
        doc, word = DOCUMENTS[row["document"]], row["target"].removeprefix(" ")
        assert row["target"] == " " + word and word.isalpha() and len(word) >= 3
        rest = doc[_cut_at(doc, row["context"]) :]
        assert rest[0].isspace() and rest.lstrip().startswith(word), row
        after = rest.lstrip()[len(word) :]
        assert after == "" or after[0] in ".,;:!?\"')\n", row  # the word ends its sentence


def test_continuation_gold_is_the_real_next_sentence_and_the_others_other_documents(
    corpus: Path, tmp_path: Path
) -> None:
    write_tasks(TEXT, corpus, tmp_path / "t", SMALL)
    rows = _rows(tmp_path / "t", "text_continuation")
    assert len(rows) == len(DOCUMENTS)
    for row in rows:
        doc = DOCUMENTS[row["document"]]
        rest = fold(doc[_cut_at(doc, row["context"]) :])
        assert len({fold(c) for c in row["choices"]}) == 4
        for i, choice in enumerate(row["choices"]):
            sentence = fold(choice)
            assert rest.startswith(sentence) == (i == row["gold"]), row
            sources = [d for d, text in enumerate(DOCUMENTS) if sentence in fold(text)]
            assert (
                sources == [row["document"]] if i == row["gold"] else row["document"] not in sources
            )
            assert sentence[0].isupper() and sentence[-1] in ".!?", sentence  # prose, not code
        assert len(row["context"].split()) >= 8


def test_items_fit_max_tokens_and_long_documents_are_cut_not_dropped(
    corpus: Path, model_dir: Path, tmp_path: Path
) -> None:
    config = replace(SMALL, max_tokens=96)
    info = write_tasks(TEXT, corpus, tmp_path / "t", config, model_dir)
    count = token_counter(model_dir)
    assert info["tokenizer"] == str(model_dir.resolve())
    heads = _rows(tmp_path / "t", "text_perplexity")
    assert [h["document"] for h in heads] == list(range(len(DOCUMENTS)))  # every one, cut
    for head in heads:
        doc, text = DOCUMENTS[head["document"]], head["text"]
        assert doc.startswith(text) and doc[len(text)].isspace()  # cut at a whitespace
        assert count(text) <= 96
        rest = doc[len(text) :]
        longer = doc[: len(text) + len(rest) - len(rest.lstrip()) + len(rest.split()[0])]
        assert count(longer) > 96  # the longest head that fits
    for row in _rows(tmp_path / "t", "text_cloze"):
        assert count(row["context"] + row["target"]) <= 96
    for row in _rows(tmp_path / "t", "text_continuation"):
        assert count(row["context"] + max(row["choices"], key=len)) <= 96
    write_tasks(TEXT, corpus, tmp_path / "w", SMALL)
    whole = _rows(tmp_path / "w", "text_perplexity")
    assert [h["text"] for h in whole] == DOCUMENTS  # without a tokenizer a word is a token


def test_a_cut_keeps_the_longest_piece_that_fits(model_dir: Path) -> None:
    """The gallop-and-bisect search finds what trying every whitespace cut finds."""
    from rrt.evaluation.text_tasks import SPACE, _fit

    count = token_counter(model_dir)
    text = DOCUMENTS[1] + "\n" + DOCUMENTS[2]  # longer than the window for the larger budgets
    starts = [0] + [m.end() for m in SPACE.finditer(text)]
    ends = [len(text)] + [m.start() for m in SPACE.finditer(text)][::-1]
    tails = {text[c:]: count(text[c:]) for c in starts if c < len(text)}  # longest first
    heads = {text[:c]: count(text[:c]) for c in ends if c > 0}
    for budget in (5, 17, 40, 96, 150, 1000):
        tail = next((t for t, n in tails.items() if n <= budget), None)
        head = next((h for h, n in heads.items() if n <= budget), None)
        assert _fit(text, count, budget, keep_end=True) == tail, budget
        assert _fit(text, count, budget, keep_end=False) == head, budget
    assert _fit(text, count, 1, keep_end=True) is None


@pytest.mark.parametrize(
    ("test", "missing"),
    [
        ([], "text_cloze"),
        (["Short note.", "Another one."], "text_cloze"),
        (
            ["The keeper climbed the stairs to the lamp at dawn. He wiped the glass."],
            "text_continuation",
        ),
    ],
)
def test_a_test_split_without_items_is_one_line_naming_the_corpus(
    tmp_path: Path, test: list[str], missing: str
) -> None:
    folder = write_corpus(tmp_path / "small", test)
    with pytest.raises(UserError, match=f"no {missing} items from {folder}/test.jsonl") as err:
        write_tasks(TEXT, folder, tmp_path / "t", SMALL)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "t").exists()


def test_an_edited_test_split_is_refused(corpus: Path, tmp_path: Path) -> None:
    edited = tmp_path / "corpus"
    edited.mkdir()
    for p in corpus.iterdir():
        (edited / p.name).write_bytes(p.read_bytes())
    with (edited / "test.jsonl").open("a") as f:
        f.write(json.dumps({"text": "A line someone added later."}) + "\n")
    with pytest.raises(UserError, match="does not match the sha256 its meta.json records"):
        write_tasks(TEXT, edited, tmp_path / "t", SMALL)


def test_tasks_cli_writes_the_text_group_from_any_corpus_folder(
    corpus: Path, model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t"
    argv = ["tasks", "--suite", "text", "--corpus", str(corpus), "--out", str(out)]
    assert main([*argv, "--tokenizer", str(model_dir), "--items", "3"]) == 0
    assert "wrote group 'text'" in capsys.readouterr().out
    group = yaml.safe_load((out / f"{GROUP}.yaml").read_text())
    assert group["group"] == GROUP and group["task"] == list(TASKS)
    for task in TASKS:
        spec = yaml.safe_load((out / f"{task}.yaml").read_text())
        path = Path(spec["dataset_kwargs"]["data_files"]["test"])
        assert spec["task"] == task and path == out.resolve() / f"{task}.jsonl" and path.is_file()
        assert "version" in spec["metadata"]
    meta = json.loads((out / "meta.json").read_text())
    recorded = json.loads((corpus / "meta.json").read_text())["splits"]["test"]["sha256"]
    assert meta["group"] == GROUP and meta["corpus"]["test_sha256"] == recorded
    assert meta["tasks"] == {"text_cloze": 3, "text_continuation": 3, "text_perplexity": 6}
    assert meta["config"]["items"] == 3 and meta["tokenizer"] == str(model_dir.resolve())
    # The embedded suite still needs the story generator's corpus.
    embedded = ["tasks", "--corpus", str(corpus), "--out", str(tmp_path / "e")]
    assert main(embedded) == 2
    assert "corpus generator version" in capsys.readouterr().err


def test_text_suite_runs_through_lm_eval_and_averages_its_accuracy_tasks(
    corpus: Path, model_dir: Path, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks"
    write_tasks(TEXT, corpus, tasks, SMALL, model_dir)
    out = tmp_path / "eval" / "text.json"
    argv = ["evaluate", "--model", str(model_dir), "--tasks", "text", "--task-dir", str(tasks)]
    argv += ["--out", str(out), "--device", "cpu", "--threads", "1", "--bootstrap-iters", "0"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert list(report["tasks"]) == list(TASKS)
    suite = {t.name: t.metric for t in load_suites()["text"].tasks}
    for name, task in report["tasks"].items():
        assert task["headline"]["metric"] == suite[name]
        assert task["samples"]["effective"] == len(_rows(tasks, name))
    assert report["tasks"]["text_continuation"]["output_type"] == "multiple_choice"
    assert report["tasks"]["text_perplexity"]["headline"]["value"] > 1
    text = report["suites"]["text"]
    assert text["averaged"] == ["text_cloze", "text_continuation"]
    accuracies = [report["tasks"][t]["headline"]["value"] for t in text["averaged"]]
    assert text["average"] == pytest.approx(sum(accuracies) / 2)
