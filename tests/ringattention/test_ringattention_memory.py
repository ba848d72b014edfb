"""Memory of attention inside a differentiated layer stack (``lax.scan`` over layers).

Differentiating a scanned stack makes JAX hoist everything that depends only on loop
constants (positions, segment ids) out of the loop and keep it for the backward pass. If the
kernel let that happen, every block's mask would be stored for every ring step: memory
quadratic in the sequence length. These tests compile the gradient of a two-layer stack (no
execution) and check that XLA's temporary memory grows at most about linearly.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ring_helpers import make_mesh

from ringattention import blockwise_attention, ring_attention

CHUNK = 128


def _stack_temp_bytes(attention, seq: int, sharding=None) -> int:
    """Temporary bytes of ``grad`` through a scanned two-layer residual stack around ``attention``."""

    def loss(x, weights, segment_ids):
        def layer(x, w):
            q = x * w[0]
            k, v = (x * w[1])[:, :, :2], (x * w[2])[:, :, :2]
            return x + attention(q, k, v, segment_ids), None

        x, _ = jax.lax.scan(layer, x, weights)
        return jnp.sum(x**2)

    x = jax.ShapeDtypeStruct((1, seq, 4, 32), jnp.float32, sharding=sharding)
    weights = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    segment_ids = jax.ShapeDtypeStruct((1, seq), jnp.int32, sharding=sharding)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, weights, segment_ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
def test_ring_under_scanned_layers_grows_linearly(layout):
    mesh = make_mesh(4)
    spec = P(None, "sp")

    def ring(q, k, v, segment_ids):
        kernel = lambda q, k, v, s: ring_attention(
            q, k, v, axis_name="sp", segment_ids=s, layout=layout,
            query_chunk_size=CHUNK, key_chunk_size=CHUNK,
        )
        return jax.shard_map(kernel, mesh=mesh, in_specs=(spec,) * 4, out_specs=spec)(q, k, v, segment_ids)

    sharding = NamedSharding(mesh, spec)
    small, large = (_stack_temp_bytes(ring, seq, sharding) for seq in (4096, 8192))
    assert large / small <= 2.5, f"doubling the sequence multiplied temporary memory by {large / small:.2f}"


def test_blockwise_under_scanned_layers_grows_linearly():
    attention = lambda q, k, v, s: blockwise_attention(
        q, k, v, segment_ids=s, query_chunk_size=CHUNK, key_chunk_size=CHUNK
    )
    small, large = (_stack_temp_bytes(attention, seq) for seq in (2048, 4096))
    assert large / small <= 2.5, f"doubling the sequence multiplied temporary memory by {large / small:.2f}"
