"""Memory-efficient exact attention on one device, and the block kernel the ring reuses.

Queries and keys are cut into chunks; each (query chunk, key chunk) block is one of three kinds,
decided from the chunks' original token positions and segment ids before any FLOP is spent:

- ``SKIP``: every pair is masked (a future key block under a causal mask, or disjoint
  segments); ``lax.switch`` jumps over it, so it costs nothing.
- ``FULL``: every pair is visible; no mask is built.
- ``MASKED``: some pairs are masked; the mask is built from two position vectors and two
  segment-id vectors of the chunk only.

An online softmax keeps a running max and denominator per query row in float32 (also for bf16
inputs). The backward pass is a hand-written custom VJP that recomputes each block's
probabilities from the saved log-sum-exp, so memory is O(S * chunk), never O(S^2).

Grouped-query attention never repeats K/V: the ``G`` query heads that share a key/value head
are stacked into one row axis of ``M = G * cq`` rows, so one matmul serves them all.

Internally every array is kept "chunk-major": the chunk index leads so that ``lax.scan`` walks
it without copies (queries ``[nq, B, KV, M, D]``, keys ``[nk, B, KV, ck, D]`` or transposed
``[nk, B, KV, D, ck]``, positions ``[n, M or ck]``, segment ids ``[n, B, M or ck]``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SKIP, FULL, MASKED = 0, 1, 2
_BIG_ID = np.iinfo(np.int32).max


class KernelConfig(NamedTuple):
    """Static settings of one attention call (hashable, so it can be a custom_vjp nondiff arg)."""

    causal: bool
    query_chunk_size: int
    key_chunk_size: int
    softmax_scale: float
    axis_name: str | None = None
    layout: str = "contiguous"


# ----------------------------------------------------------------------------- validation


def check_qkv(q, k, v, name: str = "attention") -> None:
    """Check ``q [B, Tq, H, D]``, ``k [B, Tk, KV, D]``, ``v [B, Tk, KV, Dv]``; raise ValueError."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{name}: q, k, v must be [batch, seq, heads, dim]; got shapes "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"{name}: shapes do not fit together: q {q.shape}, k {k.shape}, v {v.shape} "
            "(need equal batch, equal k/v length and heads, equal q/k head dim)"
        )
    if q.shape[2] % k.shape[2]:
        raise ValueError(
            f"{name}: {q.shape[2]} query heads are not a multiple of {k.shape[2]} key/value "
            "heads; grouped-query attention needs heads % kv_heads == 0"
        )


def resolve_chunk(
    chunk_size: int, length: int, what: str, limit: int | None = None, length_name: str = "sequence length"
) -> int:
    """Clamp ``chunk_size`` to ``limit`` (default ``length``) and check it divides ``length``.

    A chunk larger than the sequence it cuts is clamped down, because one chunk then covers it
    all; a chunk that does not divide the length is refused with a ValueError.
    """
    limit = length if limit is None else limit
    if chunk_size < 1:
        raise ValueError(f"{what}={chunk_size} must be a positive integer")
    chunk_size = min(chunk_size, limit)
    if length % chunk_size:
        raise ValueError(
            f"{what}={chunk_size} does not divide the {length_name} {length}; "
            f"choose a {what} that divides {length} or pad the sequence to a multiple of {chunk_size}"
        )
    return chunk_size


def merge_kv_mask(segment_ids, kv_segment_ids, kv_mask, q_len: int, kv_len: int, batch: int):
    """Fold the optional ``kv_mask`` into segment ids; returns ``(q_seg, kv_seg)`` or ``(None, None)``.

    Keys whose mask is False get segment id 0 (padding), which no query attends to.
    """
    if segment_ids is None and kv_segment_ids is None and kv_mask is None:
        return None, None
    if segment_ids is not None and kv_segment_ids is None:
        if q_len != kv_len:
            raise ValueError(
                f"segment_ids covers {q_len} queries but there are {kv_len} keys; "
                "pass kv_segment_ids for the keys as well"
            )
        kv_segment_ids = segment_ids
    if segment_ids is None:
        segment_ids = jnp.ones((batch, q_len), jnp.int32)
    if kv_segment_ids is None:
        kv_segment_ids = jnp.ones((batch, kv_len), jnp.int32)
    for name, ids, length in (("segment_ids", segment_ids, q_len), ("kv_segment_ids", kv_segment_ids, kv_len)):
        if ids.shape != (batch, length):
            raise ValueError(f"{name} has shape {ids.shape}; expected [batch, seq] = {(batch, length)}")
    segment_ids = segment_ids.astype(jnp.int32)
    kv_segment_ids = kv_segment_ids.astype(jnp.int32)
    if kv_mask is not None:
        if kv_mask.shape != (batch, kv_len):
            raise ValueError(f"kv_mask has shape {kv_mask.shape}; expected [batch, seq_k] = {(batch, kv_len)}")
        kv_segment_ids = jnp.where(kv_mask, kv_segment_ids, 0)
    return segment_ids, kv_segment_ids


