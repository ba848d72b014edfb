"""Batches for training: shuffle, shard by process, read, pack, batch; resumable.

The pipeline (grain): example indices `range(num_examples)` → shuffle with `data.seed` (a new
order every epoch) → repeat `data.num_epochs` times (forever when null) → this process's share
`[process_index::process_count]` → groups of `data.read_chunk` indices read concurrently from
the token store (threads; `data.num_workers` > 0 adds worker processes) → `PackIterDataset`
(masked sequence packing) → rows stacked into batches of `batch_size / process_count` rows.

`BatchIterator.get_state()` is a small JSON-able dict; `set_state()` on a freshly made iterator
(same config, source and process layout) continues with exactly the batches an uninterrupted
run would give. The order is deterministic for a seed and a process layout (and, with worker
processes, for a worker count).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grain
import numpy as np

from lwm.config.data import DataConfig
from lwm.config.errors import ConfigError
from lwm.data.batch import empty_row, stack_rows
from lwm.data.packing import PackingStats, PackIterator, PackIterDataset
from lwm.data.store import TokenExample, TokenStore

STATE_VERSION = 1
_UNSET: Any = object()


class ExampleSource(Protocol):
    """Random-access examples: a `TokenStore` or anything with `__len__` and `read_many`."""

    def __len__(self) -> int: ...

    def read_many(self, indices: Sequence[int]) -> list[TokenExample]: ...


class MemorySource:
    """An in-memory list of examples behaving like a token store (tests, small jobs)."""

    def __init__(self, examples: Sequence[TokenExample]) -> None:
        self.examples = list(examples)
        for index, example in enumerate(self.examples):
            if len(example) == 0:
                raise ValueError(f"example {index} is empty: every example needs a token")

    def __len__(self) -> int:
        return len(self.examples)

    def read_many(self, indices: Sequence[int]) -> list[TokenExample]:
        """The examples at `indices`, in order."""
        return [self.examples[int(index)] for index in np.asarray(indices).reshape(-1)]


def as_source(source: ExampleSource | Sequence[TokenExample] | str | Path) -> ExampleSource:
    """A store path, a store, or a list of examples, as an `ExampleSource`."""
    if isinstance(source, (str, Path)):
        return TokenStore(source)
    if hasattr(source, "read_many"):
        return source  # type: ignore[return-value]
    return MemorySource(source)  # type: ignore[arg-type]


class _ReadChunk(grain.transforms.Map):
    """Reads one group of example indices (concurrently, for a token store)."""

    def __init__(self, source: ExampleSource) -> None:
        self.source = source

    def map(self, indices: np.ndarray) -> list[TokenExample]:
        return self.source.read_many(np.asarray(indices).reshape(-1))


def _mark_absl_flags_parsed() -> None:
    # grain's worker processes read absl flags, which a non-absl program never parses.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Yields batches `{feature: array [local_batch, seq_len]}` (see `lwm.data.packing`).

    When a finite dataset ends inside a batch, the batch is filled with all-padding rows (no
    loss), counted in `stats.padding_rows`, so every batch has the same shape.
    """

    def __init__(self, packer: PackIterator, *, local_batch: int, seq_len: int,
                 fingerprint: dict[str, Any]) -> None:
        self._packer = packer
        self.local_batch = local_batch
        self.seq_len = seq_len
        self.fingerprint = fingerprint
        self.batches = 0

    @property
    def stats(self) -> PackingStats:
        """Running packing statistics of this process (restored with the state)."""
        return self._packer.stats

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = []
        for _ in range(self.local_batch):
            try:
                rows.append(next(self._packer))
            except StopIteration:
                break
        if not rows:
            raise StopIteration
        while len(rows) < self.local_batch:
            rows.append(empty_row(self.seq_len))
            self._packer.stats.padding_rows += 1
            self._packer.stats.padding_tokens += self.seq_len
        self.batches += 1
        return stack_rows(rows)

    def get_state(self) -> dict[str, Any]:
        """JSON-able: the packer's state, the batch count and the pipeline's fingerprint."""
        return {"version": STATE_VERSION, "batches": self.batches,
                "fingerprint": dict(self.fingerprint), "packer": self._packer.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from `state`; refuses a state made by a differently configured pipeline."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r}, expected "
                             f"{STATE_VERSION}")
        saved = state.get("fingerprint", {})
        differ = sorted(key for key in set(saved) | set(self.fingerprint)
                        if saved.get(key) != self.fingerprint.get(key))
        if differ:
            details = ", ".join(f"{key}: saved {saved.get(key)!r}, now {self.fingerprint.get(key)!r}"
                                for key in differ)
            raise ValueError(f"cannot resume the data iterator: the pipeline changed ({details}); "
                             f"resume with the same data config, source and process layout")
        self._packer.set_state(state["packer"])
        self.batches = int(state["batches"])

    def close(self) -> None:
        """Stops worker processes, if any."""
        close = getattr(self._packer, "close", None)
        if close is not None:
            close()


