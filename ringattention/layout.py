"""Sequence layouts for ring attention: which global tokens each device holds.

A ring of ``n`` devices shards the sequence axis contiguously: device ``i`` holds rows
``i * S/n ... (i + 1) * S/n - 1`` of whatever array it is given. With a causal mask that is
unbalanced (device 0 attends to one block, device ``n - 1`` to ``n``), so the balanced layouts
permute the global sequence *before* it is sharded:

- ``"contiguous"``: no permutation; device ``i`` holds tokens ``i*S/n ... (i+1)*S/n - 1``.
- ``"zigzag"``: the sequence is cut into ``2n`` equal pieces and device ``i`` holds pieces
  ``i`` and ``2n - 1 - i`` (one early, one late piece), so every device does the same causal
  work at every ring step.
- ``"striped"``: device ``i`` holds tokens ``i, i + n, i + 2n, ...``.

Callers permute every per-token array the same way (tokens, targets, loss masks, segment ids,
RoPE positions) with :func:`to_layout`, train on the permuted arrays, and undo the permutation
of per-token outputs with :func:`from_layout`. The attention kernel recovers each token's
original position from the layout, the device index and the ring step, so the causal mask is
the one of the original order.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("contiguous", "zigzag", "striped")


def check_layout(layout: str, seq_len: int, num_shards: int) -> None:
    """Raise ValueError unless ``seq_len`` tokens can be split into ``layout`` over ``num_shards``.

    Contiguous and striped layouts need ``seq_len`` divisible by ``num_shards``; zigzag cuts the
    sequence into ``2 * num_shards`` pieces and needs it divisible by that.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be at least 1")
    pieces = 2 * num_shards if layout == "zigzag" else num_shards
    if seq_len % pieces:
        raise ValueError(
            f"sequence length {seq_len} is not divisible by {pieces} "
            f"({'2 x ' if layout == 'zigzag' else ''}{num_shards} devices, layout {layout!r}); "
            f"pad the sequence to a multiple of {pieces}"
        )


def layout_positions(seq_len: int, layout: str, num_shards: int) -> np.ndarray:
    """Original global positions of the tokens in ``layout`` order, as int32 ``[seq_len]``.

    Entry ``j`` is the original index of the token that sits at row ``j`` after
    :func:`to_layout`; shard ``i`` of the result (rows ``i*S/n ... (i+1)*S/n - 1``) lists the
    positions device ``i`` holds. Use it for RoPE positions of a permuted sequence.
    """
    check_layout(layout, seq_len, num_shards)
    if layout == "contiguous":
        return np.arange(seq_len, dtype=np.int32)
    if layout == "striped":
        local = seq_len // num_shards
        # Row i*local + j holds token j*n + i.
        return (np.arange(local)[None, :] * num_shards + np.arange(num_shards)[:, None]).reshape(-1).astype(np.int32)
    piece = seq_len // (2 * num_shards)
    pieces = []
    for shard in range(num_shards):
        for index in (shard, 2 * num_shards - 1 - shard):
            pieces.append(np.arange(index * piece, (index + 1) * piece))
    return np.concatenate(pieces).astype(np.int32)


def to_layout(x, layout: str, num_shards: int, axis: int = 1):
    """Permute the global sequence axis ``axis`` of ``x`` from original order into ``layout``.

    Works on NumPy and JAX arrays. After this, sharding ``axis`` contiguously over
    ``num_shards`` devices gives each device the tokens the layout assigns to it.
    """
    if layout == "contiguous":
        check_layout(layout, x.shape[axis], num_shards)
        return x
    order = layout_positions(x.shape[axis], layout, num_shards)
    return _take(x, order, axis)


def from_layout(x, layout: str, num_shards: int, axis: int = 1):
    """Inverse of :func:`to_layout`: put the sequence axis ``axis`` back in original order."""
    if layout == "contiguous":
        check_layout(layout, x.shape[axis], num_shards)
        return x
    order = layout_positions(x.shape[axis], layout, num_shards)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size, dtype=order.dtype)
    return _take(x, inverse, axis)


def _take(x, indices: np.ndarray, axis: int):
    if isinstance(x, np.ndarray):
        return np.take(x, indices, axis=axis)
    return jnp.take(x, jnp.asarray(indices), axis=axis)


def shard_positions(layout: str, shard_index, num_shards: int, local_len: int):
    """Original global positions of the ``local_len`` tokens held by shard ``shard_index``.

    ``shard_index`` may be a traced scalar (``lax.axis_index``), so the ring kernel can derive
    the positions of the key block it currently holds from the device it came from. Returns
    int32 ``[local_len]``; equals ``layout_positions(...)`` restricted to that shard.
    """
    j = jnp.arange(local_len, dtype=jnp.int32)
    shard_index = jnp.asarray(shard_index, jnp.int32)
    if layout == "contiguous":
        return shard_index * local_len + j
    if layout == "striped":
        return j * num_shards + shard_index
    if layout == "zigzag":
        half = local_len // 2
        late_piece = 2 * num_shards - 1 - shard_index
        return jnp.where(j < half, shard_index * half + j, late_piece * half + (j - half))
    raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
