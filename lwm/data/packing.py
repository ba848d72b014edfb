"""Masked sequence packing (the LWM paper's method) as a grain `IterDataset` transform.

Examples of any length are packed into rows of exactly `seq_len` tokens. Within a row each
example is a segment: `segment_ids` 1, 2, … (0 = padding), `positions` restart at 0, and the
attention honours segment ids, so no example sees another. A row is the batch contract:

the arrays of `lwm/data/batch.py`; `loss_weight` is the store's `loss_mask` of the target token.

Packing is first-fit within a window of at most `num_bins` open rows: each example goes into the
first row with room; the window is emitted (rows in order) when an example fits in none of them,
and that example starts the next window. An example is never divided between rows except by the
overlong policy: `split` cuts an example longer than `seq_len` into consecutive pieces of
`seq_len` tokens (each piece is its own segment, so the first token of a continuation piece has
no context and the last token of each piece no target), `drop` discards it. Both are counted.

State: the parent's state at the start of the current window, how many examples of the parent's
element to skip, how many rows of the window were emitted, and the running statistics. Restoring
re-reads and re-packs that one window (packing is deterministic) and skips the emitted rows.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import numpy as np

from lwm.data.batch import empty_row
from lwm.data.store import TokenExample


@dataclasses.dataclass
class PackingStats:
    """Running counts of what the packer did (all JSON-able ints)."""

    examples_seen: int = 0
    examples_packed: int = 0
    examples_split: int = 0
    split_pieces: int = 0
    examples_dropped: int = 0
    tokens_dropped: int = 0
    rows: int = 0
    padding_rows: int = 0
    tokens_packed: int = 0
    padding_tokens: int = 0
    loss_tokens: int = 0

    @property
    def padding_fraction(self) -> float:
        """Share of row slots (padding rows included) that hold padding."""
        slots = self.tokens_packed + self.padding_tokens
        return self.padding_tokens / slots if slots else 0.0

    def to_dict(self) -> dict[str, Any]:
        """All counters plus the padding fraction."""
        data = dataclasses.asdict(self)
        data["padding_fraction"] = self.padding_fraction
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackingStats:
        """Inverse of `to_dict` (ignores the derived padding fraction)."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: int(value) for key, value in data.items() if key in names})


def build_row(pieces: Sequence[TokenExample], seq_len: int) -> dict[str, np.ndarray]:
    """Lays segments side by side in one row of `seq_len`, with targets, masks and positions."""
    lengths = np.array([len(piece) for piece in pieces], np.int64)
    total = int(lengths.sum())
    if total > seq_len or (lengths <= 0).any():
        raise ValueError(f"segments of lengths {lengths.tolist()} do not fit a row of {seq_len}")
    row = empty_row(seq_len)
    tokens = np.concatenate([piece.tokens for piece in pieces])
    vision = np.concatenate([piece.is_vision for piece in pieces])
    loss = np.concatenate([piece.loss_mask for piece in pieces])
    starts = np.cumsum(lengths) - lengths
    row["input_ids"][:total] = tokens
    row["input_is_vision"][:total] = vision
    row["segment_ids"][:total] = np.repeat(np.arange(1, len(pieces) + 1, dtype=np.int32), lengths)
    row["positions"][:total] = np.arange(total) - np.repeat(starts, lengths)
    row["target_ids"][: total - 1] = tokens[1:]
    row["target_is_vision"][: total - 1] = vision[1:]
    row["loss_weight"][: total - 1] = loss[1:]
    last = starts + lengths - 1  # each segment's last token predicts nothing
    row["target_ids"][last] = 0
    row["target_is_vision"][last] = False
    row["loss_weight"][last] = 0.0
    return row


def split_example(example: TokenExample, seq_len: int) -> list[TokenExample]:
    """Consecutive pieces of at most `seq_len` tokens (one piece if it already fits)."""
    return [
        TokenExample(example.tokens[start:start + seq_len], example.is_vision[start:start + seq_len],
                     example.loss_mask[start:start + seq_len])
        for start in range(0, len(example), seq_len)
    ]


def _first_fit(fills: list[int], lengths: list[int], seq_len: int, num_bins: int,
               may_exceed: bool) -> tuple[list[int], list[int]] | None:
    """Places pieces first-fit into rows; None when one fits nowhere and no row may be opened."""
    trial, where = list(fills), []
    for length in lengths:
        for index, fill in enumerate(trial):
            if fill + length <= seq_len:
                trial[index] += length
                where.append(index)
                break
        else:
            if len(trial) >= num_bins and not may_exceed:
                return None
            trial.append(length)
            where.append(len(trial) - 1)
    return trial, where


