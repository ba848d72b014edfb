"""ring_attention on 1, 2, 4 and 8 fake devices: values, every gradient, layouts, balance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ring_helpers import assert_close, make_mesh, packed_segments, random_qkv, ring_harness, value_and_grads

from ringattention import dense_attention, from_layout, ring_attention, ring_schedule, to_layout

CASES = [
    # devices, layout, causal, kv_heads, segments
    (1, "contiguous", True, 4, False),
    (2, "zigzag", True, 2, True),
    (4, "contiguous", True, 4, False),
    (4, "zigzag", True, 4, False),
    (4, "striped", True, 1, False),
    (4, "contiguous", False, 2, True),
    (4, "zigzag", True, 2, True),
    (8, "striped", True, 4, True),
    (8, "zigzag", False, 4, False),
    (8, "contiguous", True, 2, False),
]


@pytest.mark.parametrize(
    "devices, layout, causal, kv_heads, segments", CASES,
    ids=[f"{d}dev-{l}-{'causal' if c else 'bidir'}-kv{h}{'-seg' if s else ''}" for d, l, c, h, s in CASES],
)
def test_ring_matches_dense(devices, layout, causal, kv_heads, segments):
    seq = 128
    q, k, v, cotangent = random_qkv(seq=seq, heads=4, kv_heads=kv_heads, seed=devices)
    segment_ids = packed_segments(2, seq, pad=11) if segments else None
    ring = ring_harness(devices, layout, segment_ids=segment_ids, causal=causal,
                        query_chunk_size=8, key_chunk_size=8)
    dense = lambda q, k, v: dense_attention(q, k, v, causal=causal, segment_ids=segment_ids)
    out, grads = jax.jit(lambda *a: value_and_grads(ring, *a))(q, k, v, cotangent)
    out_ref, grads_ref = jax.jit(lambda *a: value_and_grads(dense, *a))(q, k, v, cotangent)
    assert_close(out, out_ref, 1e-5, "output")
    for name, grad, grad_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(grad, grad_ref, 1e-5, name)
    if segments:
        assert np.all(np.asarray(out)[:, -11:] == 0), "padding queries must output 0"


def test_ring_bfloat16_within_bf16_tolerance():
    q, k, v, cotangent = random_qkv(seq=64, heads=4, kv_heads=2, dtype=jnp.bfloat16, seed=7)
    ring = ring_harness(4, "zigzag", query_chunk_size=8, key_chunk_size=8)
    out, grads = jax.jit(lambda *a: value_and_grads(ring, *a))(q, k, v, cotangent)
    assert out.dtype == jnp.bfloat16
    upcast = [x.astype(jnp.float32) for x in (q, k, v)]
    out_ref, grads_ref = jax.jit(lambda *a: value_and_grads(dense_attention, *a))(*upcast, cotangent)
    assert_close(out, out_ref, 2e-2, "bf16 output")
    for name, grad, grad_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(grad, grad_ref, 3e-2, f"bf16 {name}")


def _kernel_counts(devices, layout, seq, chunk):
    """Blocks each device computed at each ring step, as counted inside the kernel."""
    mesh = make_mesh(devices)
    spec = P(None, "sp")
    q, k, v, _ = random_qkv(batch=1, seq=seq, heads=2, kv_heads=2, dim=8)

    def local(q, k, v):
        _, counts = ring_attention(q, k, v, axis_name="sp", layout=layout, query_chunk_size=chunk,
                                   key_chunk_size=chunk, return_stats=True)
        return counts

    run = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=P("sp")))
    permuted = [to_layout(x, layout, devices) for x in (q, k, v)]
    return np.asarray(run(*permuted)).reshape(devices, devices)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
def test_balanced_layouts_compute_equal_blocks_per_step(layout):
    devices, seq, chunk = 4, 128, 8
    counts = _kernel_counts(devices, layout, seq, chunk)
    np.testing.assert_array_equal(counts, ring_schedule(seq, devices, layout=layout, query_chunk_size=chunk,
                                                        key_chunk_size=chunk))
    blocks_per_step = (seq // devices // chunk) ** 2
    # Causal attention computes about half of all blocks, whatever the layout.
    assert counts.sum() == pytest.approx(devices * devices * blocks_per_step / 2, rel=0.3)
    per_step_spread = counts.max(axis=0) - counts.min(axis=0)
    if layout == "contiguous":
        # Device 0 only ever sees its own block; the last device computes at every step.
        assert counts[0, 1:].sum() == 0 and counts[-1].min() > 0
        assert per_step_spread[1:].min() > 0
    else:
        assert per_step_spread.max() == 0, counts


@pytest.mark.parametrize("devices", [2, 8, 16])
def test_schedule_balance_beyond_four_devices(devices):
    seq = devices * 64
    for layout in ("zigzag", "striped"):
        counts = ring_schedule(seq, devices, layout=layout, query_chunk_size=16, key_chunk_size=16)
        assert (counts == counts[0]).all(), (layout, counts)
    contiguous = ring_schedule(seq, devices, layout="contiguous", query_chunk_size=16, key_chunk_size=16)
    # Total time follows the busiest device at each step: contiguous is far from balanced.
    ideal = contiguous.sum() / devices
    assert contiguous.max(axis=0).sum() > 1.25 * ideal


@pytest.mark.parametrize(
    "devices, layout, seq, kwargs, message",
    [
        (4, "contiguous", 64, dict(query_chunk_size=12),
         r"query_chunk_size=12 does not divide the local sequence length \(per device\) 16"),
        (4, "contiguous", 64, dict(key_chunk_size=5), r"key_chunk_size=5 does not divide the local sequence length"),
        (4, "zigzag", 36, dict(query_chunk_size=4), "layout 'zigzag' needs an even local length, got 9"),
        (4, "zigzag", 48, dict(query_chunk_size=4),
         r"query_chunk_size=4 and key_chunk_size=6 must divide half the local length \(6\)"),
        (4, "diagonal", 64, {}, "layout='diagonal' is not one of"),
    ],
)
def test_undivisible_shapes_refused(devices, layout, seq, kwargs, message):
    mesh = make_mesh(devices)
    spec = P(None, "sp")
    q, k, v, _ = random_qkv(batch=1, seq=seq, heads=2, kv_heads=2, dim=8)
    kwargs.setdefault("key_chunk_size", 512)
    local = lambda q, k, v: ring_attention(q, k, v, axis_name="sp", layout=layout, **kwargs)
    with pytest.raises(ValueError, match=message):
        jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)(q, k, v)


def test_layout_refuses_global_length():
    with pytest.raises(ValueError, match=r"sequence length 100 is not divisible by 8 \(2 x 4 devices"):
        to_layout(jnp.zeros((1, 100)), "zigzag", 4)


def test_ring_on_two_dimensional_mesh_with_batch_sharded():
    """Batch over "dp" and sequence over "sp", as a data+sequence parallel model runs it."""
    mesh = jax.make_mesh((2, 4), ("dp", "sp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    spec = P("dp", "sp")
    q, k, v, cotangent = random_qkv(seq=64, heads=4, kv_heads=2, seed=21)
    segment_ids = packed_segments(2, 64, pad=5)
    local = lambda q, k, v, seg: ring_attention(q, k, v, axis_name="sp", segment_ids=seg, layout="striped",
                                                query_chunk_size=8, key_chunk_size=8)
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, spec), out_specs=spec)
    permute = lambda x: to_layout(x, "striped", 4)

    def attention(q, k, v):
        out = sharded(permute(q), permute(k), permute(v), permute(segment_ids))
        return from_layout(out, "striped", 4)

    out, grads = jax.jit(lambda *a: value_and_grads(attention, *a))(q, k, v, cotangent)
    dense = lambda q, k, v: dense_attention(q, k, v, segment_ids=segment_ids)
    out_ref, grads_ref = jax.jit(lambda *a: value_and_grads(dense, *a))(q, k, v, cotangent)
    assert_close(out, out_ref, 1e-5, "output")
    for name, grad, grad_ref in zip(("dq", "dk", "dv"), grads, grads_ref):
        assert_close(grad, grad_ref, 1e-5, name)


def test_ring_without_vma_checks():
    mesh = make_mesh(2)
    spec = P(None, "sp")
    q, k, v, _ = random_qkv(seq=32, heads=2, kv_heads=2, seed=22)
    local = lambda q, k, v: ring_attention(q, k, v, axis_name="sp", query_chunk_size=8, key_chunk_size=8)
    out = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec, check_vma=False))(q, k, v)
    assert_close(out, dense_attention(q, k, v), 1e-5, "output")
