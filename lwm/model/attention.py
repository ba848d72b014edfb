"""The attention interface the model calls, and its kernels.

Every kernel takes `q [batch, seq, heads, head_dim]`, `k`/`v [batch, seq, kv_heads, head_dim]`
and `segment_ids [batch, seq]` (equal ids attend; 0 is padding, which attends nothing and is
never attended) and returns `[batch, seq, heads, head_dim]`, causal. All three come from the
standalone `ringattention` library: `dense` is the O(S²) reference, `blockwise` computes
chunk by chunk in O(S·chunk) memory, and `ring` shards the sequence over the mesh's `sp` axis
(falling back to `blockwise` when `sp` is 1).

For prefill and decoding the model attends through a key/value cache instead
(`cached_attention`): `KVCache` holds every layer's keys and values, `CacheView` names one
layer of it and where the new tokens go.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwm.config import ModelConfig
from lwm.mesh import logical_to_spec, shard_over_sequence
from ringattention import (
    blockwise_attention,
    decode_attention,
    dense_attention,
    ring_attention,
    ring_decode_attention,
    update_cache,
    update_sharded_cache,
)

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


# ----------------------------------------------------------------------------- cached attention

# Logical axes of the cache arrays `[layers, batch, size, kv_heads, head_dim]`.
CACHE_AXES = (None, "batch", "seq", "act_kv_heads", None)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Keys and values of every layer and the filled length of every row.

    `k`, `v`: `[layers, batch, size, kv_heads, head_dim]`; `lengths`: int32 `[batch]`, the
    number of filled positions (the next token of row `b` goes to position `lengths[b]`).
    Rows are right-padded: row `b` holds its tokens at positions `0 .. lengths[b]-1`. On a mesh
    whose `sp` axis is larger than one the position axis is split over `sp` (device `i` holds
    a contiguous slice).
    """

    k: jax.Array
    v: jax.Array
    lengths: jax.Array

    @property
    def batch(self) -> int:
        """Number of rows."""
        return self.k.shape[1]

    @property
    def size(self) -> int:
        """Positions per row."""
        return self.k.shape[2]

    def nbytes_per_device(self) -> int:
        """Bytes of keys and values one device holds (the largest shard)."""
        total = 0
        for array in (self.k, self.v):
            shards = getattr(array, "addressable_shards", None)
            total += max(shard.data.nbytes for shard in shards) if shards else array.nbytes
        return total


@functools.partial(jax.tree_util.register_dataclass, data_fields=["k", "v", "layer", "positions_BT", "visible_B"],
                   meta_fields=["key_chunk_size"])
@dataclasses.dataclass(frozen=True)
class CacheView:
    """One layer of a `KVCache` and where this call's tokens go: what a block attends through.

    `k`, `v` are the all-layer buffers (written in place at `layer`); `positions_BT` the cache
    position of every new token (-1 for padding, never written nor attending); `visible_B` the
    filled length of every row once the new tokens are written. `key_chunk_size` is how many
    cache positions attention reads at a time.
    """

    k: jax.Array
    v: jax.Array
    layer: jax.Array
    positions_BT: jax.Array
    visible_B: jax.Array
    key_chunk_size: int

    def next_layer(self) -> CacheView:
        """The same view one layer further down the stack."""
        return dataclasses.replace(self, layer=self.layer + 1)


def cached_attention(
    q_BTHD: jax.Array, k_BTKD: jax.Array, v_BTKD: jax.Array, cache: CacheView
) -> tuple[jax.Array, CacheView]:
    """Writes the new keys/values into the cache's layer, then attends the queries to it.

    On a mesh (`jax.set_mesh`) this runs inside `jax.shard_map`: rows split over the batch
    axes, heads over `tp` when it divides the key/value heads, cache positions over `sp`. With
    `sp` > 1 every device writes the positions it owns (`ringattention.update_sharded_cache`)
    and attends to its slice, merged exactly across `sp` (`ring_decode_attention`); otherwise
    `decode_attention` reads the whole (local) cache. Returns `[batch, T, heads, head_dim]` in
    the queries' dtype and the view over the updated buffers.
    """
    mesh = jax.sharding.get_abstract_mesh()
    sharded = not mesh.empty and "sp" in mesh.axis_names and mesh.shape["sp"] > 1
    chunk = cache.key_chunk_size
    k_new, v_new = k_BTKD.astype(cache.k.dtype), v_BTKD.astype(cache.v.dtype)

    def local(q, k_new, v_new, k_all, v_all, layer, positions, visible):
        if sharded:
            k_all, v_all = update_sharded_cache(k_all, v_all, k_new, v_new, positions, axis_name="sp", layer=layer)
            out = ring_decode_attention(q, k_all, v_all, axis_name="sp", q_positions=positions,
                                        cache_length=visible, key_chunk_size=chunk, layer=layer)
        else:
            k_all, v_all = update_cache(k_all, v_all, k_new, v_new, positions, layer=layer)
            out = decode_attention(q, k_all, v_all, q_positions=positions, cache_length=visible,
                                   key_chunk_size=chunk, layer=layer)
        return out, k_all, v_all

    arguments = (q_BTHD, k_new, v_new, cache.k, cache.v, jnp.asarray(cache.layer, jnp.int32), cache.positions_BT,
                 cache.visible_B)
    if mesh.empty:
        out, k_all, v_all = local(*arguments)
    else:
        spec = functools.partial(logical_to_spec, mesh=mesh)
        cache_spec = spec(CACHE_AXES, cache.k.shape)
        split_heads = cache_spec[3] is not None  # tp divides the key/value heads, hence the query heads too
        q_spec = spec(("batch", None, "act_heads" if split_heads else None, None), q_BTHD.shape)
        new_spec = spec(("batch", None, "act_kv_heads" if split_heads else None, None), k_new.shape)
        in_specs = (q_spec, new_spec, new_spec, cache_spec, cache_spec, spec((), ()),
                    spec(("batch", None), cache.positions_BT.shape), spec(("batch",), cache.visible_B.shape))
        out, k_all, v_all = jax.shard_map(
            local, mesh=mesh, in_specs=in_specs, out_specs=(q_spec, cache_spec, cache_spec), check_vma=False,
        )(*arguments)
    return out, dataclasses.replace(cache, k=k_all, v=v_all)
