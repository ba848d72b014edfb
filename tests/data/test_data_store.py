"""Token store: round trip, random access, crash safety and resuming a writer."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from lwm.data.store import (
    METADATA_FILE,
    StoreError,
    TokenExample,
    TokenStore,
    TokenStoreWriter,
)


def make_examples(count: int, seed: int = 0) -> list[TokenExample]:
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        length = int(rng.integers(1, 50))
        examples.append(TokenExample.make(rng.integers(0, 1000, length), rng.random(length) < 0.3,
                                          rng.random(length) < 0.8))
    return examples


def assert_same(first: TokenExample, second: TokenExample) -> None:
    np.testing.assert_array_equal(first.tokens, second.tokens)
    np.testing.assert_array_equal(first.is_vision, second.is_vision)
    np.testing.assert_array_equal(first.loss_mask, second.loss_mask)
    assert first.tokens.dtype == np.int32 and first.is_vision.dtype == bool


def create(path, **kwargs) -> TokenStoreWriter:
    return TokenStoreWriter.create(path, tokenizer_name="bytes", text_vocab_size=1000,
                                   vision_vocab_size=18, chunk_tokens=64, **kwargs)


def test_round_trip_with_several_shards(tmp_path):
    examples = make_examples(40)
    with create(tmp_path / "store", flush_tokens=100, metadata={"source": "unit"}) as writer:
        for example in examples:
            writer.append(example)
    store = TokenStore(tmp_path / "store")
    assert len(store) == 40
    assert store.num_tokens == sum(len(e) for e in examples)
    assert store.metadata["tokenizer"] == "bytes" and store.metadata["source"] == "unit"
    assert store.metadata["vision_vocab_size"] == 18
    assert store.metadata["num_vision_tokens"] == sum(int(e.is_vision.sum()) for e in examples)
    np.testing.assert_array_equal(store.lengths, [len(e) for e in examples])
    for index in (0, 17, 39, -1):
        assert_same(store[index], examples[index])
    order = [5, 3, 39, 0, 5]
    for got, index in zip(store.read_many(order), order):
        assert_same(got, examples[index])
    with pytest.raises(IndexError, match="out of range"):
        store[40]
    assert [len(e) for e in store] == [len(e) for e in examples]


def test_uncommitted_shard_is_never_read_and_writer_resumes(tmp_path):
    path = tmp_path / "store"
    examples = make_examples(30, seed=1)
    writer = create(path, flush_tokens=10**9)
    for example in examples[:10]:
        writer.append(example)
    writer.set_progress({"line": 11})
    writer.flush()
    committed_tokens = writer.num_tokens
    # A crash after the arrays of the next shard were written but before its commit.
    for example in examples[10:20]:
        writer.append(example)
    writer.set_progress({"line": 21})
    writer._write_shard()
    del writer
    on_disk = TokenStore(path)._arrays["tokens"].shape[0]
    assert on_disk > committed_tokens  # the half-written tail exists on disk ...
    store = TokenStore(path)
    assert len(store) == 10 and store.num_tokens == committed_tokens  # ... but is not data
    assert store.metadata["progress"] == {"line": 11}
    # Reopening cuts the tail, reports where to resume and appends after the committed data.
    writer = TokenStoreWriter.open(path, flush_tokens=10**9)
    assert writer.num_examples == 10 and writer.progress == {"line": 11}
    assert writer._arrays["tokens"].shape[0] == committed_tokens
    for example in examples[10:]:
        writer.append(example)
    writer.close()
    store = TokenStore(path)
    assert len(store) == 30
    for index, example in enumerate(examples):
        assert_same(store[index], example)


def test_torn_metadata_write_leaves_the_committed_file(tmp_path):
    path = tmp_path / "store"
    with create(path) as writer:
        writer.append(TokenExample.make([1, 2, 3]))
    (path / (METADATA_FILE + ".tmp")).write_text('{"num_examples": 99, "num_tok')
    store = TokenStore(path)
    assert len(store) == 1
    writer = TokenStoreWriter.open(path)
    writer.append(TokenExample.make([4, 5]))
    writer.close()
    assert len(TokenStore(path)) == 2


def test_store_refuses_overwrite_and_foreign_versions(tmp_path):
    path = tmp_path / "store"
    create(path).close()
    with pytest.raises(StoreError, match="already exists"):
        create(path)
    create(path, overwrite=True).close()
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["format_version"] = 999
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="format_version 999"):
        TokenStore(path)
    with pytest.raises(StoreError, match="not a token store"):
        TokenStore(tmp_path / "nowhere")


def test_damaged_arrays_are_detected(tmp_path):
    path = tmp_path / "store"
    with create(path) as writer:
        writer.append(TokenExample.make([1, 2, 3]))
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["num_tokens"] = 50
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="damaged"):
        TokenStore(path)


def test_empty_example_refused_and_store_pickles(tmp_path):
    path = tmp_path / "store"
    with create(path) as writer:
        with pytest.raises(ValueError, match="at least one token"):
            writer.append(TokenExample.make([]))
        writer.append(TokenExample.make([7, 8]))
    store = pickle.loads(pickle.dumps(TokenStore(path)))
    np.testing.assert_array_equal(store[0].tokens, [7, 8])
