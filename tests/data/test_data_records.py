"""Input formats: text, LWM vision+text templates, bad records, tokenizing into a store."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lwm.config.data import DataConfig, FieldSegment
from lwm.data.records import (
    BadRecordError,
    BadRecordReport,
    ExampleEncoder,
    iter_examples,
    tokenize_to_store,
)
from lwm.data.store import TokenStore, TokenStoreWriter


def write_jsonl(path, lines) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return str(path)


def test_text_record_gets_bos_and_eos(tokenizer):
    encoder = ExampleEncoder(DataConfig(text_field="body"), tokenizer)
    example = encoder({"body": "hi!"})
    assert tokenizer.decode(example.tokens) == "<s>hi!</s>"
    # bos predicts nothing and carries no loss; the text and eos do.
    assert example.loss_mask.tolist() == [False, True, True, True, True]
    assert not example.is_vision.any()


def test_lwm_vision_template(tokenizer, small_vision_config):
    encoder = ExampleEncoder(small_vision_config, tokenizer)
    codes = list(range(8))  # two frames of 4 codes
    example = encoder({"vision": codes, "caption": "ok"})
    assert tokenizer.decode(example.tokens, example.is_vision) == (
        "<s><vision><v0><v1><v2><v3><v16><v4><v5><v6><v7><v17></vision>ok</s>")
    # <vision> and </vision> are text tokens; codes, <eof> and <eov> are vision tokens.
    assert example.is_vision.tolist() == [False, False] + [True] * 10 + [False] * 4
    # "[vision]" carries no loss; the caption and eos do.
    assert example.loss_mask.tolist() == [False] * 13 + [True] * 3


def test_typed_segments_equal_the_template(tokenizer, small_vision_config):
    typed = dataclasses.replace(small_vision_config, fields="", segments=(
        FieldSegment(field="vision", loss=False, kind="vision"), FieldSegment(field="caption")))
    record = {"vision": list(range(4)), "caption": "a cat"}
    first = ExampleEncoder(small_vision_config, tokenizer)(record)
    second = ExampleEncoder(typed, tokenizer)(record)
    for name in ("tokens", "is_vision", "loss_mask"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_subfields_special_tokens_and_pretokenized(tokenizer):
    config = DataConfig(fields="[title+body],<|eos|>,answer", add_bos=False, add_eos=False,
                        subfield_separator="|")
    example = ExampleEncoder(config, tokenizer)({"title": "T", "body": "B", "answer": [7, 8]})
    assert example.tokens.tolist() == tokenizer.encode("T|B") + [2, 7, 8]
    assert example.loss_mask.tolist() == [False, False, False, True, True, True]


BAD_CASES = [
    ('{"text": "unterminated', "malformed_json", "not valid JSON"),
    ('["a list"]', "not_an_object", "JSON object"),
    ('{"caption": "x"}', "missing_field", "'vision' is missing"),
    ('{"vision": [0, 1, 2, 99], "caption": "x"}', "token_out_of_range", "VQ code 99"),
    ('{"vision": [0, 1, 2], "caption": "x"}', "partial_frame", "3 codes"),
    ('{"vision": [], "caption": "x"}', "empty_vision", "no codes"),
    ('{"vision": [0, 1, 2, 3], "caption": [5, 999]}', "token_out_of_range", "token id 999"),
    ('{"vision": [0, 1, 2, 3], "caption": 12}', "wrong_type", "expected a string"),
    ('{"vision": "0 1 2 3", "caption": "x"}', "wrong_type", "flat list"),
]


@pytest.mark.parametrize("line,reason,message", BAD_CASES)
def test_bad_record_errors_name_file_line_and_reason(tmp_path, tokenizer, small_vision_config,
                                                     line, reason, message):
    path = write_jsonl(tmp_path / "in.jsonl", [{"vision": [0, 1, 2, 3], "caption": "fine"}, line])
    encoder = ExampleEncoder(small_vision_config, tokenizer)
    with pytest.raises(BadRecordError) as caught:
        list(iter_examples([path], encoder))
    error = caught.value
    assert (error.path, error.line, error.reason) == (path, 2, reason)
    assert f"{path}:2:" in str(error) and message in str(error)


def test_empty_text_example(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": ""}])
    with pytest.raises(BadRecordError, match="no tokens") as caught:
        list(iter_examples([path], ExampleEncoder(DataConfig(), tokenizer)))
    assert caught.value.reason == "empty_example"


def test_skip_policy_counts_and_lists_bad_records(tmp_path, tokenizer, small_vision_config):
    good = {"vision": [0, 1, 2, 3], "caption": "fine"}
    lines = [good] + [line for line, _, _ in BAD_CASES] + ["", good]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    report = BadRecordReport(max_examples=1)
    results = list(iter_examples([path], ExampleEncoder(small_vision_config, tokenizer),
                                 on_bad_record="skip", report=report))
    assert [line for _, line, _ in results] == [1, len(lines)]  # the blank line is no record
    assert report.skipped == len(BAD_CASES) and report.records_read == len(BAD_CASES) + 2
    assert report.counts["token_out_of_range"] == 2 and report.counts["wrong_type"] == 2
    assert len(report.examples["token_out_of_range"]) == 1  # only the first few are listed
    assert report.examples["partial_frame"] == [f"{path}:6: field 'vision' holds 3 codes, not a "
                                                f"whole number of frames of 4 (data.tokens_per_frame)"]
    assert "partial_frame: 1" in report.summary()


def test_tokenize_to_store_resumes_after_a_crash(tmp_path, tokenizer, monkeypatch):
    lines = [{"text": f"record number {i} " * (1 + i % 3)} for i in range(30)]
    lines[7] = {"txt": "wrong field"}
    first = write_jsonl(tmp_path / "a.jsonl", lines[:15])
    second = write_jsonl(tmp_path / "b.jsonl", lines[15:])
    config = DataConfig(paths=(first, second), store_path=str(tmp_path / "clean"),
                        on_bad_record="skip")
    clean_report = tokenize_to_store(config, tokenizer, show_progress=False, flush_tokens=200)
    assert clean_report.skipped == 1 and clean_report.counts == {"missing_field": 1}
    clean = TokenStore(tmp_path / "clean")
    assert len(clean) == 29 and clean.metadata["bad_records"]["skipped"] == 1

    crashed = str(tmp_path / "crashed")
    original_commit, calls = TokenStoreWriter._commit, []

    def failing_commit(self):
        calls.append(1)
        if len(calls) == 4:  # the process dies while committing the third shard
            raise KeyboardInterrupt("simulated crash")
        original_commit(self)

    monkeypatch.setattr(TokenStoreWriter, "_commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_store(config, tokenizer, store_path=crashed, show_progress=False, flush_tokens=200)
    monkeypatch.setattr(TokenStoreWriter, "_commit", original_commit)
    partial = TokenStore(crashed)
    assert 0 < len(partial) < 29
    report = tokenize_to_store(config, tokenizer, store_path=crashed, show_progress=False,
                               flush_tokens=200)
    assert report.to_dict() == clean_report.to_dict()
    resumed = TokenStore(crashed)
    assert len(resumed) == 29
    for index in range(29):
        np.testing.assert_array_equal(resumed[index].tokens, clean[index].tokens)
        np.testing.assert_array_equal(resumed[index].loss_mask, clean[index].loss_mask)
    # A finished store is left alone by a rerun.
    assert tokenize_to_store(config, tokenizer, store_path=crashed,
                             show_progress=False).to_dict() == clean_report.to_dict()
    assert len(TokenStore(crashed)) == 29


def test_missing_vocab_size_is_a_config_error(tokenizer):
    from lwm.config import ConfigError

    class NoVocab:
        bos_id, eos_id, vision_start_id, vision_end_id = 1, 2, 3, 4

        def encode(self, text):
            return [5]

    with pytest.raises(ConfigError, match="text_vocab_size"):
        ExampleEncoder(DataConfig(), NoVocab())
    assert ExampleEncoder(DataConfig(text_vocab_size=10), NoVocab())({"text": "x"}).tokens.tolist() == [1, 5, 2]
