"""The batch contract: the arrays every training batch holds, with their dtypes and meaning.

Packing builds rows of it, the loader stacks rows into batches, the train step reads them, and
the memory planner and the benchmarks build abstract or synthetic batches from the same table,
so the contract is written once. Every array is `[batch, seq]`:

- `input_ids` int32, `input_is_vision` bool: the tokens as given (text or vision vocabulary).
- `target_ids` int32, `target_is_vision` bool: the next token of the same example; the last
  token of each example has no target (target 0, text, weight 0).
- `segment_ids` int32: 1, 2, … for the examples packed into a row (0 = padding); attention
  stays within a segment.
- `positions` int32: restart at 0 for every segment (the rotary positions).
- `loss_weight` float32: 1 where the target carries loss, else 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

BATCH_FEATURES: dict[str, type] = {
    "input_ids": np.int32,
    "target_ids": np.int32,
    "segment_ids": np.int32,
    "positions": np.int32,
    "input_is_vision": np.bool_,
    "target_is_vision": np.bool_,
    "loss_weight": np.float32,
}
BATCH_KEYS = tuple(BATCH_FEATURES)


def empty_row(seq_len: int) -> dict[str, np.ndarray]:
    """An all-padding row (segment 0, no loss)."""
    return {name: np.zeros(seq_len, dtype) for name, dtype in BATCH_FEATURES.items()}


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of the contract stacked into one `[len(rows), seq]` batch."""
    return {name: np.stack([row[name] for row in rows]) for name in BATCH_FEATURES}


def abstract_batch(batch_size: int, seq_len: int, sharding: jax.sharding.Sharding | None = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
    """`ShapeDtypeStruct`s of one global batch, for compiling a step without data."""
    shape = (batch_size, seq_len)
    return {name: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for name, dtype in BATCH_FEATURES.items()}


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One row-long text example per row with random tokens: a batch for benchmarks."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, seq_len)
    tokens = rng.integers(0, vocab_size, size=shape).astype(np.int32)
    return {
        "input_ids": tokens,
        "target_ids": np.roll(tokens, -1, axis=1),
        "segment_ids": np.ones(shape, np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
        "input_is_vision": np.zeros(shape, np.bool_),
        "target_is_vision": np.zeros(shape, np.bool_),
        "loss_weight": np.ones(shape, np.float32),
    }


def check_batch(batch: Mapping[str, np.ndarray]) -> None:
    """Raises `ValueError` when `batch` lacks an array of the contract or has the wrong dtype/shape."""
    shape = None
    for name, dtype in BATCH_FEATURES.items():
        if name not in batch:
            raise ValueError(f"batch has no {name!r}: the batch contract needs {', '.join(BATCH_KEYS)}")
        array = batch[name]
        if np.dtype(array.dtype) != np.dtype(dtype):
            raise ValueError(f"batch[{name!r}] is {array.dtype}, the contract says {np.dtype(dtype)}")
        if shape is None:
            shape = array.shape
        if array.shape != shape or len(shape) != 2:
            raise ValueError(f"batch[{name!r}] has shape {array.shape}; every array is [batch, seq] = {shape}")
