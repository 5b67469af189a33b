"""A folder that is not a model the workflow can read is one line naming it, before any work."""

from __future__ import annotations

import json

import pytest

from rrt.cli import main

LLAMA = {
    "model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 100,
}  # fmt: skip


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (json.dumps(LLAMA), "holds a config.json but no weights (model.safetensors or"),
        ('{"model_type": "wibble"}', "model_type 'wibble' is not one this transformers knows"),
        ('{"model_type": ', "config.json is not valid JSON (Expecting value"),
        ('{"hidden_size": 64}', "config.json names no model_type"),
        ('["llama"]', "config.json names no model_type"),
    ],
    ids=["no weights", "unknown model_type", "malformed JSON", "no model_type", "not an object"],
)
def test_a_folder_that_is_not_a_model_is_one_line(tmp_path, capsys, config, message):
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(config)
    argv = ["convert", "--source", str(source), "--loops", "2", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rrt convert: error: ") and message in err
    assert str(source) in err and not (tmp_path / "out").exists()
