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


# Integrity: the chunk files are named by the zarr v3 spec's default chunk key encoding
# (`<array>/c/<index>`), and the crc32c codec appends a 4-byte checksum to each.


def written_store(path, count=30):
    examples = make_examples(count, seed=3)
    with create(path, flush_tokens=90) as writer:
        for example in examples:
            writer.append(example)
    return examples


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_verify_passes_on_a_good_store_and_counts_chunks(tmp_path):
    path = tmp_path / "store"
    examples = written_store(path)
    store = TokenStore(path)
    checked = store.verify()
    tokens = sum(len(e) for e in examples)
    assert checked["tokens"] == -(-tokens // 64) == len(list((path / "tokens" / "c").iterdir()))
    assert checked["offsets"] == -(-(len(examples) + 1) // 8)
    # Chunks of all zeros are stored too (tensorstore would elide them), so presence is exact.
    with create(tmp_path / "zeros") as writer:
        writer.append(TokenExample.make(np.zeros(100, np.int32)))
    assert len(list((tmp_path / "zeros" / "is_vision" / "c").iterdir())) == 2
    TokenStore(tmp_path / "zeros").verify()


@pytest.mark.parametrize("array", ["tokens", "is_vision", "offsets"])
def test_a_deleted_chunk_fails_at_open_naming_store_array_and_chunk(tmp_path, array):
    path = tmp_path / "store"
    written_store(path)
    (path / array / "c" / "1").unlink()
    with pytest.raises(StoreError) as error:
        TokenStore(path)
    message = one_line(error)
    assert str(path) in message and f"array {array!r} chunk 1" in message and "missing" in message
    with pytest.raises(StoreError, match="chunk 1"):
        TokenStoreWriter.open(path)


def test_a_truncated_chunk_fails_at_open(tmp_path):
    path = tmp_path / "store"
    written_store(path)
    chunk = path / "loss_mask" / "c" / "2"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(StoreError) as error:
        TokenStore(path)
    message = one_line(error)
    assert "array 'loss_mask' chunk 2" in message and "10 bytes, expected 68" in message


def test_flipped_bytes_fail_verify_and_reading(tmp_path):
    path = tmp_path / "store"
    written_store(path)
    chunk = path / "tokens" / "c" / "1"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0x40
    chunk.write_bytes(bytes(data))
    store = TokenStore(path)  # sizes are right: only reading finds it
    with pytest.raises(StoreError) as error:
        store.verify()
    message = one_line(error)
    assert str(path) in message and "array 'tokens' chunk 1" in message
    with pytest.raises(StoreError, match="damaged"):
        list(store)


def test_flipped_bytes_with_a_valid_codec_checksum_fail_our_checksum(tmp_path):
    # Rewrite the chunk's values through tensorstore (so zarr's own crc32c is valid): only the
    # checksum recorded in store.json can tell.
    import tensorstore as ts

    path = tmp_path / "store"
    written_store(path)
    array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / "tokens")}},
                    open=True).result()
    array[64:65].write(np.array([999], np.int32)).result()
    with pytest.raises(StoreError, match="array 'tokens' chunk 1 .* fails its checksum"):
        TokenStore(path).verify()


def test_an_uncommitted_tail_in_the_last_chunk_does_not_break_verification(tmp_path):
    path = tmp_path / "store"
    examples = written_store(path)
    writer = TokenStoreWriter.open(path, flush_tokens=10**9)
    extra = make_examples(5, seed=9)
    for example in extra:
        writer.append(example)
    writer._write_shard()  # a crash after writing the shard, before committing it
    TokenStore(path).verify()
    with TokenStoreWriter.open(path) as resumed:
        for example in extra:
            resumed.append(example)
    store = TokenStore(path)
    assert store.verify()["tokens"] >= 1 and len(store) == len(examples) + 5
    assert_same(store[-1], extra[-1])


def legacy_store(path):
    """A store as the writer made it before checksums: no `integrity` in store.json, arrays with
    tensorstore's default codecs, and chunks holding only the fill value never written."""
    import tensorstore as ts

    path.mkdir()
    tokens = np.arange(1, 71, dtype=np.int32)
    columns = {"tokens": ("int32", tokens), "is_vision": ("uint8", np.zeros(70, np.uint8)),
               "loss_mask": ("uint8", np.ones(70, np.uint8)),
               "offsets": ("int64", np.arange(0, 71, 7, dtype=np.int64))}
    for name, (dtype, values) in columns.items():
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)},
                "metadata": {"shape": [len(values)], "data_type": dtype,
                             "chunk_grid": {"name": "regular",
                                            "configuration": {"chunk_shape": [16]}}}}
        ts.open(spec, create=True).result().write(values).result()
    metadata = {"format_version": 1, "tokenizer": "bytes", "text_vocab_size": 1000,
                "vision_vocab_size": 0, "num_examples": 10, "num_tokens": 70,
                "num_vision_tokens": 0, "num_loss_tokens": 70, "progress": None}
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    return tokens


