"""The embedded tokenizer: byte-level BPE that AutoTokenizer loads, with BOS/EOS/PAD set."""

from __future__ import annotations

import pytest
from _embedded import TOKENIZER, corpus
from transformers import AutoTokenizer

from rrt.cli import main
from rrt.errors import UserError
from rrt.stories.tokenizer import EOS, PAD, TokenizerConfig, build_tokenizer, train_tokenizer
from rrt.training.data import read_texts


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return corpus(tmp_path_factory.mktemp("tok"))


def test_autotokenizer_loads_it_with_bos_eos_and_pad(corpus_dir, tmp_path):
    assert main(["tokenizer", "--corpus", str(corpus_dir), "--out", str(tmp_path / "t"),
                 "--vocab-size", str(TOKENIZER.vocab_size)]) == 0  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    assert tok.bos_token == tok.eos_token == EOS
    assert tok.pad_token == PAD and tok.pad_token_id != tok.eos_token_id
    assert len(tok) == TOKENIZER.vocab_size
    assert tok.model_max_length == TOKENIZER.model_max_length


def test_encoding_adds_no_special_tokens_and_round_trips(corpus_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(build_tokenizer(corpus_dir, tmp_path / "t", TOKENIZER)))
    text = next(read_texts(corpus_dir, "test"))
    ids = tok(text)["input_ids"]
    assert tok.eos_token_id not in ids and tok.pad_token_id not in ids
    assert tok.decode(ids) == text
    # Byte-level: any text, even outside the corpus's alphabet, round-trips.
    assert tok.decode(tok("Zoë's café: 42%")["input_ids"]) == "Zoë's café: 42%"
    assert len(ids) < len(text) / 2  # merges were learned


def test_same_corpus_gives_an_identical_tokenizer(corpus_dir, tmp_path):
    a = build_tokenizer(corpus_dir, tmp_path / "a", TOKENIZER)
    b = build_tokenizer(corpus_dir, tmp_path / "b", TOKENIZER)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_a_vocabulary_smaller_than_the_bytes_is_a_user_error():
    with pytest.raises(
        UserError, match="tokenizer.vocab_size: 100 is less than the minimum of 258"
    ):
        train_tokenizer(iter(["a b c"]), TokenizerConfig(vocab_size=100))


def test_tokenizer_cli_names_a_missing_corpus_in_one_line(tmp_path, capsys):
    assert (
        main(["tokenizer", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "nope" in err and "\n" not in err
