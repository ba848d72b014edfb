"""The attention interface the model calls, and its kernels.

Every kernel takes `q [batch, seq, heads, head_dim]`, `k`/`v [batch, seq, kv_heads, head_dim]`
and `segment_ids [batch, seq]` (equal ids attend, 0 is padding) and returns
`[batch, seq, heads, head_dim]`, causal. `dense` is the O(S²) reference; `blockwise` and `ring`
come from the standalone `ringattention` library.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from lwm.config import ModelConfig

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def dense_causal_attention(
    q_BTHD: jax.Array, k_BSKD: jax.Array, v_BSKD: jax.Array, segment_ids_BT: jax.Array
) -> jax.Array:
    """Reference causal attention with packed-sequence masking and grouped-query heads.

    Scores and softmax are computed in float32 whatever the input dtype.
    """
    batch, seq, heads, head_dim = q_BTHD.shape
    kv_heads = k_BSKD.shape[2]
    groups = heads // kv_heads
    q_BTKGD = q_BTHD.reshape(batch, seq, kv_heads, groups, head_dim)
    scores_BKGTS = jnp.einsum(
        "btkgd,bskd->bkgts", q_BTKGD, k_BSKD, preferred_element_type=jnp.float32
    ) / jnp.sqrt(jnp.float32(head_dim))
    index = jnp.arange(seq)
    causal_TS = index[:, None] >= index[None, :]
    same_segment_BTS = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    mask_B11TS = (causal_TS[None] & same_segment_BTS)[:, None, None]
    scores_BKGTS = jnp.where(mask_B11TS, scores_BKGTS, jnp.finfo(jnp.float32).min)
    weights_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
    out_BTKGD = jnp.einsum("bkgts,bskd->btkgd", weights_BKGTS.astype(v_BSKD.dtype), v_BSKD)
    return out_BTKGD.reshape(batch, seq, heads, head_dim)


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
        return dense_causal_attention
    raise NotImplementedError(
        f"model.attention={config.attention!r} is not available yet; use 'dense'"
    )
