"""Attention for decoding: a few query tokens against a key/value cache, optionally sharded.

The cache may be split over a mesh axis along its position axis, each device holding a
contiguous slice (device ``i`` of ``n`` holds positions ``i*L ... (i+1)*L - 1`` of a cache of
``n*L``). Every device attends the replicated queries to its slice and keeps the unnormalised
output, the row max and the denominator; the slices are then merged exactly with a
log-sum-exp reduction (``lax.pmax`` of the maxima, ``lax.psum`` of the rescaled sums).

A key at cache position ``p`` is visible to a query at position ``t`` of batch row ``b`` when
``p < cache_length[b]`` and, if causal, ``p <= t``.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax import lax

from ringattention.blockwise import check_qkv, chunk_keys, chunk_positions, resolve_chunk


def _check_decode(q, k_cache, v_cache, q_positions, name: str):
    check_qkv(q, k_cache, v_cache, name)
    if q_positions is None or jnp.shape(q_positions) != q.shape[:2]:
        raise ValueError(
            f"{name}: q_positions must be int [batch, q_len] = {q.shape[:2]}, "
            f"got {None if q_positions is None else jnp.shape(q_positions)}"
        )


def _cache_lengths(cache_length, batch: int, total: int):
    if cache_length is None:
        return jnp.full((batch,), total, jnp.int32)
    return jnp.broadcast_to(jnp.asarray(cache_length, jnp.int32), (batch,))


def _partial_attention(q, k_cache, v_cache, q_positions, kv_positions, lengths, causal, scale, key_chunk_size,
                       axis_name=None):
    """Unnormalised attention of ``q`` over one cache slice: ``(acc, row_max, denominator)``.

    Shapes: acc ``[B, KV, G, Tq, Dv]`` float32, row_max and denominator ``[B, KV, G, Tq]``.
    Chunks entirely past every row's cache length (or, if causal, after every query) are
    skipped.
    """
    batch, q_len, heads, dim = q.shape
    kv_heads = k_cache.shape[2]
    chunk = resolve_chunk(key_chunk_size, k_cache.shape[1], "key_chunk_size")
    q_BKGTD = (q * jnp.asarray(scale, q.dtype)).reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
    q_BKGTD = q_BKGTD.transpose(0, 2, 3, 1, 4)
    q_positions = jnp.asarray(q_positions, jnp.int32)
    last_visible = jnp.max(q_positions) if causal else jnp.max(lengths)
    limit = jnp.minimum(jnp.max(lengths), last_visible + 1)

    def key_chunk(carry, xs):
        k, v, k_pos = xs

        def compute():
            acc, m_old, l_old = carry
            s = jnp.einsum("bkgtd,bkcd->bkgtc", q_BKGTD, k, preferred_element_type=jnp.float32)
            visible = k_pos[None, None, :] < lengths[:, None, None]
            if causal:
                visible = visible & (k_pos[None, None, :] <= q_positions[:, :, None])
            s = jnp.where(visible[:, None, None], s, -jnp.inf)
            m_new = jnp.maximum(m_old, jnp.max(s, axis=-1))
            m_new = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m_old - m_new)
            pv = jnp.einsum("bkgtc,bkcd->bkgtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
            return acc * correction[..., None] + pv, m_new, l_old * correction + jnp.sum(p, axis=-1)

        return lax.cond(jnp.min(k_pos) < limit, compute, lambda: carry), None

    stats = jnp.zeros_like(q_BKGTD[..., 0], dtype=jnp.float32)
    if axis_name is not None:
        # The queries are replicated but the partial results differ per device.
        stats = lax.pcast(stats, axis_name, to="varying")
    acc = jnp.broadcast_to(stats[..., None], stats.shape + (v_cache.shape[-1],))
    xs = (chunk_keys(k_cache, chunk), chunk_keys(v_cache, chunk), chunk_positions(kv_positions, chunk))
    (acc, m, l), _ = lax.scan(key_chunk, (acc, stats - jnp.inf, stats), xs)
    return acc, m, l


def _normalise(acc, l, q):
    has_key = l > 0
    out = jnp.where(has_key[..., None], acc / jnp.where(has_key, l, 1.0)[..., None], 0.0)
    batch, kv_heads, groups, q_len, dim_v = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, kv_heads * groups, dim_v).astype(q.dtype)


def decode_attention(
    q,
    k_cache,
    v_cache,
    *,
    q_positions,
    cache_length=None,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    key_chunk_size: int = 512,
):
    """Attention of a few queries over a whole (unsharded) key/value cache.

    Args:
      q: ``[batch, q_len, heads, dim]``.
      k_cache, v_cache: ``[batch, cache_size, kv_heads, dim]``; ``heads % kv_heads == 0``.
      q_positions: int ``[batch, q_len]``, the cache positions of the queries.
      cache_length: int scalar or ``[batch]``: positions ``>= cache_length`` are empty and
        never attended. None means the whole cache is valid.
      causal: a query at position ``t`` sees cache positions ``<= t`` only.
      softmax_scale: logit multiplier, default ``dim ** -0.5``.
      key_chunk_size: cache positions per chunk (clamped to ``cache_size``, must divide it).

    Returns ``[batch, q_len, heads, dim_v]`` in ``q.dtype``; rows that see nothing are 0.
    """
    _check_decode(q, k_cache, v_cache, q_positions, "decode_attention")
    cache_size = k_cache.shape[1]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    lengths = _cache_lengths(cache_length, q.shape[0], cache_size)
    kv_positions = jnp.arange(cache_size, dtype=jnp.int32)
    acc, _, l = _partial_attention(q, k_cache, v_cache, q_positions, kv_positions, lengths, causal, scale, key_chunk_size)
    return _normalise(acc, l, q)


def ring_decode_attention(
    q,
    k_cache,
    v_cache,
    *,
    axis_name: str,
    q_positions,
    cache_length=None,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    key_chunk_size: int = 512,
):
    """Decode attention over a cache sharded along ``axis_name``; call inside ``jax.shard_map``.

    Args:
      q: ``[batch, q_len, heads, dim]``, the same (replicated) on every device.
      k_cache, v_cache: this device's slice ``[batch, cache_local, kv_heads, dim]``; device
        ``i`` holds global positions ``i*cache_local ... (i+1)*cache_local - 1``.
      axis_name: the mesh axis the cache is sharded over.
      q_positions: int ``[batch, q_len]`` global positions of the queries (replicated).
      cache_length: int scalar or ``[batch]`` global count of filled positions (replicated);
        None means the whole cache is valid.
      causal, softmax_scale, key_chunk_size: as in :func:`decode_attention`
        (``key_chunk_size`` applies to the local slice).

    Returns ``[batch, q_len, heads, dim_v]`` in ``q.dtype``, identical on every device and
    equal to :func:`decode_attention` over the gathered cache.
    """
    _check_decode(q, k_cache, v_cache, q_positions, "ring_decode_attention")
    cache_local = k_cache.shape[1]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    axis_size = lax.axis_size(axis_name)
    lengths = _cache_lengths(cache_length, q.shape[0], cache_local * axis_size)
    offset = lax.axis_index(axis_name) * cache_local
    kv_positions = offset + jnp.arange(cache_local, dtype=jnp.int32)
    acc, m, l = _partial_attention(q, k_cache, v_cache, q_positions, kv_positions, lengths, causal, scale, key_chunk_size,
                                 axis_name)
    # Exact merge: rescale every slice to the global row max, then sum.
    m_global = lax.pmax(m, axis_name)
    m_global = jnp.where(m_global == -jnp.inf, 0.0, m_global)
    correction = jnp.exp(m - m_global)
    l = lax.psum(l * correction, axis_name)
    acc = lax.psum(acc * correction[..., None], axis_name)
    return _normalise(acc, l, q)


def _scatter_rows(cache, new, local_index):
    batch_index = jnp.arange(cache.shape[0])[:, None]
    # Indices equal to the cache size are out of bounds and dropped by mode="drop".
    return cache.at[batch_index, local_index].set(new.astype(cache.dtype), mode="drop")


def _check_update(k_cache, v_cache, k_new, v_new, positions, name: str):
    if k_new.shape != v_new.shape[:-1] + (k_new.shape[-1],) or k_new.shape[:2] != jnp.shape(positions):
        raise ValueError(
            f"{name}: k_new {k_new.shape} and v_new {v_new.shape} must be [batch, new_len, kv_heads, dim] "
            f"with positions [batch, new_len], got positions {jnp.shape(positions)}"
        )
    if k_cache.shape[0] != k_new.shape[0] or k_cache.shape[2:] != k_new.shape[2:] or v_cache.shape[2:] != v_new.shape[2:]:
        raise ValueError(
            f"{name}: new entries k {k_new.shape} / v {v_new.shape} do not fit caches "
            f"k {k_cache.shape} / v {v_cache.shape}"
        )


def update_cache(k_cache, v_cache, k_new, v_new, positions):
    """Write ``k_new``/``v_new [batch, new_len, kv_heads, dim]`` at int ``positions [batch, new_len]``.

    Returns the updated ``(k_cache, v_cache)``. Positions outside ``[0, cache_size)`` are not
    written.
    """
    _check_update(k_cache, v_cache, k_new, v_new, positions, "update_cache")
    size = k_cache.shape[1]
    positions = jnp.asarray(positions, jnp.int32)
    index = jnp.where((positions >= 0) & (positions < size), positions, size)
    return _scatter_rows(k_cache, k_new, index), _scatter_rows(v_cache, v_new, index)


def update_sharded_cache(k_cache, v_cache, k_new, v_new, positions, *, axis_name: str):
    """Write new keys/values into the cache slice that owns their global positions.

    Call inside ``jax.shard_map``. ``k_cache``/``v_cache`` are this device's slice
    ``[batch, cache_local, kv_heads, dim]`` (device ``i`` owns positions
    ``i*cache_local ... (i+1)*cache_local - 1``); ``k_new``/``v_new``
    ``[batch, new_len, kv_heads, dim]`` and int ``positions [batch, new_len]`` are replicated.
    Each device writes only the entries whose position it owns and leaves every other entry
    of its slice unchanged. Returns the updated local ``(k_cache, v_cache)``.
    """
    _check_update(k_cache, v_cache, k_new, v_new, positions, "update_sharded_cache")
    cache_local = k_cache.shape[1]
    local = jnp.asarray(positions, jnp.int32) - lax.axis_index(axis_name) * cache_local
    index = jnp.where((local >= 0) & (local < cache_local), local, cache_local)
    return _scatter_rows(k_cache, k_new, index), _scatter_rows(v_cache, v_new, index)
