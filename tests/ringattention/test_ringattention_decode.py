"""Decoding against a KV cache: ring (sharded) and single device, and cache updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import PartitionSpec as P
from ring_helpers import assert_close, make_mesh, random_qkv

from ringattention import decode_attention, dense_attention, ring_decode_attention, update_cache, update_sharded_cache

CACHE, DEVICES, Q_LEN = 64, 4, 3
LENGTHS = np.array([37, 50])


def _prefix_reference(q, k, v, causal):
    """Dense attention of each row's queries over that row's filled prefix only."""
    rows = []
    for b, length in enumerate(LENGTHS):
        rows.append(dense_attention(q[b:b + 1], k[b:b + 1, :length], v[b:b + 1, :length], causal=causal))
    return jnp.concatenate(rows)


def _ring_decode(q, k, v, positions, causal):
    mesh = make_mesh(DEVICES)
    cache_spec = P(None, "sp")
    local = lambda q, k, v, pos, lengths: ring_decode_attention(
        q, k, v, axis_name="sp", q_positions=pos, cache_length=lengths, causal=causal, key_chunk_size=8)
    run = jax.shard_map(local, mesh=mesh, in_specs=(P(), cache_spec, cache_spec, P(), P()), out_specs=P())
    return jax.jit(run)(q, k, v, positions, jnp.asarray(LENGTHS))


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_ring_and_single_device_decode_equal_attention_over_prefix(causal):
    _, k, v, _ = random_qkv(seq=CACHE, heads=4, kv_heads=2, seed=11)
    q, _, _, _ = random_qkv(seq=Q_LEN, heads=4, kv_heads=2, seed=12)
    # The queries are the last Q_LEN tokens of each row's prefix.
    positions = jnp.asarray(LENGTHS[:, None] - Q_LEN + np.arange(Q_LEN)[None, :], jnp.int32)
    expected = _prefix_reference(q, k, v, causal)
    assert_close(_ring_decode(q, k, v, positions, causal), expected, 1e-5, "ring decode")
    single = decode_attention(q, k, v, q_positions=positions, cache_length=jnp.asarray(LENGTHS), causal=causal,
                              key_chunk_size=16)
    assert_close(single, expected, 1e-5, "single-device decode")


def test_sharded_cache_update_writes_only_the_owning_shard():
    mesh = make_mesh(DEVICES)
    cache_spec = P(None, "sp")
    _, k_cache, v_cache, _ = random_qkv(seq=CACHE, heads=2, kv_heads=2, seed=13)
    _, k_new, v_new, _ = random_qkv(seq=2, heads=2, kv_heads=2, seed=14)
    # Row 0 straddles the boundary between devices 0 and 1; row 1 lands on device 2.
    positions = jnp.array([[15, 16], [40, 41]], jnp.int32)

    def local(k_cache, v_cache, k_new, v_new, positions):
        before = k_cache
        k_cache, v_cache = update_sharded_cache(k_cache, v_cache, k_new, v_new, positions, axis_name="sp")
        changed_rows = jnp.any(k_cache != before, axis=(2, 3)).sum(axis=1)  # [batch] on this device
        return k_cache, v_cache, changed_rows[None]

    run = jax.shard_map(local, mesh=mesh, in_specs=(cache_spec, cache_spec, P(), P(), P()),
                        out_specs=(cache_spec, cache_spec, P("sp")))
    k_out, v_out, changed = jax.jit(run)(k_cache, v_cache, k_new, v_new, positions)
    # Entries written per device and batch row: device 0 and 1 one each for row 0, device 2 two for row 1.
    np.testing.assert_array_equal(np.asarray(changed), [[1, 0], [1, 0], [0, 2], [0, 0]])
    k_expected, v_expected = update_cache(k_cache, v_cache, k_new, v_new, positions)
    np.testing.assert_array_equal(np.asarray(k_out), np.asarray(k_expected))
    np.testing.assert_array_equal(np.asarray(v_out), np.asarray(v_expected))
    np.testing.assert_array_equal(np.asarray(k_out)[0, 15:17], np.asarray(k_new)[0])
    np.testing.assert_array_equal(np.asarray(v_out)[1, 40:42], np.asarray(v_new)[1])


def test_decode_step_by_step_matches_causal_attention():
    """Prefill with update_cache, then decode one token at a time: equals causal attention."""
    q, k, v, _ = random_qkv(batch=1, seq=16, heads=2, kv_heads=1, seed=15)
    k_cache = jnp.zeros((1, 32, 1, 16))
    v_cache = jnp.zeros((1, 32, 1, 16))
    k_cache, v_cache = update_cache(k_cache, v_cache, k[:, :12], v[:, :12], jnp.arange(12)[None])

    @jax.jit
    def step(k_cache, v_cache, t):
        k_t, v_t, q_t = (lax.dynamic_slice_in_dim(x, t, 1, axis=1) for x in (k, v, q))
        k_cache, v_cache = update_cache(k_cache, v_cache, k_t, v_t, jnp.full((1, 1), t))
        out = decode_attention(q_t, k_cache, v_cache, q_positions=jnp.full((1, 1), t), cache_length=t + 1,
                               key_chunk_size=8)
        return k_cache, v_cache, out

    outputs = []
    for t in range(12, 16):
        k_cache, v_cache, out = step(k_cache, v_cache, jnp.int32(t))
        outputs.append(out)
    assert_close(jnp.concatenate(outputs, axis=1), dense_attention(q, k, v)[:, 12:], 1e-5, "step decode")


def test_decode_refuses_bad_positions():
    q, k, v, _ = random_qkv(seq=8, heads=2, kv_heads=2)
    with pytest.raises(ValueError, match=r"q_positions must be int \[batch, q_len\]"):
        decode_attention(q, k, v, q_positions=jnp.arange(8))


def test_layer_indexed_sharded_update_writes_exactly_the_owned_positions():
    """`update_sharded_cache(..., layer=)` on an all-layer buffer: each device writes the
    positions it owns of that layer, padding (-1) nowhere; checked against a NumPy loop."""
    mesh = make_mesh(DEVICES)
    cache_spec = P(None, None, "sp")
    rng = np.random.default_rng(21)
    layers, layer = 3, 1
    k_all = jnp.asarray(rng.standard_normal((layers, 2, CACHE, 2, 8)), jnp.float32)
    v_all = jnp.asarray(rng.standard_normal((layers, 2, CACHE, 2, 8)), jnp.float32)
    k_new = jnp.asarray(rng.standard_normal((2, 4, 2, 8)), jnp.float32)
    v_new = jnp.asarray(rng.standard_normal((2, 4, 2, 8)), jnp.float32)
    # Row 0 straddles devices 0 and 1 and ends in padding; row 1 writes the last position and device 2.
    positions = np.array([[15, 16, -1, -1], [40, 41, 63, -1]], np.int32)

    def local(k_all, v_all, k_new, v_new, positions):
        before = k_all
        k_all, v_all = update_sharded_cache(k_all, v_all, k_new, v_new, positions, axis_name="sp", layer=layer)
        changed = jnp.any(k_all != before, axis=(3, 4)).sum(axis=2)  # [layers, batch] on this device
        return k_all, v_all, changed[None]

    run = jax.shard_map(local, mesh=mesh, in_specs=(cache_spec, cache_spec, P(), P(), P()),
                        out_specs=(cache_spec, cache_spec, P("sp")))
    k_out, v_out, changed = jax.jit(run)(k_all, v_all, k_new, v_new, jnp.asarray(positions))
    k_expected, v_expected = np.array(k_all), np.array(v_all)
    for row in range(2):
        for index, position in enumerate(positions[row]):
            if position >= 0:
                k_expected[layer, row, position] = np.asarray(k_new)[row, index]
                v_expected[layer, row, position] = np.asarray(v_new)[row, index]
    np.testing.assert_array_equal(np.asarray(k_out), k_expected)
    np.testing.assert_array_equal(np.asarray(v_out), v_expected)
    per_device = np.asarray(changed)[:, layer]  # [device, batch]
    np.testing.assert_array_equal(per_device, [[1, 0], [1, 0], [0, 2], [0, 1]])
    assert not np.asarray(changed)[:, [0, 2]].any()  # other layers untouched on every device


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_layer_indexed_decode_attends_to_that_layer_only(causal):
    """`layer=` reads one layer of an all-layer cache in place: equal to attention over that
    layer's prefix, single device and sharded."""
    _, k, v, _ = random_qkv(seq=CACHE, heads=4, kv_heads=2, seed=22)
    q, other_k, other_v, _ = random_qkv(seq=Q_LEN, heads=4, kv_heads=2, seed=23)
    noise = lambda x: jnp.broadcast_to(x[:, :1] * 3.0, k.shape)  # other layers hold different keys/values
    k_all, v_all = jnp.stack([noise(other_k), k, noise(other_v)]), jnp.stack([noise(other_v), v, noise(other_k)])
    positions = jnp.asarray(LENGTHS[:, None] - Q_LEN + np.arange(Q_LEN)[None, :], jnp.int32)
    expected = _prefix_reference(q, k, v, causal)
    single = decode_attention(q, k_all, v_all, q_positions=positions, cache_length=jnp.asarray(LENGTHS), causal=causal,
                              key_chunk_size=16, layer=jnp.int32(1))
    assert_close(single, expected, 1e-5, "single-device decode at a layer")
    mesh = make_mesh(DEVICES)
    cache_spec = P(None, None, "sp")
    local = lambda q, k, v, pos, lengths: ring_decode_attention(
        q, k, v, axis_name="sp", q_positions=pos, cache_length=lengths, causal=causal, key_chunk_size=8, layer=1)
    run = jax.shard_map(local, mesh=mesh, in_specs=(P(), cache_spec, cache_spec, P(), P()), out_specs=P())
    assert_close(jax.jit(run)(q, k_all, v_all, positions, jnp.asarray(LENGTHS)), expected, 1e-5, "ring decode at a layer")
