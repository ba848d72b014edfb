"""The attention interface the model calls, and its kernels.

Every kernel takes `q [batch, seq, heads, head_dim]`, `k`/`v [batch, seq, kv_heads, head_dim]`
and `segment_ids [batch, seq]` (equal ids attend; 0 is padding, which attends nothing and is
never attended) and returns `[batch, seq, heads, head_dim]`, causal. All three come from the
standalone `ringattention` library: `dense` is the O(S²) reference, `blockwise` computes
chunk by chunk in O(S·chunk) memory, and `ring` shards the sequence over the mesh's `sp` axis
(falling back to `blockwise` when `sp` is 1).
"""

from __future__ import annotations

from collections.abc import Callable

import functools

import jax
from ringattention import blockwise_attention, dense_attention, ring_attention

from lwm.config import ModelConfig
from lwm.mesh import shard_over_sequence

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def sequence_permutation(
    config: ModelConfig, sequence_parallel: int
) -> Callable[[dict[str, jax.Array]], dict[str, jax.Array]] | None:
    """The batch rearrangement a load-balanced ring layout needs, or None.

    Every per-token array (inputs, targets, positions, segment ids, masks) is permuted the same
    way along the sequence, so the summed loss is unchanged; the ring kernel derives each
    token's original index from the layout for the causal mask.
    """
    if config.attention != "ring" or config.ring_layout == "contiguous" or sequence_parallel == 1:
        return None
    from ringattention import to_layout

    def permute(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {key: to_layout(value, config.ring_layout, sequence_parallel, axis=1) for key, value in batch.items()}

    return permute


def make_attention_fn(config: ModelConfig) -> AttentionFn:
    """The causal attention kernel that `config.attention` names."""
    if config.attention == "dense":
        return lambda q, k, v, segment_ids: dense_attention(q, k, v, causal=True, segment_ids=segment_ids)
    blockwise = functools.partial(
        blockwise_attention, causal=True, query_chunk_size=config.query_chunk_size,
        key_chunk_size=config.key_chunk_size,
    )
    if config.attention == "blockwise":
        return lambda q, k, v, segment_ids: blockwise(q, k, v, segment_ids=segment_ids)
    ring = functools.partial(
        ring_attention, axis_name="sp", causal=True, query_chunk_size=config.query_chunk_size,
        key_chunk_size=config.key_chunk_size, layout=config.ring_layout,
    )

    def ring_or_blockwise(q, k, v, segment_ids):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or "sp" not in mesh.axis_names or mesh.shape["sp"] == 1:
            return blockwise(q, k, v, segment_ids=segment_ids)
        local = lambda q, k, v, s: ring(q, k, v, segment_ids=s)
        return shard_over_sequence(local, mesh, q, k, v, segment_ids)

    return ring_or_blockwise
