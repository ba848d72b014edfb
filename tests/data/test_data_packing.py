"""Masked sequence packing: invariants (hypothesis) and a hand-checked layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm.data.packing import build_row, pack_examples, split_example
from lwm.data.store import TokenExample

EXAMPLE_STRIDE = 10_000


def numbered_examples(lengths, seed):
    """Token value = example * STRIDE + position, so every token says where it came from."""
    rng = np.random.default_rng(seed)
    return [TokenExample.make(index * EXAMPLE_STRIDE + np.arange(length), rng.random(length) < 0.4,
                              rng.random(length) < 0.7)
            for index, length in enumerate(lengths)]


def segments_of(row):
    """(segment id, start, end) for each run of one nonzero segment id in a row."""
    segment_ids = row["segment_ids"]
    runs, start = [], 0
    for index in range(1, len(segment_ids) + 1):
        if index == len(segment_ids) or segment_ids[index] != segment_ids[start]:
            if segment_ids[start]:
                runs.append((int(segment_ids[start]), start, index))
            start = index
    return runs


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=25),
    seq_len=st.integers(2, 17),
    num_bins=st.integers(1, 5),
    overlong=st.sampled_from(["split", "drop"]),
    seed=st.integers(0, 2**16),
)
def test_packing_invariants(lengths, seq_len, num_bins, overlong, seed):
    examples = numbered_examples(lengths, seed)
    rows, stats = pack_examples(examples, seq_len=seq_len, overlong=overlong, num_bins=num_bins)
    seen = {}  # example index -> list of (first position, pieces)
    for row in rows:
        for name, array in row.items():
            assert array.shape == (seq_len,), name
        runs = segments_of(row)
        ids = [segment for segment, _, _ in runs]
        assert ids == list(range(1, len(runs) + 1))  # each segment one contiguous run, 1, 2, …
        used = runs[-1][2] if runs else 0
        assert used > 0, "no empty rows"
        padding = slice(used, seq_len)
        assert not row["segment_ids"][padding].any() and not row["loss_weight"][padding].any()
        assert not row["input_ids"][padding].any() and not row["input_is_vision"][padding].any()
        for _, start, end in runs:
            tokens = row["input_ids"][start:end]
            example_index, first = divmod(int(tokens[0]), EXAMPLE_STRIDE)
            source = examples[example_index]
            positions = np.arange(first, first + end - start)
            # Tokens of one example, consecutive; positions restart at 0 for every segment.
            np.testing.assert_array_equal(tokens, source.tokens[positions])
            np.testing.assert_array_equal(row["positions"][start:end], np.arange(end - start))
            np.testing.assert_array_equal(row["input_is_vision"][start:end], source.is_vision[positions])
            # Targets: the next token of the same segment; the last one has none.
            np.testing.assert_array_equal(row["target_ids"][start:end - 1], tokens[1:])
            np.testing.assert_array_equal(row["target_is_vision"][start:end - 1],
                                          source.is_vision[positions[1:]])
            np.testing.assert_array_equal(row["loss_weight"][start:end - 1],
                                          source.loss_mask[positions[1:]].astype(np.float32))
            assert row["target_ids"][end - 1] == 0 and row["loss_weight"][end - 1] == 0
            assert not row["target_is_vision"][end - 1]
            seen.setdefault(example_index, []).append((first, end - start))
    dropped = [i for i, length in enumerate(lengths) if length > seq_len and overlong == "drop"]
    for index, length in enumerate(lengths):
        if index in dropped:
            assert index not in seen
            continue
        pieces = sorted(seen[index])
        # Every token exactly once; pieces of a split example are seq_len long but the last.
        expected = [(start, min(seq_len, length - start)) for start in range(0, length, seq_len)]
        assert pieces == expected
    assert stats.examples_dropped == len(dropped)
    assert stats.tokens_dropped == sum(lengths[i] for i in dropped)
    assert stats.tokens_packed + stats.tokens_dropped == sum(lengths)
    assert stats.examples_seen == len(lengths)
    assert stats.examples_split == sum(1 for i, n in enumerate(lengths) if n > seq_len and i not in dropped)
    assert stats.rows == len(rows)
    assert stats.padding_tokens == len(rows) * seq_len - stats.tokens_packed
    assert stats.loss_tokens == int(sum(row["loss_weight"].sum() for row in rows))
    if rows:
        assert stats.padding_fraction == pytest.approx(stats.padding_tokens / (len(rows) * seq_len))


def test_first_fit_layout_by_hand():
    examples = [TokenExample.make(np.full(n, n)) for n in (5, 3, 6, 2, 4)]
    rows, stats = pack_examples(examples, seq_len=8, num_bins=2)
    # Window 1: 5 → row A, 3 → A (8), 6 → B, 2 → B (8); 4 fits neither: window 2 holds it.
    assert [row["input_ids"].tolist() for row in rows] == [
        [5] * 5 + [3] * 3, [6] * 6 + [2] * 2, [4] * 4 + [0] * 4]
    assert rows[0]["segment_ids"].tolist() == [1] * 5 + [2] * 3
    assert rows[0]["positions"].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert rows[2]["segment_ids"].tolist() == [1] * 4 + [0] * 4
    assert rows[0]["loss_weight"].tolist() == [1, 1, 1, 1, 0, 1, 1, 0]
    assert stats.padding_tokens == 4 and stats.padding_fraction == pytest.approx(4 / 24)


def test_overlong_policies_are_counted():
    examples = [TokenExample.make(np.arange(1, 12)), TokenExample.make([7, 8])]
    rows, stats = pack_examples(examples, seq_len=4, overlong="drop")
    assert len(rows) == 1 and rows[0]["input_ids"].tolist() == [7, 8, 0, 0]
    assert (stats.examples_dropped, stats.tokens_dropped) == (1, 11)
    rows, stats = pack_examples(examples, seq_len=4, overlong="split")
    assert (stats.examples_split, stats.split_pieces, stats.tokens_dropped) == (1, 3, 0)
    assert [len(p) for p in split_example(examples[0], 4)] == [4, 4, 3]


def test_build_row_rejects_overfull_rows():
    with pytest.raises(ValueError, match="do not fit"):
        build_row([TokenExample.make([1, 2, 3])] * 2, 5)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=20),
    seq_len=st.integers(4, 16),
    num_bins=st.integers(1, 4),
    chunk=st.integers(1, 4),
    data=st.data(),
)
def test_packer_resumes_from_any_row(lengths, seq_len, num_bins, chunk, data):
    import grain

    from lwm.data.packing import PackIterDataset

    examples = numbered_examples(lengths, 0)
    groups = [examples[i:i + chunk] for i in range(0, len(examples), chunk)]

    def fresh():
        source = grain.MapDataset.source(groups).to_iter_dataset()
        return iter(PackIterDataset(source, seq_len=seq_len, num_bins=num_bins))

    expected = list(fresh())
    stop = data.draw(st.integers(0, len(expected)))
    iterator = fresh()
    for _ in range(stop):
        next(iterator)
    state = iterator.get_state()
    resumed = fresh()
    resumed.set_state(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - stop
    for got, want in zip(rest, expected[stop:]):
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    list(iterator)
    assert resumed.stats == iterator.stats  # the statistics resume too
