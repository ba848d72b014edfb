"""Plain O(S^2) attention: the reference the blockwise and ring kernels are tested against."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from ringattention.blockwise import check_qkv, merge_kv_mask


def dense_attention(
    q,
    k,
    v,
    *,
    causal: bool = True,
    segment_ids=None,
    kv_segment_ids=None,
    kv_mask=None,
    query_chunk_size: int | None = None,
    key_chunk_size: int | None = None,
    softmax_scale: float | None = None,
    q_positions=None,
    kv_positions=None,
):
    """Attention that materialises the full ``[q_len, kv_len]`` score matrix, in float32.

    Takes the same arguments and follows the same masking rules as
    :func:`ringattention.blockwise_attention` (segment id 0 is padding; rows without a visible
    key give 0). ``query_chunk_size`` and ``key_chunk_size`` are accepted so the two functions
    are interchangeable in tests and benchmarks; they do not change the result here. Gradients
    come from ordinary autodiff, so memory is O(q_len * kv_len) per head.

    Returns ``[batch, q_len, heads, dim_v]`` in ``q.dtype``.
    """
    del query_chunk_size, key_chunk_size  # one block covers everything
    check_qkv(q, k, v, "dense_attention")
    batch, q_len, heads, dim = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    q_seg, k_seg = merge_kv_mask(segment_ids, kv_segment_ids, kv_mask, q_len, kv_len, batch)
    if q_positions is None:
        q_positions = jnp.arange(q_len, dtype=jnp.int32) + (kv_len - q_len)
    if kv_positions is None:
        kv_positions = jnp.arange(kv_len, dtype=jnp.int32)
    scale = dim ** -0.5 if softmax_scale is None else softmax_scale

    q_BTKGD = q.astype(jnp.float32).reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q_BTKGD, k.astype(jnp.float32)) * scale
    mask = jnp.ones((1, 1, 1, q_len, kv_len), bool)
    if causal:
        mask = mask & (jnp.asarray(q_positions)[:, None] >= jnp.asarray(kv_positions)[None, :])
    if q_seg is not None:
        seg = (q_seg[:, :, None] == k_seg[:, None, :]) & (k_seg[:, None, :] != 0)
        mask = mask & seg[:, None, None]
    scores = jnp.where(mask, scores, -jnp.inf)
    row_max = lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(scores - row_max)
    denominator = jnp.sum(weights, axis=-1, keepdims=True)
    has_key = denominator > 0
    probs = weights / jnp.where(has_key, denominator, 1.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32))
    return out.reshape(batch, q_len, heads, v.shape[-1]).astype(q.dtype)
