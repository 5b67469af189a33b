"""Fixtures for the evaluation tests: a tiny random Llama, a locally trained tokenizer, and toy
lm-eval tasks over local JSONL with the embedded tasks' names and output types. No downloads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

NOUNS = ["cat", "dog", "bird", "fish", "horse", "mouse", "lion", "bear"]
VERBS = ["sees", "likes", "chases", "finds", "eats", "hears"]
PLACES = ["in the park", "by the river", "at home", "on the hill", "near the farm"]

EMBEDDED_TASKS = [
    "embedded_cloze",
    "embedded_continuation",
    "embedded_choice2",
    "embedded_qa",
    "embedded_perplexity",
]


def _sentence(rng: random.Random) -> str:
    a, b = rng.sample(NOUNS, 2)
    return f"the {a} {rng.choice(VERBS)} the {b} {rng.choice(PLACES)} ."


def corpus(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the toy corpus: every string encodes, nothing is unknown."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=256,
    )


def make_model(
    tokenizer: PreTrainedTokenizerFast, layers: int = 2, seed: int = 0
) -> LlamaForCausalLM:
    """A tiny random LlamaForCausalLM over ``tokenizer``'s vocabulary."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """Save a tiny random LlamaForCausalLM and its tokenizer as one save_pretrained directory."""
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _task_yaml(name: str, data: Path, body: str) -> str:
    return (
        f"task: {name}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {data}\n"
        "test_split: test\n"
        f"{body}"
        "metadata:\n  version: 1.0\n"
    )


def make_embedded_tasks(task_dir: Path, n: int = 6, seed: int = 1) -> Path:
    """Write toy tasks named like the embedded default's, one output type each as there."""
    rng = random.Random(seed)
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "data"

    cloze = []
    for _ in range(n):
        words = _sentence(rng).split()
        cloze.append({"context": " ".join(words[:4]), "target": " " + words[4]})
    continuation, choice2, qa = [], [], []
    for _ in range(n):
        endings = [" " + place + " ." for place in rng.sample(PLACES, 3)]
        continuation.append(
            {"context": f"the {rng.choice(NOUNS)} runs", "choices": endings, "label": 1}
        )
        a, b = rng.sample(NOUNS, 2)
        choice2.append({"sentence": f"the {a} {rng.choice(VERBS)} the", "options": [a, b]})
        qa.append(
            {
                "question": f"what does the {a} see ?",
                "choices": [f"the {x}" for x in rng.sample(NOUNS, 4)],
                "label": rng.randrange(4),
            }
        )
    texts = [{"text": " ".join(_sentence(rng) for _ in range(4))} for _ in range(n)]
    for name, rows in [
        ("cloze", cloze),
        ("continuation", continuation),
        ("choice2", choice2),
        ("qa", qa),
        ("perplexity", texts),
    ]:
        _write_jsonl(data / f"{name}.jsonl", rows)

    yamls = {
        "embedded_cloze": (
            "output_type: loglikelihood\n"
            'doc_to_text: "{{context}}"\n'
            'doc_to_target: "{{target}}"\n'
            "metric_list:\n"
            "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        ),
        "embedded_continuation": (
            "output_type: multiple_choice\n"
            'doc_to_text: "{{context}}"\n'
            'target_delimiter: ""\n'
            "doc_to_choice: choices\n"
            "doc_to_target: label\n"
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        ),
        "embedded_choice2": (
            "output_type: multiple_choice\n"
            'doc_to_text: "{{sentence}}"\n'
            "doc_to_choice: options\n"
            "doc_to_target: 0\n"
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        ),
        "embedded_qa": (
            "output_type: multiple_choice\n"
            'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
            "doc_to_choice: choices\n"
            "doc_to_target: label\n"
            "metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        ),
        "embedded_perplexity": (
            "output_type: loglikelihood_rolling\n"
            'doc_to_text: ""\n'
            'doc_to_target: "{{text}}"\n'
            "metric_list:\n"
            "  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"
        ),
    }
    for name, body in yamls.items():
        short = name.removeprefix("embedded_")
        (task_dir / f"{name}.yaml").write_text(
            _task_yaml(name, (data / f"{short}.jsonl").resolve(), body)
        )
    (task_dir / "embedded.yaml").write_text(
        "group: embedded\ntask:\n" + "".join(f"  - {t}\n" for t in EMBEDDED_TASKS)
    )
    return task_dir


def make_paper_data(root: Path) -> Path:
    """Three rows of each paper task in its hub dataset's schema, laid out for --paper-data."""
    rows: dict[str, list[dict]] = {
        "lambada_openai": [
            {"text": "the cat sees the dog in the park and the dog sees the cat"},
            {"text": "the bird flies over the river and lands by the river"},
            {"text": "a horse runs on the hill and the mouse hides in the hill"},
        ],
        "piqa": [
            {"goal": "To dry a cat,", "sol1": "use a towel.", "sol2": "use a river.", "label": 0},
            {"goal": "To see at night,", "sol1": "shut eyes.", "sol2": "use a lamp.", "label": 1},
            {"goal": "To open a door,", "sol1": "turn a handle.", "sol2": "eat a key.", "label": 0},
        ],
        "winogrande": [
            {
                "sentence": f"The {a} chased the {b} because _ was hungry.",
                "option1": a,
                "option2": b,
                "answer": answer,
            }
            for a, b, answer in [("cat", "mouse", "1"), ("dog", "bird", "2"), ("lion", "bear", "1")]
        ],
        "hellaswag": [
            {
                "ind": i,
                "activity_label": "Walking the dog",
                "ctx_a": "A man walks a dog in the park.",
                "ctx_b": "the dog",
                "ctx": "A man walks a dog in the park. the dog",
                "endings": ["runs after a ball.", "sings a song.", "reads a book.", "flies away."],
                "source_id": "toy",
                "split": "val",
                "split_type": "indomain",
                "label": str(i % 4),
            }
            for i in range(3)
        ],
    }
    arc = [
        {
            "id": f"q{i}",
            "question": f"Which animal says {sound}?",
            "choices": {"text": ["cat", "dog", "cow", "duck"], "label": ["A", "B", "C", "D"]},
            "answerKey": key,
        }
        for i, (sound, key) in enumerate([("meow", "A"), ("woof", "B"), ("moo", "C")])
    ]
    rows["arc_easy"] = rows["arc_challenge"] = arc
    rows["openbookqa"] = [
        {
            "id": r["id"],
            "question_stem": r["question"],
            "choices": r["choices"],
            "answerKey": r["answerKey"],
            "fact1": "animals make sounds",
        }
        for r in arc
    ]
    on_test = {"lambada_openai", "arc_easy", "arc_challenge", "openbookqa"}
    for task, task_rows in rows.items():
        split = "test" if task in on_test else "validation"
        _write_jsonl(root / task / f"{split}.jsonl", task_rows)
    _write_jsonl(root / "piqa" / "train.jsonl", rows["piqa"])
    return root
