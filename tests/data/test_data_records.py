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


def test_both_directions_make_two_examples_per_record(tokenizer, small_vision_config):
    from lwm.data.records import mirrored_segments, render_template

    segments = small_vision_config.resolved_segments()
    mirror = mirrored_segments(segments)
    assert render_template(mirror) == "[caption],vision"
    assert render_template(mirrored_segments(mirror)) == "[vision],caption"
    encoder = ExampleEncoder(small_vision_config, tokenizer, (segments, mirror))
    to_caption, to_video = encoder.encode_all({"vision": list(range(4)), "caption": "ok"})
    assert tokenizer.decode(to_video.tokens, to_video.is_vision) == (
        "<s>ok<vision><v0><v1><v2><v3><v17></vision></s>")
    # LWM's template rules: the bracketed caption carries no loss, the video and eos do.
    assert to_video.loss_mask.tolist() == [False] * 3 + [True] * 8
    assert to_caption.loss_mask.tolist() == [False] * 8 + [True] * 3
    # A record bad for one template is bad as a whole.
    from lwm.data.records import RecordProblem

    with pytest.raises(RecordProblem, match="caption"):
        encoder.encode_all({"vision": list(range(4))})


def test_two_examples_per_record_survive_a_crash_whole(tmp_path, tokenizer, small_vision_config,
                                                        monkeypatch):
    from lwm.data.records import mirrored_segments

    lines = [{"vision": list(range(4 * (1 + i % 2))), "caption": f"clip {i}"} for i in range(12)]
    path = write_jsonl(tmp_path / "codes.jsonl", lines)
    config = dataclasses.replace(small_vision_config, paths=(path,))
    segments = config.resolved_segments()
    sets = (segments, mirrored_segments(segments))
    clean = tokenize_to_store(config, tokenizer, store_path=tmp_path / "clean", show_progress=False,
                              flush_tokens=50, segment_sets=sets)
    assert clean.records_read == 12 and len(TokenStore(tmp_path / "clean")) == 24
    original_commit, calls = TokenStoreWriter._commit, []

    def failing_commit(self):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash")
        original_commit(self)

    monkeypatch.setattr(TokenStoreWriter, "_commit", failing_commit)
    with pytest.raises(KeyboardInterrupt):
        tokenize_to_store(config, tokenizer, store_path=tmp_path / "crashed", show_progress=False,
                          flush_tokens=50, segment_sets=sets)
    monkeypatch.setattr(TokenStoreWriter, "_commit", original_commit)
    assert len(TokenStore(tmp_path / "crashed")) % 2 == 0  # never half a record
    tokenize_to_store(config, tokenizer, store_path=tmp_path / "crashed", show_progress=False,
                      flush_tokens=50, segment_sets=sets)
    resumed, expected = TokenStore(tmp_path / "crashed"), TokenStore(tmp_path / "clean")
    assert len(resumed) == 24
    for index in range(24):
        np.testing.assert_array_equal(resumed[index].tokens, expected[index].tokens)
    assert expected.metadata["templates"] == ["[vision],caption", "[caption],vision"]
    resumed.verify()


def test_adding_to_a_store_of_other_vocabularies_or_paths_is_refused(tmp_path, tokenizer,
                                                                      small_vision_config):
    from lwm.config.vision import VisionVocab
    from lwm.data.store import StoreError

    path = write_jsonl(tmp_path / "codes.jsonl", [{"vision": [1, 2, 3, 4], "caption": "a"}])
    config = dataclasses.replace(small_vision_config, paths=(path,), store_path=str(tmp_path / "store"))
    tokenize_to_store(config, tokenizer, show_progress=False)
    before = (tmp_path / "store" / "store.json").read_text()
    bigger = dataclasses.replace(config, vision=VisionVocab(codebook_size=32, tokens_per_frame=4))
    with pytest.raises(StoreError, match=r"holds codebook_size=16 but this run gives 32"):
        tokenize_to_store(bigger, tokenizer, show_progress=False)
    assert (tmp_path / "store" / "store.json").read_text() == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is an existing file"):
        tokenize_to_store(config, tokenizer, store_path=tmp_path / "file", overwrite=True,
                          show_progress=False)
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a token store"):
        tokenize_to_store(config, tokenizer, store_path=tmp_path / "other", show_progress=False)
    (tmp_path / "empty").mkdir()
    tokenize_to_store(config, tokenizer, store_path=tmp_path / "empty", show_progress=False)
    assert len(TokenStore(tmp_path / "empty")) == 1


def test_bad_json_lines_are_skipped_and_counted(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "one"}, "{broken", {"text": "two"}, "[1, 2]"])
    config = DataConfig(paths=(path,), store_path=str(tmp_path / "store"), on_bad_record="skip")
    report = tokenize_to_store(config, tokenizer, show_progress=False)
    assert report.counts == {"malformed_json": 1, "not_an_object": 1}
    assert report.examples["malformed_json"] == [f"{path}:2: not valid JSON: Expecting property "
                                                 f"name enclosed in double quotes at column 2"]
    assert len(TokenStore(tmp_path / "store")) == 2
    with pytest.raises(BadRecordError, match=r"a.jsonl:2: .*\[malformed_json\]"):
        tokenize_to_store(dataclasses.replace(config, on_bad_record="error"), tokenizer,
                          store_path=tmp_path / "strict", show_progress=False)


def test_bad_record_error_survives_a_worker_process(tmp_path):
    import pickle

    error = pickle.loads(pickle.dumps(BadRecordError(tmp_path / "a.jsonl", 3, "malformed_json", "not JSON")))
    assert str(error) == f"{tmp_path / 'a.jsonl'}:3: not JSON [malformed_json]"
    assert (error.line, error.reason, error.detail) == (3, "malformed_json", "not JSON")
