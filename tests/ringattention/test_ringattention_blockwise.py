"""blockwise_attention and dense_attention: values, every gradient, masks, dtypes, memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ring_helpers import assert_close, packed_segments, random_qkv, value_and_grads

from ringattention import blockwise_attention, dense_attention


def _compare(q, k, v, cotangent, rtol=1e-5, **kwargs):
    blockwise = lambda q, k, v: blockwise_attention(q, k, v, **kwargs)
    dense = lambda q, k, v: dense_attention(q, k, v, **kwargs)
    out, grads = jax.jit(lambda *a: value_and_grads(blockwise, *a))(q, k, v, cotangent)
    out_ref, grads_ref = jax.jit(lambda *a: value_and_grads(dense, *a))(q, k, v, cotangent)
    assert_close(out, out_ref, rtol, "output")
    for name, grad, grad_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(grad, grad_ref, rtol, name)
    return out, grads


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("kv_heads", [4, 1], ids=["mha", "gqa"])
@pytest.mark.parametrize("with_segments", [False, True], ids=["plain", "segments"])
def test_blockwise_matches_dense(causal, kv_heads, with_segments):
    q, k, v, cotangent = random_qkv(seq=96, heads=4, kv_heads=kv_heads)
    segments = packed_segments(2, 96, pad=9) if with_segments else None
    out, grads = _compare(q, k, v, cotangent, causal=causal, segment_ids=segments,
                          query_chunk_size=16, key_chunk_size=32)
    if with_segments:
        # Padding queries see no key: exactly zero output and zero dq, no NaN.
        assert np.all(np.asarray(out)[:, -9:] == 0)
        assert np.all(np.asarray(grads[0])[:, -9:] == 0)


def test_kv_mask_and_cross_lengths():
    """Fewer queries than keys (aligned to the end) with key padding through kv_mask."""
    q, _, _, cotangent = random_qkv(seq=32, heads=4, kv_heads=2, seed=1)
    _, k, v, _ = random_qkv(seq=64, heads=4, kv_heads=2, seed=2)
    kv_mask = jnp.arange(64)[None, :] < jnp.array([[50], [64]])
    _compare(q, k, v, cotangent, causal=True, kv_mask=kv_mask, query_chunk_size=16, key_chunk_size=16)


def test_explicit_positions_of_permuted_sequence():
    """Causal masking follows q_positions / kv_positions, not the row order."""
    q, k, v, cotangent = random_qkv(batch=1, seq=64, heads=2, kv_heads=2, seed=3)
    order = jnp.asarray(np.random.default_rng(0).permutation(64), jnp.int32)
    permuted = jax.jit(lambda q, k, v: blockwise_attention(q, k, v, q_positions=order, kv_positions=order,
                                                           query_chunk_size=16, key_chunk_size=16))
    out = permuted(q[:, order], k[:, order], v[:, order])
    assert_close(out, dense_attention(q, k, v)[:, order], 1e-5, "permuted output")


def test_bfloat16_within_bf16_tolerance():
    q, k, v, cotangent = random_qkv(seq=64, heads=4, kv_heads=2, dtype=jnp.bfloat16, seed=4)
    blockwise = lambda q, k, v: blockwise_attention(q, k, v, query_chunk_size=16, key_chunk_size=16)
    out, grads = jax.jit(lambda *a: value_and_grads(blockwise, *a))(q, k, v, cotangent)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    upcast = [x.astype(jnp.float32) for x in (q, k, v)]
    out_ref, grads_ref = jax.jit(lambda *a: value_and_grads(dense_attention, *a))(*upcast, cotangent)
    assert_close(out, out_ref, 2e-2, "bf16 output")
    for name, grad, grad_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(grad, grad_ref, 3e-2, f"bf16 {name}")


def test_chunk_clamped_to_length():
    q, k, v, cotangent = random_qkv(seq=32, heads=2, kv_heads=2, seed=5)
    _compare(q, k, v, cotangent, query_chunk_size=512, key_chunk_size=512)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query_chunk_size=24), "query_chunk_size=24 does not divide the sequence length 64"),
        (dict(key_chunk_size=48), "key_chunk_size=48 does not divide the sequence length 64"),
        (dict(query_chunk_size=0), "query_chunk_size=0 must be a positive integer"),
    ],
)
def test_undivisible_chunks_refused(kwargs, message):
    q, k, v, _ = random_qkv(seq=64, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match=message):
        blockwise_attention(q, k, v, **kwargs)


def test_bad_head_counts_refused():
    q, _, _, _ = random_qkv(seq=16, heads=3, kv_heads=3)
    _, k, v, _ = random_qkv(seq=16, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        blockwise_attention(q, k, v)


def _temp_bytes(attention, seq):
    q, k, v, cotangent = random_qkv(batch=1, seq=seq, heads=2, kv_heads=2, dim=16)
    loss = lambda q, k, v: jnp.sum(attention(q, k, v) * cotangent)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_memory_grows_linearly():
    """Forward+backward temp memory: about 2x per doubling for blockwise, 4x for dense."""
    blockwise = lambda q, k, v: blockwise_attention(q, k, v, query_chunk_size=64, key_chunk_size=64)
    small, large = _temp_bytes(blockwise, 1024), _temp_bytes(blockwise, 2048)
    dense_small, dense_large = _temp_bytes(dense_attention, 1024), _temp_bytes(dense_attention, 2048)
    assert large / small < 2.5, (small, large)
    assert dense_large / dense_small > 3.5, (dense_small, dense_large)
    assert large < dense_large / 8