class PackIterDataset(grain.IterDataset):
    """Packs a stream of `TokenExample`s (or lists of them) into rows; see the module docstring."""

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, overlong: str = "split",
                 num_bins: int = 16) -> None:
        super().__init__(parent)
        if overlong not in ("split", "drop"):
            raise ValueError(f"overlong={overlong!r}: use 'split' or 'drop'")
        if seq_len < 2 or num_bins < 1:
            raise ValueError(f"seq_len={seq_len} must be at least 2 and num_bins={num_bins} positive")
        self.seq_len, self.overlong, self.num_bins = seq_len, overlong, num_bins

    def __iter__(self) -> PackIterator:
        return PackIterator(self._parent.__iter__(), seq_len=self.seq_len, overlong=self.overlong,
                            num_bins=self.num_bins)


class PackIterator(grain.DatasetIterator):
    """Iterator of `PackIterDataset`; `stats` holds the running `PackingStats`."""

    def __init__(self, parent: grain.DatasetIterator, *, seq_len: int, overlong: str,
                 num_bins: int) -> None:
        super().__init__(parent)
        self.seq_len, self.overlong, self.num_bins = seq_len, overlong, num_bins
        self.stats = PackingStats()
        self._chunk: list[TokenExample] = []
        self._chunk_pos = 0
        self._chunk_state = copy.deepcopy(self._parent.get_state())
        self._exhausted = False
        self._window_start: tuple[Any, int] = (self._chunk_state, 0)
        self._rows: list[list[TokenExample]] = []
        self._next_row = 0

    def _peek(self) -> TokenExample | None:
        """The next unconsumed example, fetching parent elements as needed (None at the end)."""
        while self._chunk_pos >= len(self._chunk):
            if self._exhausted:
                return None
            state = copy.deepcopy(self._parent.get_state())
            try:
                element = next(self._parent)
            except StopIteration:
                self._exhausted = True
                self._chunk, self._chunk_pos, self._chunk_state = [], 0, state
                return None
            self._chunk_state = state
            self._chunk = list(element) if isinstance(element, (list, tuple)) else [element]
            self._chunk_pos = 0
        return self._chunk[self._chunk_pos]

    def _build_window(self) -> None:
        self._peek()
        self._window_start = (self._chunk_state, self._chunk_pos)
        bins: list[list[TokenExample]] = []
        fills: list[int] = []
        stats = self.stats
        while (example := self._peek()) is not None:
            length = len(example)
            if length == 0:
                raise ValueError("the packer got an empty example; the store never holds one")
            if length > self.seq_len and self.overlong == "drop":
                self._chunk_pos += 1
                stats.examples_seen += 1
                stats.examples_dropped += 1
                stats.tokens_dropped += length
                continue
            pieces = split_example(example, self.seq_len) if length > self.seq_len else [example]
            placed = _first_fit(fills, [len(p) for p in pieces], self.seq_len, self.num_bins,
                                may_exceed=not bins)
            if placed is None:
                break
            fills, where = placed
            for piece, index in zip(pieces, where):
                if index == len(bins):
                    bins.append([])
                bins[index].append(piece)
            self._chunk_pos += 1
            stats.examples_seen += 1
            stats.examples_packed += 1
            if len(pieces) > 1:
                stats.examples_split += 1
                stats.split_pieces += len(pieces)
        self._rows, self._next_row = bins, 0

    def __next__(self) -> dict[str, np.ndarray]:
        if self._next_row >= len(self._rows):
            self._build_window()
            if not self._rows:
                raise StopIteration
        pieces = self._rows[self._next_row]
        self._next_row += 1
        row = build_row(pieces, self.seq_len)
        tokens = sum(len(piece) for piece in pieces)
        self.stats.rows += 1
        self.stats.tokens_packed += tokens
        self.stats.padding_tokens += self.seq_len - tokens
        self.stats.loss_tokens += int(row["loss_weight"].sum())
        return row

    def get_state(self) -> dict[str, Any]:
        """A small JSON-able dict: window start in the parent, rows emitted, statistics."""
        parent_state, skip = self._window_start
        return {"parent": copy.deepcopy(parent_state), "skip": skip,
                "rows_emitted": self._next_row, "stats": self.stats.to_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Resumes exactly where `get_state` was taken (re-packs the current window)."""
        self._parent.set_state(copy.deepcopy(state["parent"]))
        self._chunk, self._chunk_pos, self._exhausted = [], 0, False
        self._chunk_state = copy.deepcopy(state["parent"])
        self._rows, self._next_row = [], 0
        if state["skip"]:
            self._peek()
            self._chunk_pos = int(state["skip"])
        self._window_start = (copy.deepcopy(state["parent"]), int(state["skip"]))
        if state["rows_emitted"]:
            self._build_window()
            self._next_row = int(state["rows_emitted"])
        self.stats = PackingStats.from_dict(state["stats"])


def pack_examples(examples: Iterable[TokenExample], *, seq_len: int, overlong: str = "split",
                  num_bins: int = 16) -> tuple[list[dict[str, np.ndarray]], PackingStats]:
    """Packs an in-memory list of examples (for tests and small jobs): (rows, stats)."""
    source = grain.MapDataset.source(list(examples)).to_iter_dataset()
    iterator = iter(PackIterDataset(source, seq_len=seq_len, overlong=overlong, num_bins=num_bins))
    rows = list(iterator)
    return rows, iterator.stats
