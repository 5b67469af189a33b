"""The embedded lm-eval tasks: deterministic, answerable from the story, offline from any cwd."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from _embedded import CORPUS, SHAPE, corpus, tokenizer

from rrt.cli import main
from rrt.errors import UserError
from rrt.stories.baseline import NgramLM, evaluate, headline
from rrt.stories.corpus import held_out_stories, question_prompt
from rrt.stories.tasks import CHANCE, EMBEDDED, GROUP, TASKS, TasksConfig, write_tasks
from rrt.training.data import read_texts
from rrt.training.pretrain import llama_config

SMALL = TasksConfig(seed=0, items=60, perplexity_documents=20, max_tokens=256)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    corpus_dir = corpus(root, replace(CORPUS, test_documents=500))
    tok_dir = tokenizer(corpus_dir, root)
    tasks_dir = root / "tasks"
    write_tasks(EMBEDDED, corpus_dir, tasks_dir, replace(SMALL, items=300), tok_dir)
    return {"corpus": corpus_dir, "tokenizer": tok_dir, "tasks": tasks_dir}


def _rows(folder: Path, task: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]


def test_same_seed_gives_byte_identical_task_files(data, tmp_path):
    write_tasks(EMBEDDED, data["corpus"], tmp_path / "a", SMALL)
    write_tasks(EMBEDDED, data["corpus"], tmp_path / "b", SMALL)
    first = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    write_tasks(EMBEDDED, data["corpus"], tmp_path / "a", SMALL)  # again, into the same folder
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == first
    for name, content in first.items():
        other = (tmp_path / "b" / name).read_bytes()
        # Only the absolute data paths written into the YAMLs differ between folders.
        assert content.replace(str(tmp_path / "a").encode(), b"DIR") == other.replace(
            str(tmp_path / "b").encode(), b"DIR"
        )
    write_tasks(EMBEDDED, data["corpus"], tmp_path / "c", replace(SMALL, seed=1))
    assert (tmp_path / "c" / "embedded_qa.jsonl").read_bytes() != first["embedded_qa.jsonl"]


def test_yamls_name_every_task_with_absolute_data_paths_and_versions(data):
    group = yaml.safe_load((data["tasks"] / f"{GROUP}.yaml").read_text())
    assert group["group"] == GROUP and group["task"] == list(TASKS)
    for task in TASKS:
        spec = yaml.safe_load((data["tasks"] / f"{task}.yaml").read_text())
        path = Path(spec["dataset_kwargs"]["data_files"]["test"])
        assert spec["task"] == task and path.is_absolute() and path.is_file()
        assert "version" in spec["metadata"]


def test_right_answers_continue_the_story_and_wrong_ones_do_not(data):
    docs = list(read_texts(data["corpus"], "test"))
    cloze = _rows(data["tasks"], "embedded_cloze")
    for row in cloze:
        assert docs[row["story"]].startswith(row["context"] + row["target"])
    for task in ("embedded_continuation", "embedded_choice2"):
        for row in _rows(data["tasks"], task):
            doc = docs[row["story"]]
            for i, choice in enumerate(row["choices"]):
                # Right: the story itself; wrong: a fluent ending that contradicts it.
                assert doc.startswith(row["context"] + choice) == (i == row["gold"]), row
    stories = held_out_stories(replace(CORPUS, test_documents=500), "test")
    for row in _rows(data["tasks"], "embedded_qa"):
        story = stories[row["story"]]
        assert row["context"].startswith(story.body + "\n\nQuestion: ")
        asked = [q for q in story.questions if row["context"].endswith(question_prompt(q))]
        assert len(set(row["choices"])) == 4
        assert row["choices"][row["gold"]] == " " + asked[0].answer
    counts = {t: len(_rows(data["tasks"], t)) for t in TASKS}
    assert counts == {**dict.fromkeys(TASKS[:4], 300), "embedded_perplexity": 20}


def test_every_kind_of_tracked_state_is_asked(data):
    kinds = {t: {r["kind"] for r in _rows(data["tasks"], t)} for t in TASKS[:4]}
    assert kinds["embedded_cloze"] == {"place", "count", "name", "item", "container"}
    assert "pronoun" in kinds["embedded_choice2"]
    assert kinds["embedded_qa"] == {"place", "count", "name", "item"}


def test_lm_eval_runs_every_task_offline_from_any_working_directory(data, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM
    from transformers import LlamaForCausalLM, set_seed

    from rrt.store import load_tokenizer

    tasks_dir = tmp_path / "tasks"
    config = replace(SMALL, items=8, perplexity_documents=4)
    write_tasks(EMBEDDED, data["corpus"], tasks_dir, config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tok = load_tokenizer(data["tokenizer"])
    set_seed(0)
    model = LlamaForCausalLM(llama_config(SHAPE, tok, 256)).eval()
    results = evaluate(HFLM(pretrained=model, tokenizer=tok, batch_size=8), tasks_dir)
    scores = headline(results)
    assert set(scores) == set(TASKS)
    assert all(0 <= scores[t] <= 1 for t in TASKS[:4]) and scores["embedded_perplexity"] > 1
    assert "perplexity,none" in results["embedded_cloze"]


def test_unigram_and_bigram_baselines_score_near_chance(data):
    texts = list(read_texts(data["corpus"], "train"))
    for order in (1, 2):
        scores = headline(evaluate(NgramLM(texts, order), data["tasks"], list(TASKS[:4])))
        assert scores["embedded_cloze"] < 0.15, (order, scores)
        for task in TASKS[1:4]:
            assert scores[task] < CHANCE[task] + 0.12, (order, task, scores)


def test_tasks_refuse_a_corpus_whose_test_split_was_edited(data, tmp_path):
    edited = tmp_path / "corpus"
    edited.mkdir()
    for p in data["corpus"].iterdir():
        if p.suffix in (".json", ".jsonl"):
            (edited / p.name).write_bytes(p.read_bytes())
    lines = (edited / "test.jsonl").read_text().splitlines()
    lines[0] = json.dumps({"text": "Someone else's story."})
    (edited / "test.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="does not match"):
        write_tasks(EMBEDDED, edited, tmp_path / "t", SMALL)


def test_tasks_cli_writes_the_group_and_names_bad_values(data, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tasks", "--corpus", str(data["corpus"]), "--out", str(out), "--items", "5"]) == 0
    assert (out / f"{GROUP}.yaml").is_file()
    assert main(["tasks", "--corpus", str(data["corpus"]), "--out", str(out), "--items", "0"]) == 2
    assert "tasks.items: 0 is less than the minimum of 1" in capsys.readouterr().err
