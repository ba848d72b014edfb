"""Batch iterator: the batch contract, exact resume, process sharding, finite epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lwm.config.data import DataConfig
from lwm.data.loader import make_batch_iterator
from lwm.data.store import TokenExample, TokenStoreWriter

STRIDE = 1000


def examples(count=60, seed=0, max_length=30):
    """Token value = example * STRIDE + position: every token is unique and traceable."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        length = int(rng.integers(1, max_length))
        out.append(TokenExample.make(index * STRIDE + np.arange(length), rng.random(length) < 0.3,
                                     rng.random(length) < 0.8))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "store"
    with TokenStoreWriter.create(path, tokenizer_name="t", text_vocab_size=10**6,
                                 flush_tokens=400) as writer:
        for example in examples():
            writer.append(example)
    return path


CONFIG = DataConfig(seq_len=24, batch_size=4, read_chunk=5, packing_bins=3, seed=7)


def test_batch_contract(store):
    batch = next(make_batch_iterator(CONFIG, store))
    expected = {"input_ids": np.int32, "target_ids": np.int32, "segment_ids": np.int32,
                "positions": np.int32, "input_is_vision": np.bool_, "target_is_vision": np.bool_,
                "loss_weight": np.float32}
    assert set(batch) == set(expected)
    for name, dtype in expected.items():
        assert batch[name].shape == (4, 24) and batch[name].dtype == dtype, name
    assert set(np.unique(batch["loss_weight"]).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("resume_at", [0, 1, 3, 8])
def test_resume_gives_exactly_the_uninterrupted_batches(store, resume_at):
    reference = make_batch_iterator(CONFIG, store)
    expected = [next(reference) for _ in range(12)]
    first = make_batch_iterator(CONFIG, store)
    for _ in range(resume_at):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # the state is plain JSON
    stats_then = first.stats.to_dict()
    resumed = make_batch_iterator(CONFIG, store)
    resumed.set_state(state)
    assert resumed.stats.to_dict() == stats_then
    for step in range(resume_at, 12):
        batch = next(resumed)
        for name in batch:
            np.testing.assert_array_equal(batch[name], expected[step][name], err_msg=f"{step} {name}")
    assert resumed.stats.to_dict() == reference.stats.to_dict()


def test_seed_decides_the_order_and_epochs_reshuffle(store):
    def first_tokens(seed, count):
        iterator = make_batch_iterator(CONFIG, store, seed=seed)
        return np.concatenate([next(iterator)["input_ids"].reshape(-1) for _ in range(count)])

    np.testing.assert_array_equal(first_tokens(1, 3), first_tokens(1, 3))
    assert not np.array_equal(first_tokens(1, 3), first_tokens(2, 3))
    config = DataConfig(seq_len=32, batch_size=4, read_chunk=5, seed=3, num_epochs=2)
    segments = []  # the example of every segment, in order (examples fit a row: no splits)
    for batch in make_batch_iterator(config, store):
        starts = (batch["segment_ids"] > 0) & (batch["positions"] == 0)
        segments += (batch["input_ids"][starts] // STRIDE).tolist()
    assert sorted(segments) == sorted(list(range(60)) * 2)
    # Packing windows may straddle the epoch boundary, so compare occurrence orders.
    first_epoch = list(dict.fromkeys(segments))
    second_epoch = list(dict.fromkeys(reversed(segments)))[::-1]
    assert first_epoch != second_epoch


def collect_tokens(iterator):
    tokens, batches = [], 0
    for batch in iterator:
        batches += 1
        tokens += batch["input_ids"][batch["segment_ids"] > 0].tolist()
    return tokens, batches


def test_process_shards_are_disjoint_and_cover_an_epoch(store):
    config = DataConfig(seq_len=24, batch_size=4, read_chunk=4, num_epochs=1, seed=11)
    all_tokens = sorted(t for e in examples() for t in e.tokens.tolist())
    shards = []
    for process_index in range(2):
        iterator = make_batch_iterator(config, store, process_index=process_index, process_count=2)
        assert iterator.local_batch == 2
        tokens, _ = collect_tokens(iterator)
        shards.append(set(tokens))
        assert len(tokens) == len(shards[-1])
    assert not shards[0] & shards[1]
    assert sorted(shards[0] | shards[1]) == all_tokens


def test_finite_epoch_pads_the_last_batch_and_counts_it(store):
    config = DataConfig(seq_len=24, batch_size=5, read_chunk=4, num_epochs=1)
    iterator = make_batch_iterator(config, store)
    tokens, batches = collect_tokens(iterator)
    stats = iterator.stats
    assert sorted(tokens) == sorted(t for e in examples() for t in e.tokens.tolist())
    assert batches * 5 == stats.rows + stats.padding_rows
    assert stats.examples_seen == 60 and stats.examples_dropped == 0
    assert stats.padding_tokens + stats.tokens_packed == batches * 5 * 24
    assert stats.padding_rows == (-stats.rows) % 5


def test_in_memory_examples_and_split_policy():
    long = [TokenExample.make(np.arange(1, 51))]
    config = DataConfig(seq_len=16, batch_size=2, num_epochs=1, shuffle=False)
    iterator = make_batch_iterator(config, long)
    tokens, _ = collect_tokens(iterator)
    assert tokens == list(range(1, 51))
    assert (iterator.stats.examples_split, iterator.stats.split_pieces) == (1, 4)


def test_resume_refuses_a_changed_pipeline(store):
    state = make_batch_iterator(CONFIG, store).get_state()
    other = make_batch_iterator(CONFIG, store, seq_len=32)
    with pytest.raises(ValueError, match="seq_len: saved 24, now 32"):
        other.set_state(state)


def test_bad_arguments(store):
    from lwm.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of the process count"):
        make_batch_iterator(CONFIG, store, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        make_batch_iterator(CONFIG, store, process_index=2, process_count=2)
    with pytest.raises(ConfigError, match="store_path"):
        make_batch_iterator(CONFIG)


@pytest.mark.slow
def test_worker_processes_resume_exactly(store):
    config = DataConfig(seq_len=24, batch_size=4, read_chunk=5, num_workers=1)
    reference = make_batch_iterator(config, store)
    expected = [next(reference) for _ in range(6)]
    reference.close()
    first = make_batch_iterator(config, store)
    next(first), next(first)
    state = first.get_state()
    first.close()
    resumed = make_batch_iterator(config, store)
    resumed.set_state(state)
    for step in range(2, 6):
        np.testing.assert_array_equal(next(resumed)["input_ids"], expected[step]["input_ids"])
    resumed.close()
