"""Token-wise functions (MLPs) applied chunk by chunk over the sequence to bound activations."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def blockwise_feedforward(
    fn: Callable,
    x,
    chunk_size: int,
    *,
    axis: int = 1,
    policy: Callable | None = None,
):
    """Apply ``fn`` to ``x`` in chunks of ``chunk_size`` along the sequence axis ``axis``.

    ``fn`` must act on each token independently (an MLP over the last dim, for instance), take
    an array shaped like ``x`` with ``chunk_size`` rows on ``axis`` and return one with the
    same rows on ``axis``. Chunks run one after another under ``lax.map`` and ``fn`` is
    rematerialised (``jax.checkpoint``, saving nothing unless ``policy`` says otherwise), so a
    forward+backward pass holds the hidden activations of one chunk at a time instead of the
    whole sequence. ``fn`` must be a pure JAX function: for a Flax module pass
    ``lambda h: module.apply(params, h)`` rather than a bound module.

    A ``chunk_size`` at least the sequence length applies ``fn`` once; one that does not
    divide the length raises ValueError.
    """
    axis = axis % x.ndim
    length = x.shape[axis]
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer")
    if chunk_size >= length:
        return fn(x)
    if length % chunk_size:
        raise ValueError(
            f"chunk_size={chunk_size} does not divide the sequence length {length} (axis {axis}); "
            f"choose a chunk_size that divides {length}"
        )
    chunks = jnp.moveaxis(x, axis, 0).reshape((length // chunk_size, chunk_size) + x.shape[:axis] + x.shape[axis + 1 :])

    def one_chunk(chunk):
        out = fn(jnp.moveaxis(chunk, 0, axis))
        if out.shape[axis] != chunk_size:
            raise ValueError(
                f"blockwise_feedforward: fn changed the sequence axis from {chunk_size} to "
                f"{out.shape[axis]}; it must act token-wise"
            )
        return jnp.moveaxis(out, axis, 0)

    out = lax.map(jax.checkpoint(one_chunk, policy=policy), chunks)
    out = out.reshape((length,) + out.shape[2:])
    return jnp.moveaxis(out, 0, axis)
