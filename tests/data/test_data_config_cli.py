"""DataConfig validation, the example configs, and the make-qa / inspect-store commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lwm.cli import data as data_cli
from lwm.config import ConfigError, load_config
from lwm.config.data import DataConfig, FieldSegment, MakeQAConfig, parse_field_template
from lwm.data.store import TokenExample, TokenStoreWriter

REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class DataRoot:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)


def test_field_template_parsing():
    assert parse_field_template("[vision],caption") == (
        FieldSegment("vision", False, "vision"), FieldSegment("caption", True, "text"))
    assert parse_field_template("<|bos|>,[q+context], answer ,<|eos|>") == (
        FieldSegment("<|bos|>", True), FieldSegment("q+context", False), FieldSegment("answer"),
        FieldSegment("<|eos|>"))
    assert parse_field_template("[frames]", vision_field="frames")[0].kind == "vision"
    for bad in ("a,,b", "[a", "[]", "a+"):
        with pytest.raises(ConfigError, match="data"):
            parse_field_template(bad)


@pytest.mark.parametrize("overrides,message", [
    (["--data.seq_len", "1"], "seq_len=1"),
    (["--data.batch_size", "0"], "batch_size=0 must be positive"),
    (["--data.fields", "[vision],caption"], "use data.format=vision_text"),
    (["--data.format", "vision_text"], "needs data.fields"),
    (["--data.num_epochs", "0"], "num_epochs=0"),
    (["--data.overlong", "truncate"], "overlong"),
    (["--data.on_bad_record", "ignore"], "on_bad_record"),
    (["--data.chat.assistant_prefix", "' '"], "assistant_prefix is empty"),
    (["--data.chat.system", " "], "data.chat.system=None must be a string"),
])
def test_validation_names_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DataRoot, None, overrides)


def test_both_template_forms_refused_together(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"format": "vision_text", "fields": "[vision],text",
                                             "segments": [{"field": "text"}]}}))
    with pytest.raises(ConfigError, match="both set"):
        load_config(DataRoot, path)


def test_example_configs_load():
    for name in ("text", "vision_text", "chat"):
        config = load_config(DataRoot, REPO / "configs" / "data" / f"{name}.yaml").data
        assert config.format == name
    assert load_config(DataRoot, REPO / "configs/data/vision_text.yaml").data.resolved_segments()[0].kind == "vision"
    qa = load_config(MakeQAConfig, REPO / "configs" / "data" / "make_qa.yaml")
    assert qa.qa.target_lengths == (8192, 32768) and qa.data.format == "chat"
    # The data sections of the project's run configs decode as DataConfig too (the VQ and
    # World Models roots have data sections of their own kinds).
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if path.parent.name in ("vq", "worldmodels"):
            continue
        section = (yaml.safe_load(path.read_text()) or {}).get("data")
        if section is not None:
            load_config(DataRoot, None, [f"--data.{k}={json.dumps(v)}" for k, v in section.items()
                                         if not isinstance(v, dict)])


def parser():
    top = argparse.ArgumentParser()
    data_cli.register(top.add_subparsers(dest="command"))
    return top


def test_make_qa_command(tmp_path, tokenizer, monkeypatch, capsys):
    monkeypatch.setattr(data_cli, "load_text_tokenizer", lambda config: tokenizer)
    documents = tmp_path / "docs.jsonl"
    text = " ".join(f"Line {i} of the story." for i in range(200))
    documents.write_text(json.dumps({"text": text}) + "\n")
    output = tmp_path / "qa.jsonl"
    args, rest = parser().parse_known_args(
        ["make-qa", "--qa.input", str(documents), "--qa.output", str(output),
         "--qa.chunk_tokens", "300", "--qa.target_lengths", "[1200]", "--data.tokenizer", "bytes",
         "--data.text_vocab_size", "261"])
    assert args.func(args, rest) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records and all(r["num_tokens"] <= 1200 for r in records)
    assert "examples: {1200:" in capsys.readouterr().out


def test_make_qa_with_the_projects_tokenizer(tmp_path):
    documents = tmp_path / "docs.jsonl"
    text = " ".join(f"Line {i} of the story is about a quiet harbor." for i in range(120))
    documents.write_text(json.dumps({"text": text}) + "\n")
    output = tmp_path / "qa.jsonl"
    args, rest = parser().parse_known_args(
        ["make-qa", "--qa.input", str(documents), "--qa.output", str(output),
         "--qa.chunk_tokens", "200", "--qa.target_lengths", "[900]"])
    assert args.func(args, rest) == 0
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records and all(450 <= r["num_tokens"] <= 900 for r in records)


def test_inspect_store_command(tmp_path, capsys):
    with TokenStoreWriter.create(tmp_path / "s", tokenizer_name="bytes", text_vocab_size=261) as w:
        w.append(TokenExample.make([1, 2, 3], [False, True, False]))
        w.append(TokenExample.make([4, 5]))
    args = parser().parse_args(["inspect-store", str(tmp_path / "s"), "--show", "1"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "num_examples: 2" in out and "num_tokens: 5" in out and "tokenizer: bytes" in out
    assert "example 0: 3 tokens, 1 vision" in out
    args = parser().parse_args(["inspect-store", str(tmp_path / "s"), "--json"])
    args.func(args)
    assert json.loads(capsys.readouterr().out)["length_max"] == 3
