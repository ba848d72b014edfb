"""Exact long-context attention in JAX: blockwise (one device), ring (sequence-sharded) and
ring decoding over a sharded KV cache, plus chunked feed-forward and sequence layouts.

Imports only JAX and NumPy, never the ``lwm`` package.

Public API:

- :func:`blockwise_attention` - memory-efficient exact attention on one device.
- :func:`ring_attention` - the same over a sequence sharded along a mesh axis (inside
  ``jax.shard_map``); :func:`ring_schedule` counts its per-step work per device.
- :func:`decode_attention`, :func:`ring_decode_attention` - a few queries against a KV cache,
  whole or sharded; :func:`update_cache`, :func:`update_sharded_cache` write new entries.
  All four take ``layer=`` to read or write one layer of an all-layer cache in place.
- :func:`blockwise_feedforward` - token-wise functions applied chunk by chunk.
- :func:`to_layout`, :func:`from_layout`, :func:`layout_positions` - balanced sequence layouts.
- :func:`dense_attention` - the O(S^2) reference.
"""

from ringattention.blockwise import blockwise_attention
from ringattention.decode import decode_attention, ring_decode_attention, update_cache, update_sharded_cache
from ringattention.dense import dense_attention
from ringattention.feedforward import blockwise_feedforward
from ringattention.layout import LAYOUTS, from_layout, layout_positions, shard_positions, to_layout
from ringattention.ring import ring_attention, ring_schedule

__all__ = [
    "LAYOUTS",
    "blockwise_attention",
    "blockwise_feedforward",
    "decode_attention",
    "dense_attention",
    "from_layout",
    "layout_positions",
    "ring_attention",
    "ring_decode_attention",
    "ring_schedule",
    "shard_positions",
    "to_layout",
    "update_cache",
    "update_sharded_cache",
]