def test_a_store_written_before_checksums_warns_once_and_can_be_rehashed(tmp_path, capsys):
    from lwm.data.store import rehash_store

    path = tmp_path / "legacy"
    tokens = legacy_store(path)
    assert not (path / "is_vision" / "c" / "0").exists()  # elided: all fill value
    TokenStore(path)
    TokenStore(path)
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and "no chunk checksums" in warning and "--rehash" in warning
    with pytest.raises(StoreError, match="--rehash"):
        TokenStore(path).verify()
    assert rehash_store(path)["tokens"] == 5
    store = TokenStore(path)
    assert store.verify()["is_vision"] == 5
    np.testing.assert_array_equal(store[9].tokens, tokens[63:70])
    assert capsys.readouterr().err == ""
    # From now on its present chunks are required, and appending keeps checksums.
    with TokenStoreWriter.open(path) as writer:
        writer.append(TokenExample.make([5, 6, 7], [0, 1, 1]))
    assert TokenStore(path).verify()["tokens"] == 5
    assert_same(TokenStore(path)[10], TokenExample.make([5, 6, 7], [0, 1, 1]))
    (path / "tokens" / "c" / "2").unlink()
    with pytest.raises(StoreError, match="array 'tokens' chunk 2 .* missing"):
        TokenStore(path)


# File manifests (model directories, checkpoints): lwm/data/integrity.py.


def test_file_manifest_finds_missing_truncated_and_altered_files(tmp_path):
    from lwm.data.integrity import (
        FILE_MANIFEST,
        IntegrityError,
        check_checkpoint_directory,
        check_file_manifest,
        write_checkpoint_manifests,
    )

    run = tmp_path / "run"
    for step in (1, 2):
        (run / f"step_{step}" / "model" / "d").mkdir(parents=True)
        (run / f"step_{step}" / "model" / "d" / "blob").write_bytes(bytes(range(200)) * step)
        (run / f"step_{step}" / "config.yaml").write_text("model: {}\n")
    assert check_checkpoint_directory(run, "VQ tokenizer") == 0  # nothing recorded yet
    assert len(write_checkpoint_manifests(run)) == 2 and write_checkpoint_manifests(run) == []
    assert check_checkpoint_directory(run, "VQ tokenizer") == 2
    step = run / "step_2"
    assert check_file_manifest(step, checksums=True)
    blob = step / "model" / "d" / "blob"
    data = bytearray(blob.read_bytes())
    data[7] ^= 1
    blob.write_bytes(bytes(data))
    assert check_file_manifest(step)  # same size: only the checksum tells
    with pytest.raises(IntegrityError, match=r"file model/d/blob fails its checksum"):
        check_file_manifest(step, what="VQ checkpoint", checksums=True)
    blob.write_bytes(bytes(data[:50]))
    with pytest.raises(IntegrityError) as error:
        check_checkpoint_directory(run, "VQ tokenizer")
    assert one_line(error) == (f"VQ tokenizer {step}: file model/d/blob holds 50 bytes, expected 400 "
                               f"(truncated or altered); restore or rewrite it")
    blob.unlink()
    with pytest.raises(IntegrityError, match="file model/d/blob is missing"):
        check_file_manifest(step, what="model directory")
    (step / FILE_MANIFEST).unlink()
    with pytest.raises(IntegrityError, match="no lwm-files.json"):
        check_file_manifest(step, required=True)


def test_reading_turns_a_library_failure_into_one_line(tmp_path):
    from lwm.data.integrity import IntegrityError, reading

    with pytest.raises(IntegrityError) as error:
        with reading(tmp_path / "model", "model directory"):
            try:
                raise ValueError("DATA_LOSS: digest mismatch in params/d/abc\nand 200 more lines")
            except ValueError as cause:
                raise Exception("Encountered error while reading array index") from cause
    message = one_line(error)
    assert message.startswith(f"model directory {tmp_path / 'model'} cannot be read (ValueError: "
                              f"DATA_LOSS: digest mismatch in params/d/abc)")
    with pytest.raises(FileNotFoundError), reading(tmp_path, "x"):
        raise FileNotFoundError("already one line")
    with pytest.raises(StoreError), reading(tmp_path, "x"):
        raise StoreError("an lwm error passes through")
