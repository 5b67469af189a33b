"""The embedded default's tokenizer: byte-level BPE trained on the corpus's train split.

Why: the source model needs a vocabulary of its own (no hub download), small enough that the
embedding does not dominate a small model, and saved in the standard Hugging Face format so
``AutoTokenizer.from_pretrained`` (and lm-eval) load it like any hub tokenizer.

One special token, ``<|endoftext|>``, separates documents and serves as BOS and EOS (as in
GPT-2): pretraining puts it before every document, and lm-eval's rolling perplexity puts the
BOS token before every document too, so both see documents the same way. Padding gets its own
token. No post-processor adds special tokens, so ``encode`` returns the text's tokens only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rrt.config import section
from rrt.io import atomic_path
from rrt.training.data import read_meta, read_texts

EOS = "<|endoftext|>"
PAD = "<|pad|>"
MIN_VOCAB = 256 + 2  # every byte, plus the special tokens


@section("tokenizer")
class TokenizerConfig:
    """The BPE's size and context (``tokenizer`` in the config schema)."""

    vocab_size: int
    model_max_length: int


def train_tokenizer(
    texts: Iterator[str], config: TokenizerConfig, length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts`` (deterministic: the BPE trainer breaks ties by order)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=None,
        model_max_length=config.model_max_length,
        clean_up_tokenization_spaces=False,
    )


def build_tokenizer(corpus: str | Path, out: str | Path, config: TokenizerConfig) -> Path:
    """Train on ``corpus``'s train split and save to ``out`` (atomically) with save_pretrained."""
    meta = read_meta(corpus)
    tokenizer = train_tokenizer(
        read_texts(corpus, "train"), config, length=meta["splits"]["train"]["documents"]
    )
    with atomic_path(out) as tmp:
        tokenizer.save_pretrained(tmp)
    return Path(out)
