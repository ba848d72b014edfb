"""Shared helpers for the ringattention tests: meshes, random inputs, a ring harness."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from ringattention import from_layout, ring_attention, to_layout


def make_mesh(num_devices: int):
    """A one-axis mesh named "sp" over the first ``num_devices`` fake CPU devices."""
    return jax.make_mesh((num_devices,), ("sp",), axis_types=(jax.sharding.AxisType.Auto,))


def random_qkv(batch=2, seq=64, heads=4, kv_heads=4, dim=16, dtype=jnp.float32, seed=0):
    """Normal q ``[B, S, H, D]``, k/v ``[B, S, KV, D]`` and a float32 cotangent shaped like q."""
    rng = np.random.default_rng(seed)
    q_shape, kv_shape = (batch, seq, heads, dim), (batch, seq, kv_heads, dim)
    q, k, v = (jnp.asarray(rng.standard_normal(s, dtype=np.float32)).astype(dtype) for s in (q_shape, kv_shape, kv_shape))
    cotangent = jnp.asarray(rng.standard_normal(q_shape, dtype=np.float32))
    return q, k, v, cotangent


def packed_segments(batch: int, seq: int, pad: int = 0) -> jnp.ndarray:
    """Segment ids with several documents per row and ``pad`` trailing padding tokens (id 0)."""
    rows = []
    for row in range(batch):
        cuts = np.sort(np.random.default_rng(row).choice(np.arange(1, seq - pad), size=3, replace=False))
        ids = np.searchsorted(cuts, np.arange(seq), side="right") + 1 + row
        ids[seq - pad:] = 0
        rows.append(ids)
    return jnp.asarray(np.stack(rows), jnp.int32)


def value_and_grads(attention, q, k, v, cotangent):
    """Output of ``attention(q, k, v)`` and the gradients of ``sum(out * cotangent)``."""
    out, vjp = jax.vjp(attention, q, k, v)
    return out, vjp(cotangent.astype(out.dtype))


def ring_harness(num_devices: int, layout: str, segment_ids=None, **kwargs):
    """A function of global (q, k, v) that permutes into ``layout``, runs ring attention
    sharded over ``num_devices`` and un-permutes the output, as a training step would."""
    mesh = make_mesh(num_devices)
    spec = P(None, "sp")

    def local(q, k, v, seg):
        return ring_attention(q, k, v, axis_name="sp", segment_ids=seg, layout=layout, **kwargs)

    sharded = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, None if segment_ids is None else spec),
                            out_specs=spec)

    def attention(q, k, v):
        permute = lambda x: None if x is None else to_layout(x, layout, num_devices)
        out = sharded(permute(q), permute(k), permute(v), permute(segment_ids))
        return from_layout(out, layout, num_devices)

    return attention


def assert_close(actual, expected, rtol=1e-5, what=""):
    """Max abs error relative to the largest reference magnitude is below ``rtol``; no NaN."""
    actual = np.asarray(actual, np.float32)
    expected = np.asarray(expected, np.float32)
    assert not np.isnan(actual).any(), f"{what}: NaN in result"
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    error = float(np.max(np.abs(actual - expected))) / scale
    assert error <= rtol, f"{what}: relative error {error:.2e} > {rtol:.0e}"
