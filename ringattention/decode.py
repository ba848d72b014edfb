"""Attention for decoding: a few query tokens against a key/value cache, optionally sharded.

The cache may be split over a mesh axis along its position axis, each device holding a
contiguous slice (device ``i`` of ``n`` holds positions ``i*L ... (i+1)*L - 1`` of a cache of
``n*L``). Every device attends the replicated queries to its slice and keeps the unnormalised
output, the row max and the denominator; the slices are then merged exactly with a
log-sum-exp reduction (``lax.pmax`` of the maxima, ``lax.psum`` of the rescaled sums).

A key at cache position ``p`` is visible to a query at position ``t`` of batch row ``b`` when
``p < cache_length[b]`` and, if causal, ``p <= t``.

Every function also takes ``layer``: the cache is then one buffer of all layers,
``[layers, batch, cache_size, kv_heads, dim]``, and the function reads or writes that layer
in place. Attention reads the cache chunk by chunk with dynamic slices (never copying a layer
out, nor rearranging it chunk-major), and visits only the chunks some query can see.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import ShapeDtypeStruct, lax

from ringattention.blockwise import check_qkv, resolve_chunk


def _layer_shape(cache, layer, name: str):
    """The ``[batch, size, kv_heads, dim]`` shape of one layer of ``cache``."""
    if layer is None:
        return cache.shape
    if cache.ndim != 5:
        raise ValueError(f"{name}: with layer=, the cache must be [layers, batch, size, kv_heads, dim]; got {cache.shape}")
    return cache.shape[1:]


def _check_decode(q, k_cache, v_cache, q_positions, layer, name: str):
    k_shape, v_shape = _layer_shape(k_cache, layer, name), _layer_shape(v_cache, layer, name)
    check_qkv(q, ShapeDtypeStruct(k_shape, k_cache.dtype), ShapeDtypeStruct(v_shape, v_cache.dtype), name)
    if q_positions is None or jnp.shape(q_positions) != q.shape[:2]:
        raise ValueError(
            f"{name}: q_positions must be int [batch, q_len] = {q.shape[:2]}, "
            f"got {None if q_positions is None else jnp.shape(q_positions)}"
        )
    return k_shape


def _cache_lengths(cache_length, batch: int, total: int):
    if cache_length is None:
        return jnp.full((batch,), total, jnp.int32)
    return jnp.broadcast_to(jnp.asarray(cache_length, jnp.int32), (batch,))


def _read_chunk(cache, layer, start, chunk: int):
    """Positions ``start ... start+chunk-1`` of one layer: ``[batch, chunk, kv_heads, dim]``."""
    if layer is None:
        return lax.dynamic_slice_in_dim(cache, start, chunk, axis=1)
    _, batch, _, kv_heads, dim = cache.shape
    zero = jnp.zeros((), jnp.int32)
    begin = (jnp.asarray(layer, jnp.int32), zero, jnp.asarray(start, jnp.int32), zero, zero)
    return lax.dynamic_slice(cache, begin, (1, batch, chunk, kv_heads, dim))[0]


def _partial_attention(q, k_cache, v_cache, layer, cache_shape, q_positions, offset, lengths, causal, scale,
                       key_chunk_size, axis_name=None):
    """Unnormalised attention of ``q`` over one cache slice: ``(acc, row_max, denominator)``.

    The slice holds global positions ``offset ... offset + size - 1``. Shapes: acc
    ``[B, KV, G, Tq, Dv]`` float32, row_max and denominator ``[B, KV, G, Tq]``. Only chunks
    that start before every row's cache length (and, if causal, before the last query) are
    read; chunks wholly visible to every query skip the mask.
    """
    batch, q_len, heads, dim = q.shape
    _, size, kv_heads, _ = cache_shape
    chunk = resolve_chunk(key_chunk_size, size, "key_chunk_size")
    q_BKGTD = (q * jnp.asarray(scale, q.dtype)).reshape(batch, q_len, kv_heads, heads // kv_heads, dim)
    q_BKGTD = q_BKGTD.transpose(0, 2, 3, 1, 4)
    q_positions = jnp.asarray(q_positions, jnp.int32)
    last_visible = jnp.max(q_positions) if causal else jnp.max(lengths)
    limit = jnp.minimum(jnp.max(lengths), last_visible + 1) - offset  # local positions below it matter
    chunks = jnp.clip((limit + chunk - 1) // chunk, 0, size // chunk)
    # A key at local position < always_visible is visible to every query of every row.
    always_visible = jnp.min(lengths) - offset
    if causal:
        always_visible = jnp.minimum(always_visible, jnp.min(q_positions) + 1 - offset)

    def key_chunk(index, carry):
        acc, m_old, l_old = carry
        start = index * chunk
        k = _read_chunk(k_cache, layer, start, chunk)
        v = _read_chunk(v_cache, layer, start, chunk)
        s = jnp.einsum("bkgtd,bckd->bkgtc", q_BKGTD, k, preferred_element_type=jnp.float32)

        def masked(s):
            k_pos = offset + start + jnp.arange(chunk, dtype=jnp.int32)
            visible = k_pos[None, None, :] < lengths[:, None, None]
            if causal:
                visible = visible & (k_pos[None, None, :] <= q_positions[:, :, None])
            return jnp.where(visible[:, None, None], s, -jnp.inf)

        s = lax.cond(start + chunk <= always_visible, lambda s: s, masked, s)
        m_new = jnp.maximum(m_old, jnp.max(s, axis=-1))
        m_new = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m_old - m_new)
        pv = jnp.einsum("bkgtc,bckd->bkgtd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return acc * correction[..., None] + pv, m_new, l_old * correction + jnp.sum(p, axis=-1)

    stats = jnp.zeros_like(q_BKGTD[..., 0], dtype=jnp.float32)
    if axis_name is not None:
        # The queries are replicated but the partial results differ per device.
        stats = lax.pcast(stats, axis_name, to="varying")
    acc = jnp.broadcast_to(stats[..., None], stats.shape + (v_cache.shape[-1],))
    return lax.fori_loop(0, chunks, key_chunk, (acc, stats - jnp.inf, stats))


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
    softmax_scale: float | None = None,
    key_chunk_size: int = 512,
    layer=None,
):
    """Attention of a few queries over a whole (unsharded) key/value cache.

    Args:
      q: ``[batch, q_len, heads, dim]``.
      k_cache, v_cache: ``[batch, cache_size, kv_heads, dim]``; ``heads % kv_heads == 0``.
        With ``layer``, ``[layers, batch, cache_size, kv_heads, dim]``.
      q_positions: int ``[batch, q_len]``, the cache positions of the queries.
      cache_length: int scalar or ``[batch]``: positions ``>= cache_length`` are empty and
        never attended. None means the whole cache is valid.
      causal: a query at position ``t`` sees cache positions ``<= t`` only.
      softmax_scale: logit multiplier, default ``dim ** -0.5``.
      key_chunk_size: cache positions per chunk (clamped to ``cache_size``, must divide it).
      layer: int (or traced int32) index of the layer to attend to in an all-layer cache;
        read in place, never copied out.

    Returns ``[batch, q_len, heads, dim_v]`` in ``q.dtype``; rows that see nothing are 0.
    """
    shape = _check_decode(q, k_cache, v_cache, q_positions, layer, "decode_attention")
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    lengths = _cache_lengths(cache_length, q.shape[0], shape[1])
    acc, _, l = _partial_attention(q, k_cache, v_cache, layer, shape, q_positions, 0, lengths, causal, scale,
                                   key_chunk_size)
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
    softmax_scale: float | None = None,
    key_chunk_size: int = 512,
    layer=None,
):
    """Decode attention over a cache sharded along ``axis_name``; call inside ``jax.shard_map``.

    Args:
      q: ``[batch, q_len, heads, dim]``, the same (replicated) on every device.
      k_cache, v_cache: this device's slice ``[batch, cache_local, kv_heads, dim]``; device
        ``i`` holds global positions ``i*cache_local ... (i+1)*cache_local - 1``. With
        ``layer``, ``[layers, batch, cache_local, kv_heads, dim]``.
      axis_name: the mesh axis the cache is sharded over.
      q_positions: int ``[batch, q_len]`` global positions of the queries (replicated).
      cache_length: int scalar or ``[batch]`` global count of filled positions (replicated);
        None means the whole cache is valid.
      causal, softmax_scale, key_chunk_size, layer: as in :func:`decode_attention`
        (``key_chunk_size`` applies to the local slice).

    Returns ``[batch, q_len, heads, dim_v]`` in ``q.dtype``, identical on every device and
    equal to :func:`decode_attention` over the gathered cache.
    """
    shape = _check_decode(q, k_cache, v_cache, q_positions, layer, "ring_decode_attention")
    cache_local = shape[1]
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    lengths = _cache_lengths(cache_length, q.shape[0], cache_local * lax.axis_size(axis_name))
    offset = lax.axis_index(axis_name) * cache_local
    acc, m, l = _partial_attention(q, k_cache, v_cache, layer, shape, q_positions, offset, lengths, causal, scale,
                                   key_chunk_size, axis_name)
    # Exact merge: rescale every slice to the global row max, then sum.
    m_global = lax.pmax(m, axis_name)
    m_global = jnp.where(m_global == -jnp.inf, 0.0, m_global)
    correction = jnp.exp(m - m_global)
    l = lax.psum(l * correction, axis_name)
    acc = lax.psum(acc * correction[..., None], axis_name)
    return _normalise(acc, l, q)


def _scatter_rows(cache, new, local_index, layer):
    """Writes ``new [batch, new_len, ...]`` at ``local_index [batch, new_len]`` of every row, in
    place; indices equal to the cache size are out of bounds and dropped by ``mode="drop"``."""
    batch_index = jnp.arange(new.shape[0])[:, None]
    index = (batch_index, local_index) if layer is None else (jnp.asarray(layer, jnp.int32), batch_index, local_index)
    return cache.at[index].set(new.astype(cache.dtype), mode="drop")


def _check_update(k_cache, v_cache, k_new, v_new, positions, layer, name: str):
    k_shape, v_shape = _layer_shape(k_cache, layer, name), _layer_shape(v_cache, layer, name)
    if k_new.shape != v_new.shape[:-1] + (k_new.shape[-1],) or k_new.shape[:2] != jnp.shape(positions):
        raise ValueError(
            f"{name}: k_new {k_new.shape} and v_new {v_new.shape} must be [batch, new_len, kv_heads, dim] "
            f"with positions [batch, new_len], got positions {jnp.shape(positions)}"
        )
    if k_shape[0] != k_new.shape[0] or k_shape[2:] != k_new.shape[2:] or v_shape[2:] != v_new.shape[2:]:
        raise ValueError(
            f"{name}: new entries k {k_new.shape} / v {v_new.shape} do not fit caches "
            f"k {k_cache.shape} / v {v_cache.shape}" + ("" if layer is None else " at a layer index")
        )
    return k_shape[1]


def _write(k_cache, v_cache, k_new, v_new, local_positions, size: int, layer):
    local = jnp.asarray(local_positions, jnp.int32)
    index = jnp.where((local >= 0) & (local < size), local, size)
    return _scatter_rows(k_cache, k_new, index, layer), _scatter_rows(v_cache, v_new, index, layer)


def update_cache(k_cache, v_cache, k_new, v_new, positions, *, layer=None):
    """Write ``k_new``/``v_new [batch, new_len, kv_heads, dim]`` at int ``positions [batch, new_len]``.

    With ``layer``, the caches are ``[layers, batch, cache_size, kv_heads, dim]`` and only that
    layer is written (one scatter, in place when the buffers are donated or loop-carried).
    Returns the updated ``(k_cache, v_cache)``. Positions outside ``[0, cache_size)`` (such as
    -1 for padding) are not written.
    """
    size = _check_update(k_cache, v_cache, k_new, v_new, positions, layer, "update_cache")
    return _write(k_cache, v_cache, k_new, v_new, positions, size, layer)


def update_sharded_cache(k_cache, v_cache, k_new, v_new, positions, *, axis_name: str, layer=None):
    """Write new keys/values into the cache slice that owns their global positions.

    Call inside ``jax.shard_map``. ``k_cache``/``v_cache`` are this device's slice
    ``[batch, cache_local, kv_heads, dim]`` (device ``i`` owns positions
    ``i*cache_local ... (i+1)*cache_local - 1``), or with ``layer`` the slice of every layer
    ``[layers, batch, cache_local, kv_heads, dim]`` of which only that layer is written;
    ``k_new``/``v_new`` ``[batch, new_len, kv_heads, dim]`` and int ``positions [batch, new_len]``
    are replicated. Each device writes only the entries whose position it owns (negative
    positions, such as -1 for padding, belong to no device) and leaves every other entry of its
    slice unchanged. Returns the updated local ``(k_cache, v_cache)``.
    """
    cache_local = _check_update(k_cache, v_cache, k_new, v_new, positions, layer, "update_sharded_cache")
    positions = jnp.asarray(positions, jnp.int32)
    local = jnp.where(positions >= 0, positions - lax.axis_index(axis_name) * cache_local, -1)
    return _write(k_cache, v_cache, k_new, v_new, local, cache_local, layer)