# ----------------------------------------------------------------------------- chunk layout
#
# Matmul operands are laid out so that every dot is a plain batched [M, K] x [K, N] product:
# XLA's CPU backend otherwise materialises a transpose of the [cq, ck] score block per block.
# Queries of the G heads that share a KV head are stacked into one row axis M = G * cq.


def chunk_queries(q_BTHD, num_kv_heads: int, chunk: int):
    """``[B, T, H, D]`` -> ``[T/c, B, KV, G*c, D]``; row ``g*c + i`` is head ``g``, token ``i``."""
    b, t, h, d = q_BTHD.shape
    g = h // num_kv_heads
    x = q_BTHD.reshape(b, t // chunk, chunk, num_kv_heads, g, d).transpose(1, 0, 3, 4, 2, 5)
    return x.reshape(t // chunk, b, num_kv_heads, g * chunk, d)


def unchunk_queries(x_NBKMD, chunk: int):
    """Inverse of :func:`chunk_queries`."""
    n, b, kv, m, d = x_NBKMD.shape
    g = m // chunk
    return x_NBKMD.reshape(n, b, kv, g, chunk, d).transpose(1, 0, 4, 2, 3, 5).reshape(b, n * chunk, kv * g, d)


def chunk_keys(k_BTKD, chunk: int, transpose: bool = False):
    """``[B, T, KV, D]`` -> ``[T/c, B, KV, c, D]``, or ``[T/c, B, KV, D, c]`` if ``transpose``."""
    b, t, kv, d = k_BTKD.shape
    x = k_BTKD.reshape(b, t // chunk, chunk, kv, d)
    return x.transpose(1, 0, 3, 4, 2) if transpose else x.transpose(1, 0, 3, 2, 4)


def unchunk_keys(x, transposed: bool = False):
    """Inverse of :func:`chunk_keys`."""
    if transposed:
        n, b, kv, d, c = x.shape
        return x.transpose(1, 0, 4, 2, 3).reshape(b, n * c, kv, d)
    n, b, kv, c, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, n * c, kv, d)


def swap_last(x):
    """Swap the two minor axes (``[..., c, D]`` <-> ``[..., D, c]``)."""
    return jnp.swapaxes(x, -1, -2)


def chunk_positions(pos_T, chunk: int, groups: int = 1):
    """``[T]`` -> ``[T/c, groups*c]`` (repeated per query head group, matching the row axis)."""
    x = pos_T.reshape(-1, chunk)
    return jnp.tile(x, (1, groups)) if groups > 1 else x


def chunk_segments(seg_BT, chunk: int, groups: int = 1):
    """``[B, T]`` -> ``[T/c, B, groups*c]``; None stays None."""
    if seg_BT is None:
        return None
    b, t = seg_BT.shape
    x = seg_BT.reshape(b, t // chunk, chunk).transpose(1, 0, 2)
    return jnp.tile(x, (1, 1, groups)) if groups > 1 else x


# ----------------------------------------------------------------------------- block kinds


def _segment_summary(seg_NBC, xp):
    """Per chunk and batch row: (lowest non-padding id, highest id, all one non-padding id)."""
    low = xp.min(xp.where(seg_NBC == 0, _BIG_ID, seg_NBC), axis=-1)
    high = xp.max(seg_NBC, axis=-1)
    uniform = (xp.min(seg_NBC, axis=-1) == high) & (high > 0)
    return low, high, uniform


def block_kinds(q_pos_NC, k_pos_NC, causal: bool, q_seg_NBC=None, k_seg_NBC=None, xp=jnp):
    """Kind (SKIP, FULL or MASKED) of every (query chunk, key chunk) block, ``[nq, nk]`` int32.

    This is the one predicate that decides which blocks the kernel computes; it runs on NumPy
    arrays (``xp=np``) as well, so the ring schedule can be counted without running attention.
    Only chunk ranges are compared, so it is exact about SKIP and FULL and conservative
    otherwise: a block it calls MASKED may still be all visible, never the reverse.
    """
    q_lo, q_hi = xp.min(q_pos_NC, axis=-1)[:, None], xp.max(q_pos_NC, axis=-1)[:, None]
    k_lo, k_hi = xp.min(k_pos_NC, axis=-1)[None, :], xp.max(k_pos_NC, axis=-1)[None, :]
    shape = (q_pos_NC.shape[0], k_pos_NC.shape[0])
    if causal:
        any_visible = q_hi >= k_lo
        all_visible = q_lo >= k_hi
    else:
        any_visible = xp.ones(shape, bool)
        all_visible = xp.ones(shape, bool)
    if q_seg_NBC is not None:
        ql, qh, qu = (a[:, None, :] for a in _segment_summary(q_seg_NBC, xp))
        kl, kh, ku = (a[None, :, :] for a in _segment_summary(k_seg_NBC, xp))
        any_visible = any_visible & xp.any((ql <= kh) & (kl <= qh), axis=-1)
        all_visible = all_visible & xp.all(qu & ku & (qh == kh), axis=-1)
    kinds = xp.where(any_visible, xp.where(all_visible, FULL, MASKED), SKIP)
    return kinds.astype(xp.int32)


def count_computed(kinds_QK):
    """Number of blocks that are not skipped."""
    return jnp.sum(kinds_QK != SKIP).astype(jnp.int32)


def _block_mask(q_pos_M, k_pos_C, q_seg_BM, k_seg_BC, causal: bool):
    """Visibility of one block, broadcastable to ``[B, KV, M, ck]``."""
    mask = None
    if causal:
        mask = (q_pos_M[:, None] >= k_pos_C[None, :])[None, None]
    if q_seg_BM is not None:
        seg = (q_seg_BM[:, :, None] == k_seg_BC[:, None, :]) & (k_seg_BC[:, None, :] != 0)
        seg = seg[:, None]
        mask = seg if mask is None else mask & seg
    return mask


def _can_mask(causal: bool, q_seg) -> bool:
    return causal or q_seg is not None


def _dot(a, b):
    """Batched ``[..., M, K] x [..., K, N]`` with float32 accumulation."""
    return jnp.einsum("bkmx,bkxn->bkmn", a, b, preferred_element_type=jnp.float32)


# ----------------------------------------------------------------------------- forward


def _tie_to_data(data, *masks):
    """Make mask inputs (positions, segment ids) look data-dependent to JAX's partial evaluator.

    Differentiating a layer stack under ``lax.scan`` hoists every value that depends only on
    loop constants out of the loop and keeps it for the backward pass. Positions and segment
    ids are such constants, so without this the masks of every (query chunk, key chunk) block
    would be precomputed and stored: O(S^2) memory. An optimization barrier joins them to the
    queries, which vary per layer, so masks are built block by block inside the loop.
    """
    return lax.optimization_barrier((data, *masks))


def init_state(q_chunks, v_dim: int):
    """Zero accumulator, -inf running max and zero denominator for chunked queries."""
    stats = jnp.zeros_like(q_chunks[..., 0], dtype=jnp.float32)
    acc = jnp.broadcast_to(stats[..., None], stats.shape + (v_dim,))
    return acc, stats - jnp.inf, stats


def _fwd_block(kind, carry, q, k_t, v, q_pos, k_pos, q_seg, k_seg, causal: bool):
    def compute(masked):
        acc, m_old, l_old = carry
        s = _dot(q, k_t)
        if masked:
            s = jnp.where(_block_mask(q_pos, k_pos, q_seg, k_seg, causal), s, -jnp.inf)
        m_new = jnp.maximum(m_old, jnp.max(s, axis=-1))
        if masked:
            # A row may have seen no visible key yet; keep exp() away from (-inf) - (-inf).
            m_new = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp(s - m_new[..., None])
        correction = jnp.exp(m_old - m_new)
        l_new = l_old * correction + jnp.sum(p, axis=-1)
        return acc * correction[..., None] + _dot(p.astype(v.dtype), v), m_new, l_new

    if not _can_mask(causal, q_seg):
        return compute(False)
    return lax.switch(kind, [lambda: carry, lambda: compute(False), lambda: compute(True)])


def forward_step(state, q_c, q_pos_c, q_seg_c, k_t_c, v_c, k_pos_c, k_seg_c, causal: bool):
    """Fold one set of key chunks into the online-softmax ``state`` of all query chunks.

    ``q_c [nq, B, KV, M, D]`` (already scaled), ``k_t_c [nk, B, KV, D, ck]`` (keys transposed),
    ``v_c [nk, B, KV, ck, Dv]``. Returns ``(state, computed)`` where ``computed`` counts the
    blocks that were not skipped.
    """
    q_c, q_pos_c, q_seg_c, k_pos_c, k_seg_c = _tie_to_data(q_c, q_pos_c, q_seg_c, k_pos_c, k_seg_c)
    kinds = block_kinds(q_pos_c, k_pos_c, causal, q_seg_c, k_seg_c)

    def query_chunk(_, xs):
        q, q_pos, q_seg, acc, m, l, kind_row = xs

        def key_chunk(carry, ys):
            k_t, v, k_pos, k_seg, kind = ys
            return _fwd_block(kind, carry, q, k_t, v, q_pos, k_pos, q_seg, k_seg, causal), None

        carry, _ = lax.scan(key_chunk, (acc, m, l), (k_t_c, v_c, k_pos_c, k_seg_c, kind_row))
        return None, carry

    _, state = lax.scan(query_chunk, None, (q_c, q_pos_c, q_seg_c, *state, kinds))
    return state, count_computed(kinds)


def finalize(state, dtype):
    """Normalise the accumulator; rows that saw no visible key give 0 and log-sum-exp +inf."""
    acc, m, l = state
    has_key = l > 0
    out = acc / jnp.where(has_key, l, 1.0)[..., None]
    out = jnp.where(has_key[..., None], out, 0.0).astype(dtype)
    # +inf makes exp(s - lse) exactly 0 in the backward pass for such rows.
    lse = jnp.where(has_key, m + jnp.log(jnp.where(has_key, l, 1.0)), jnp.inf)
    return out, lse


# ----------------------------------------------------------------------------- backward


class QueryGrads(NamedTuple):
    """Per-query-chunk inputs of the backward pass, all chunk-major."""

    q: jax.Array  # [nq, B, KV, M, D], scaled
    q_t: jax.Array  # [nq, B, KV, D, M]
    do: jax.Array  # [nq, B, KV, M, Dv]
    do_t: jax.Array  # [nq, B, KV, Dv, M]
    lse: jax.Array  # [nq, B, KV, M]
    delta: jax.Array  # [nq, B, KV, M]
    pos: jax.Array  # [nq, M]
    seg: jax.Array | None  # [nq, B, M]


def query_grads_inputs(q_c, do_c, out_c, lse_c, q_pos_c, q_seg_c) -> QueryGrads:
    """Gather what the backward pass needs per query chunk (transposes are made once here)."""
    delta = jnp.sum(do_c.astype(jnp.float32) * out_c.astype(jnp.float32), axis=-1)
    return QueryGrads(q_c, swap_last(q_c), do_c, swap_last(do_c), lse_c, delta, q_pos_c, q_seg_c)


def _bwd_block(kind, dq, qg, k, k_t, v_t, k_pos, k_seg, causal: bool):
    def compute(masked):
        s = _dot(qg.q, k_t)
        if masked:
            s = jnp.where(_block_mask(qg.pos, k_pos, qg.seg, k_seg, causal), s, -jnp.inf)
        p = jnp.exp(s - qg.lse[..., None])
        ds = p * (_dot(qg.do, v_t) - qg.delta[..., None])
        dq_new = dq + _dot(ds.astype(k.dtype), k)
        # Transposed key gradients keep both matmuls in plain [M, K] x [K, N] form.
        dk_t = _dot(qg.q_t, ds.astype(qg.q.dtype))
        dv_t = _dot(qg.do_t, p.astype(qg.do.dtype))
        return dq_new, dk_t, dv_t

    if not _can_mask(causal, qg.seg):
        return compute(False)

    def skip():
        # zeros_like keeps the operands' varying-over-axis type inside shard_map.
        return dq, jnp.zeros_like(k_t, jnp.float32), jnp.zeros_like(v_t, jnp.float32)

    return lax.switch(kind, [skip, lambda: compute(False), lambda: compute(True)])


def backward_step(grads, qg: QueryGrads, k_c, v_t_c, k_pos_c, k_seg_c, causal: bool):
    """Add one set of key chunks' contributions to ``grads = (dq_c, dk_t_c, dv_t_c)`` (float32).

    ``k_c [nk, B, KV, ck, D]``, ``v_t_c [nk, B, KV, Dv, ck]``; the key gradients are kept
    transposed like ``v_t_c``. The returned dq still lacks the softmax scale (the queries in
    ``qg`` were scaled), dk needs none.
    """
    dq_c, dk_t_c, dv_t_c = grads
    k_t_c = swap_last(k_c)
    kinds = block_kinds(qg.pos, k_pos_c, causal, qg.seg, k_seg_c)

    def query_chunk(carry, xs):
        dk_acc, dv_acc = carry
        qg_chunk, dq, kind_row = xs

        def key_chunk(dq, ys):
            k, k_t, v_t, k_pos, k_seg, kind = ys
            dq, dk_t, dv_t = _bwd_block(kind, dq, qg_chunk, k, k_t, v_t, k_pos, k_seg, causal)
            return dq, (dk_t, dv_t)

        dq, (dk_parts, dv_parts) = lax.scan(key_chunk, dq, (k_c, k_t_c, v_t_c, k_pos_c, k_seg_c, kind_row))
        return (dk_acc + dk_parts, dv_acc + dv_parts), dq

    (dk_t_c, dv_t_c), dq_c = lax.scan(query_chunk, (dk_t_c, dv_t_c), (qg, dq_c, kinds))
    return dq_c, dk_t_c, dv_t_c


# ----------------------------------------------------------------------------- single device


def _blockwise_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg: KernelConfig):
    num_kv = k.shape[2]
    groups = q.shape[2] // num_kv
    cq, ck = cfg.query_chunk_size, cfg.key_chunk_size
    q_c = chunk_queries(q * jnp.asarray(cfg.softmax_scale, q.dtype), num_kv, cq)
    k_t_c, v_c = chunk_keys(k, ck, transpose=True), chunk_keys(v, ck)
    q_pos_c, k_pos_c = chunk_positions(q_pos, cq, groups), chunk_positions(k_pos, ck)
    q_seg_c, k_seg_c = chunk_segments(q_seg, cq, groups), chunk_segments(k_seg, ck)
    state, _ = forward_step(init_state(q_c, v.shape[-1]), q_c, q_pos_c, q_seg_c, k_t_c, v_c, k_pos_c, k_seg_c, cfg.causal)
    out_c, lse_c = finalize(state, q.dtype)
    residuals = (q_c, k_t_c, v_c, q_pos_c, k_pos_c, q_seg_c, k_seg_c, out_c, lse_c)
    return unchunk_queries(out_c, cq), residuals


@partial(jax.custom_vjp, nondiff_argnums=(7,))
def _blockwise_core(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg):
    return _blockwise_forward(q, k, v, q_pos, k_pos, q_seg, k_seg, cfg)[0]


def _blockwise_core_bwd(cfg, residuals, g):
    q_c, k_t_c, v_c, q_pos_c, k_pos_c, q_seg_c, k_seg_c, out_c, lse_c = residuals
    do_c = chunk_queries(g.astype(out_c.dtype), k_t_c.shape[2], cfg.query_chunk_size)
    qg = query_grads_inputs(q_c, do_c, out_c, lse_c, q_pos_c, q_seg_c)
    k_c, v_t_c = swap_last(k_t_c), swap_last(v_c)
    grads = (jnp.zeros_like(q_c, jnp.float32), jnp.zeros_like(k_t_c, jnp.float32), jnp.zeros_like(v_t_c, jnp.float32))
    dq_c, dk_t_c, dv_t_c = backward_step(grads, qg, k_c, v_t_c, k_pos_c, k_seg_c, cfg.causal)
    dq = unchunk_queries(dq_c * cfg.softmax_scale, cfg.query_chunk_size).astype(q_c.dtype)
    dk = unchunk_keys(dk_t_c, transposed=True).astype(k_t_c.dtype)
    dv = unchunk_keys(dv_t_c, transposed=True).astype(v_c.dtype)
    return dq, dk, dv, None, None, None, None


_blockwise_core.defvjp(_blockwise_forward, _blockwise_core_bwd)


def blockwise_attention(
    q,
    k,
    v,
    *,
    causal: bool = True,
    segment_ids=None,
    kv_segment_ids=None,
    kv_mask=None,
    query_chunk_size: int = 512,
    key_chunk_size: int = 512,
    softmax_scale: float | None = None,
    q_positions=None,
    kv_positions=None,
):
    """Exact softmax attention computed chunk by chunk, with memory O(S * chunk).

    Args:
      q: queries ``[batch, q_len, heads, dim]``.
      k, v: keys and values ``[batch, kv_len, kv_heads, dim]`` (``v`` may have another last
        dim); ``heads`` must be a multiple of ``kv_heads`` (grouped-query attention, K/V are
        not repeated).
      causal: query at position ``i`` sees keys at positions ``<= i``.
      segment_ids: int ``[batch, q_len]`` for packed sequences: a query sees only keys with
        the same id; id 0 is padding: no query sees a padding key, and a padding query sees
        nothing. Used for the keys too unless ``kv_segment_ids`` is given.
      kv_segment_ids: int ``[batch, kv_len]`` segment ids of the keys.
      kv_mask: optional bool ``[batch, kv_len]``; False keys are treated as padding.
      query_chunk_size, key_chunk_size: chunk lengths; values above the sequence length are
        clamped to it, values that do not divide it raise ValueError.
      softmax_scale: logit multiplier, default ``dim ** -0.5``.
      q_positions, kv_positions: int ``[q_len]`` / ``[kv_len]`` original token positions for
        the causal mask (for a permuted sequence, e.g. ``layout_positions``). Defaults:
        keys ``0 .. kv_len-1`` and queries aligned to the end, ``kv_len - q_len + i``.

    Returns:
      ``[batch, q_len, heads, dim_v]`` in ``q.dtype``; rows without any visible key are 0.
      Softmax statistics and accumulation are float32 for every input dtype. Differentiable
      in ``q``, ``k``, ``v`` through a custom VJP that recomputes blocks instead of storing
      the attention matrix.
    """
    check_qkv(q, k, v, "blockwise_attention")
    batch, q_len = q.shape[:2]
    kv_len = k.shape[1]
    cq = resolve_chunk(query_chunk_size, q_len, "query_chunk_size")
    ck = resolve_chunk(key_chunk_size, kv_len, "key_chunk_size")
    q_seg, k_seg = merge_kv_mask(segment_ids, kv_segment_ids, kv_mask, q_len, kv_len, batch)
    if q_positions is None:
        q_positions = jnp.arange(q_len, dtype=jnp.int32) + (kv_len - q_len)
    if kv_positions is None:
        kv_positions = jnp.arange(kv_len, dtype=jnp.int32)
    q_positions = jnp.asarray(q_positions, jnp.int32)
    kv_positions = jnp.asarray(kv_positions, jnp.int32)
    if q_positions.shape != (q_len,) or kv_positions.shape != (kv_len,):
        raise ValueError(
            f"q_positions {q_positions.shape} / kv_positions {kv_positions.shape} must be "
            f"[q_len] = ({q_len},) / [kv_len] = ({kv_len},)"
        )
    scale = float(q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale)
    cfg = KernelConfig(causal=bool(causal), query_chunk_size=cq, key_chunk_size=ck, softmax_scale=scale)
    return _blockwise_core(q, k, v, q_positions, kv_positions, q_seg, k_seg, cfg)
