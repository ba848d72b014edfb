"""Ring attention: exact attention over a sequence sharded across the devices of a mesh axis.

Call :func:`ring_attention` inside ``jax.shard_map`` with the sequence axis sharded over
``axis_name``. Each device keeps its query block; key/value blocks (with their segment ids)
travel around the ring with ``lax.ppermute``, one hop per step, and every device folds the
block it holds into an online softmax. The backward pass is a second ring pass in which the
key/value gradients travel with their blocks and arrive home after the last hop.

Blocks a causal mask hides completely are skipped with ``lax.switch`` (no FLOPs). The
``layout`` argument says how the global sequence was permuted before sharding (see
:mod:`ringattention.layout`); the kernel rebuilds each token's original position from the
layout, its device index and the ring step, so the causal mask always compares original
positions. With ``"zigzag"`` or ``"striped"`` every device computes the same number of blocks
at every step; :func:`ring_schedule` counts them with the kernel's own predicate.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ringattention.blockwise import (
    SKIP,
    KernelConfig,
    backward_step,
    block_kinds,
    check_qkv,
    chunk_keys,
    chunk_positions,
    chunk_queries,
    chunk_segments,
    finalize,
    forward_step,
    init_state,
    merge_kv_mask,
    query_grads_inputs,
    resolve_chunk,
    swap_last,
    unchunk_keys,
    unchunk_queries,
)
from ringattention.layout import LAYOUTS, layout_positions, shard_positions


def _shift(tree, axis_name: str, axis_size: int):
    """Send every leaf to the next device of the ring (device i receives from i - 1)."""
    perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]
    return jax.tree.map(lambda x: lax.ppermute(x, axis_name, perm), tree)


def _key_positions(cfg: KernelConfig, me, step, axis_size: int, local_len: int):
    """Chunked original positions of the key block a device holds at ``step``."""
    source = (me - step) % axis_size
    return chunk_positions(shard_positions(cfg.layout, source, axis_size, local_len), cfg.key_chunk_size)


def _query_positions(cfg: KernelConfig, me, axis_size: int, local_len: int, groups: int):
    positions = shard_positions(cfg.layout, me, axis_size, local_len)
    return chunk_positions(positions, cfg.query_chunk_size, groups)


def _ring_forward_impl(q, k, v, q_seg, k_seg, cfg: KernelConfig):
    """Forward ring pass. Returns ``(out, residuals, computed_per_step [axis_size])``."""
    axis_size = lax.axis_size(cfg.axis_name)
    me = lax.axis_index(cfg.axis_name)
    local_len, groups = q.shape[1], q.shape[2] // k.shape[2]
    cq, ck = cfg.query_chunk_size, cfg.key_chunk_size
    q_c = chunk_queries(q * jnp.asarray(cfg.softmax_scale, q.dtype), k.shape[2], cq)
    q_pos_c = _query_positions(cfg, me, axis_size, local_len, groups)
    q_seg_c = chunk_segments(q_seg, cq, groups)
    # Keys travel transposed, the layout the score matmul wants.
    kv_c = (chunk_keys(k, ck, transpose=True), chunk_keys(v, ck), chunk_segments(k_seg, ck))

    def fold(state, step, kv):
        k_t_c, v_c, k_seg_c = kv
        k_pos_c = _key_positions(cfg, me, step, axis_size, local_len)
        return forward_step(state, q_c, q_pos_c, q_seg_c, k_t_c, v_c, k_pos_c, k_seg_c, cfg.causal)

    state, computed0 = fold(init_state(q_c, v.shape[-1]), 0, kv_c)
    counts = jnp.zeros((axis_size,), jnp.int32).at[0].set(computed0)

    def ring_step(step, carry):
        state, kv, counts = carry
        # The block from step 0 is the device's own; it needs no hop, so hops = steps - 1.
        kv = _shift(kv, cfg.axis_name, axis_size)
        state, computed = fold(state, step, kv)
        return state, kv, counts.at[step].set(computed)

    state, _, counts = lax.fori_loop(1, axis_size, ring_step, (state, kv_c, counts))
    out_c, lse_c = finalize(state, q.dtype)
    residuals = (q_c, kv_c, q_seg_c, out_c, lse_c)
    return unchunk_queries(out_c, cq), residuals, counts


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _ring_core(q, k, v, q_seg, k_seg, cfg):
    return _ring_forward_impl(q, k, v, q_seg, k_seg, cfg)[0]


def _ring_core_fwd(q, k, v, q_seg, k_seg, cfg):
    out, residuals, _ = _ring_forward_impl(q, k, v, q_seg, k_seg, cfg)
    return out, residuals


def _ring_core_bwd(cfg, residuals, g):
    q_c, (k_t_c, v_c, k_seg_c), q_seg_c, out_c, lse_c = residuals
    axis_size = lax.axis_size(cfg.axis_name)
    me = lax.axis_index(cfg.axis_name)
    cq = cfg.query_chunk_size
    local_len, groups = q_c.shape[0] * cq, q_c.shape[3] // cq
    q_pos_c = _query_positions(cfg, me, axis_size, local_len, groups)
    do_c = chunk_queries(g.astype(out_c.dtype), k_t_c.shape[2], cq)
    qg = query_grads_inputs(q_c, do_c, out_c, lse_c, q_pos_c, q_seg_c)

    def fold(grads, step, k_c, v_t_c, k_seg_c):
        k_pos_c = _key_positions(cfg, me, step, axis_size, local_len)
        return backward_step(grads, qg, k_c, v_t_c, k_pos_c, k_seg_c, cfg.causal)

    # The backward pass wants keys untransposed and values transposed.
    k_c, v_t_c = swap_last(k_t_c), swap_last(v_c)
    grads = (jnp.zeros_like(q_c, jnp.float32), jnp.zeros_like(k_t_c, jnp.float32), jnp.zeros_like(v_t_c, jnp.float32))
    dq_c, dk_t_c, dv_t_c = fold(grads, 0, k_c, v_t_c, k_seg_c)

    def ring_step(step, carry):
        dq_c, travelling = carry
        # dK/dV travel with the block they belong to.
        k_c, v_t_c, k_seg_c, dk_t_c, dv_t_c = _shift(travelling, cfg.axis_name, axis_size)
        dq_c, dk_t_c, dv_t_c = fold((dq_c, dk_t_c, dv_t_c), step, k_c, v_t_c, k_seg_c)
        return dq_c, (k_c, v_t_c, k_seg_c, dk_t_c, dv_t_c)

    travelling = (k_c, v_t_c, k_seg_c, dk_t_c, dv_t_c)
    dq_c, (_, _, _, dk_t_c, dv_t_c) = lax.fori_loop(1, axis_size, ring_step, (dq_c, travelling))
    # One last hop brings each block's gradient back to the device that owns the block.
    dk_t_c, dv_t_c = _shift((dk_t_c, dv_t_c), cfg.axis_name, axis_size)
    dq = unchunk_queries(dq_c * cfg.softmax_scale, cq).astype(q_c.dtype)
    dk = unchunk_keys(dk_t_c, transposed=True).astype(k_t_c.dtype)
    dv = unchunk_keys(dv_t_c, transposed=True).astype(v_c.dtype)
    return dq, dk, dv, None, None


_ring_core.defvjp(_ring_core_fwd, _ring_core_bwd)


def _ring_config(q, k, v, axis_name, causal, query_chunk_size, key_chunk_size, softmax_scale, layout):
    check_qkv(q, k, v, "ring_attention")
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    local_len = q.shape[1]
    if k.shape[1] != local_len:
        raise ValueError(
            f"ring_attention: local query length {local_len} differs from local key length "
            f"{k.shape[1]}; shard q, k and v the same way along the sequence axis"
        )
    limit = local_len
    if layout == "zigzag":
        if local_len % 2:
            raise ValueError(
                f"layout 'zigzag' needs an even local length, got {local_len}; pad the global "
                "sequence to a multiple of 2 x the number of devices"
            )
        # A chunk must not straddle the two zigzag pieces, or no block could be skipped.
        limit = local_len // 2
    local_name = "local sequence length (per device)"
    cq = resolve_chunk(query_chunk_size, local_len, "query_chunk_size", limit, local_name)
    ck = resolve_chunk(key_chunk_size, local_len, "key_chunk_size", limit, local_name)
    if layout == "zigzag" and (limit % cq or limit % ck):
        raise ValueError(
            f"layout 'zigzag': query_chunk_size={cq} and key_chunk_size={ck} must divide half the "
            f"local length ({limit})"
        )
    scale = float(q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    return KernelConfig(bool(causal), cq, ck, scale, axis_name, layout)


def ring_attention(
    q,
    k,
    v,
    *,
    axis_name: str,
    causal: bool = True,
    segment_ids=None,
    kv_mask=None,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
    softmax_scale: float | None = None,
    layout: str = "contiguous",
    return_stats: bool = False,
):
    """Exact attention over a sequence sharded along ``axis_name``; call inside ``jax.shard_map``.

    Args (all local shards):
      q: ``[batch, seq_local, heads, dim]``.
      k, v: ``[batch, seq_local, kv_heads, dim]``; ``heads % kv_heads == 0`` (grouped-query
        attention without repeating K/V).
      axis_name: the mesh axis the sequence is sharded over; the ring has that axis's size.
      causal: mask by original global token position.
      segment_ids: int ``[batch, seq_local]``, this device's shard of the global segment ids
        (in the same layout as the tokens). Equal ids attend; id 0 is padding, never attended
        and attending nothing. They travel around the ring with K/V.
      kv_mask: optional bool ``[batch, seq_local]``; False keys are treated as padding.
      query_chunk_size, key_chunk_size: chunk lengths inside a device. Values above the local
        length (half the local length for ``"zigzag"``) are clamped to it; values that do not
        divide it raise ValueError.
      softmax_scale: logit multiplier, default ``dim ** -0.5``.
      layout: ``"contiguous"`` (device i holds tokens ``i*S/n ... (i+1)*S/n - 1``),
        ``"zigzag"`` or ``"striped"``; the global arrays must have been permuted with
        ``to_layout(x, layout, n)`` before sharding (see :mod:`ringattention.layout`).
      return_stats: also return int32 ``[axis_size]``, the number of (query chunk, key chunk)
        blocks this device computed at each ring step, as counted by the kernel itself. This
        path runs the forward pass only and is not differentiable.

    Returns:
      ``[batch, seq_local, heads, dim]`` in ``q.dtype`` (and the counts if ``return_stats``).
      Rows without a visible key are 0. Differentiable in q, k, v; the backward pass is a
      second ring pass.
    """
    cfg = _ring_config(q, k, v, axis_name, causal, query_chunk_size, key_chunk_size, softmax_scale, layout)
    batch, local_len = q.shape[:2]
    q_seg, k_seg = merge_kv_mask(segment_ids, None, kv_mask, local_len, local_len, batch)
    if return_stats:
        out, _, counts = _ring_forward_impl(q, k, v, q_seg, k_seg, cfg)
        return out, counts
    return _ring_core(q, k, v, q_seg, k_seg, cfg)


def ring_schedule(
    seq_len: int,
    num_shards: int,
    *,
    layout: str = "contiguous",
    causal: bool = True,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
) -> np.ndarray:
    """Blocks each device computes at each ring step, ``[num_shards, num_shards]`` int (NumPy).

    Entry ``[device, step]`` applies the kernel's own skip predicate (``block_kinds``) to the
    original positions the layout assigns, without running attention, so it predicts
    ``ring_attention(..., return_stats=True)`` for inputs without segment ids.
    """
    positions = layout_positions(seq_len, layout, num_shards)
    local_len = seq_len // num_shards
    limit = local_len // 2 if layout == "zigzag" else local_len
    cq = resolve_chunk(query_chunk_size, local_len, "query_chunk_size", limit)
    ck = resolve_chunk(key_chunk_size, local_len, "key_chunk_size", limit)
    shards = positions.reshape(num_shards, local_len)
    counts = np.zeros((num_shards, num_shards), np.int64)
    for device in range(num_shards):
        for step in range(num_shards):
            source = (device - step) % num_shards
            kinds = block_kinds(shards[device].reshape(-1, cq), shards[source].reshape(-1, ck), causal, xp=np)
            counts[device, step] = int(np.sum(kinds != SKIP))
    return counts