def make_batch_iterator(
    config: DataConfig,
    source: ExampleSource | Sequence[TokenExample] | str | Path | None = None,
    *,
    batch_size: int | None = None,
    seq_len: int | None = None,
    seed: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = _UNSET,
) -> BatchIterator:
    """The training loop's batch iterator for this process.

    `source` is a token store (path or `TokenStore`) or a list of `TokenExample`s; by default
    `config.store_path`. `batch_size` (global, over all processes), `seq_len`, `seed` and
    `num_epochs` default to the config's. Each process yields `batch_size // process_count`
    rows per batch from a disjoint share of every epoch.
    """
    batch_size = config.batch_size if batch_size is None else batch_size
    seq_len = config.seq_len if seq_len is None else seq_len
    seed = config.seed if seed is None else seed
    num_epochs = config.num_epochs if num_epochs is _UNSET else num_epochs
    if process_count <= 0 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count="
                         f"{process_count})")
    if batch_size <= 0 or batch_size % process_count:
        raise ConfigError(f"data.batch_size={batch_size} must be a positive multiple of the "
                          f"process count {process_count}: each process yields an equal share")
    if seq_len < 2:
        raise ConfigError(f"data.seq_len={seq_len}: a row needs at least 2 tokens")
    if source is None:
        if not config.store_path:
            raise ConfigError("data.store_path is empty: name the token store to train on")
        source = config.store_path
    examples = as_source(source)
    count = len(examples)
    if count == 0:
        raise ValueError("the data source holds no examples")
    indices = grain.MapDataset.range(count)
    if config.shuffle:
        indices = indices.seed(seed).shuffle()
    indices = indices.repeat(num_epochs)[process_index::process_count]
    chunks = indices.batch(config.read_chunk).map(_ReadChunk(examples))
    options = grain.ReadOptions(num_threads=config.read_threads,
                                prefetch_buffer_size=max(2, 2 * config.read_threads))
    stream = chunks.to_iter_dataset(options)
    if config.num_workers > 0:
        _mark_absl_flags_parsed()
        stream = stream.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers))
    packed = PackIterDataset(stream, seq_len=seq_len, overlong=config.overlong,
                             num_bins=config.packing_bins)
    fingerprint = {
        "num_examples": count, "seq_len": seq_len, "batch_size": batch_size, "seed": seed,
        "shuffle": config.shuffle, "num_epochs": num_epochs, "process_index": process_index,
        "process_count": process_count, "overlong": config.overlong,
        "packing_bins": config.packing_bins, "read_chunk": config.read_chunk,
        "num_workers": config.num_workers,
    }
    return BatchIterator(iter(packed), local_batch=batch_size // process_count, seq_len=seq_len,
                         fingerprint=fingerprint)


def describe_stats(stats: PackingStats) -> str:
    """One log line of the packing statistics."""
    data = dataclasses.asdict(stats)
    parts = [f"{key}={value}" for key, value in data.items()]
    return f"packing: {', '.join(parts)}, padding_fraction={stats.padding_fraction:.3f}"
