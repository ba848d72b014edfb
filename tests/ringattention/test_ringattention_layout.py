"""Sequence layouts and blockwise_feedforward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ring_helpers import assert_close

from ringattention import blockwise_feedforward, from_layout, layout_positions, shard_positions, to_layout


def test_known_layouts_for_eight_tokens_on_two_devices():
    assert layout_positions(8, "contiguous", 2).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert layout_positions(8, "zigzag", 2).tolist() == [0, 1, 6, 7, 2, 3, 4, 5]
    assert layout_positions(8, "striped", 2).tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@settings(max_examples=30, deadline=None)
@given(layout=st.sampled_from(["contiguous", "zigzag", "striped"]), shards=st.integers(1, 8),
       per_piece=st.integers(1, 4))
def test_round_trip_and_shard_positions(layout, shards, per_piece):
    seq = 2 * shards * per_piece
    x = np.arange(3 * seq).reshape(3, seq)
    permuted = to_layout(x, layout, shards, axis=1)
    np.testing.assert_array_equal(from_layout(permuted, layout, shards, axis=1), x)
    positions = layout_positions(seq, layout, shards)
    np.testing.assert_array_equal(permuted[0], positions)
    assert sorted(positions.tolist()) == list(range(seq))
    local = seq // shards
    for shard in range(shards):
        np.testing.assert_array_equal(np.asarray(shard_positions(layout, shard, shards, local)),
                                      positions[shard * local:(shard + 1) * local])


def test_layout_works_on_jax_arrays_along_any_axis():
    x = jnp.arange(2 * 16 * 3).reshape(2, 16, 3).astype(jnp.float32)
    moved = to_layout(jnp.swapaxes(x, 0, 1), "zigzag", 4, axis=0)
    np.testing.assert_array_equal(np.asarray(from_layout(moved, "zigzag", 4, axis=0)), np.asarray(jnp.swapaxes(x, 0, 1)))


def test_blockwise_feedforward_values_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 64, 8), dtype=np.float32))
    w1 = jnp.asarray(rng.standard_normal((8, 32), dtype=np.float32))
    w2 = jnp.asarray(rng.standard_normal((32, 8), dtype=np.float32))
    mlp = lambda params, h: jax.nn.gelu(h @ params[0]) @ params[1]
    loss = lambda params, x, chunk: jnp.sum(blockwise_feedforward(lambda h: mlp(params, h), x, chunk) ** 2)
    reference = lambda params, x: jnp.sum(mlp(params, x) ** 2)
    assert_close(blockwise_feedforward(lambda h: mlp((w1, w2), h), x, 16), mlp((w1, w2), x), 1e-5, "output")
    grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)((w1, w2), x, 16)
    grads_ref = jax.grad(reference, argnums=(0, 1))((w1, w2), x)
    for grad, grad_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        assert_close(grad, grad_ref, 1e-5, "gradient")


def test_blockwise_feedforward_refuses_undivisible_chunk():
    with pytest.raises(ValueError, match="chunk_size=24 does not divide the sequence length 64"):
        blockwise_feedforward(lambda h: h, jnp.zeros((1, 64, 4)), 24)
