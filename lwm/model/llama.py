"""LLaMA decoder in Flax NNX, with LWM's optional vision vocabulary.

A block is pre-norm attention then a pre-norm SwiGLU MLP, each added to the residual stream.
RoPE uses Hugging Face's rotate-half layout, so converted weights need no permutation.
Every parameter carries logical axis names (`logical_axes` metadata) that `lwm.mesh` maps to
the device mesh.

One block and one layer loop (`LlamaModel.run_layers`) serve training and inference: without
a cache a block's tokens attend to each other through the pluggable kernel (`hidden_states`);
with a `CacheView` they are written into a key/value cache and attend to it (`extend`, the
prefill and decode step that `lwm.infer.cache.InferenceModel` compiles).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lwm.config import ModelConfig
from lwm.mesh import constrain
from lwm.model.attention import AttentionFn, CacheView, KVCache, cached_attention, make_attention_fn

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.checkpoint_dots,
}


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], config: ModelConfig) -> nnx.Param:
    init = jax.nn.initializers.normal(config.initializer_range)
    return nnx.Param(init(rngs.params(), shape, jnp.dtype(config.param_dtype)), logical_axes=axes)


def rope_cos_sin(positions_BT: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """Cosines and sines `[batch, seq, head_dim]` of the rotary angles, in float32."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inverse_frequency = 1.0 / (theta**exponents)
    angles_BTF = positions_BT.astype(jnp.float32)[..., None] * inverse_frequency
    angles_BTD = jnp.concatenate([angles_BTF, angles_BTF], axis=-1)
    return jnp.cos(angles_BTD), jnp.sin(angles_BTD)


def apply_rope(x_BTHD: jax.Array, cos_BTD: jax.Array, sin_BTD: jax.Array) -> jax.Array:
    """Rotates channel pairs (i, i + head_dim/2) by the position's angle (rotate-half layout)."""
    half = x_BTHD.shape[-1] // 2
    x32 = x_BTHD.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    cos, sin = cos_BTD[:, :, None, :], sin_BTD[:, :, None, :]
    return (x32 * cos + rotated * sin).astype(x_BTHD.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with float32 statistics."""

    def __init__(self, config: ModelConfig):
        self.eps = config.rms_norm_eps
        self.scale = nnx.Param(
            jnp.ones((config.hidden_size,), jnp.dtype(config.param_dtype)), logical_axes=("norm",)
        )

    def __call__(self, x_BTE: jax.Array) -> jax.Array:
        x32 = x_BTE.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x_BTE.dtype) * self.scale[...].astype(x_BTE.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotary positions; the kernel is pluggable."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        embed, heads, kv_heads, head_dim = (
            config.hidden_size, config.num_heads, config.kv_heads, config.head_dim,
        )
        self.dtype = jnp.dtype(config.dtype)
        self.wq = _param(rngs, (embed, heads, head_dim), ("embed", "heads", "head_dim"), config)
        self.wk = _param(rngs, (embed, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), config)
        self.wv = _param(rngs, (embed, kv_heads, head_dim), ("embed", "kv_heads", "head_dim"), config)
        self.wo = _param(rngs, (heads, head_dim, embed), ("heads", "head_dim", "embed"), config)

    def project_qkv(
        self, x_BTE: jax.Array, cos_BTD: jax.Array, sin_BTD: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries, keys (both rotated) and values for the tokens in `x_BTE`."""
        dtype = self.dtype
        q = jnp.einsum("bte,ehd->bthd", x_BTE, self.wq[...].astype(dtype))
        k = jnp.einsum("bte,ehd->bthd", x_BTE, self.wk[...].astype(dtype))
        v = jnp.einsum("bte,ehd->bthd", x_BTE, self.wv[...].astype(dtype))
        q = constrain(apply_rope(q, cos_BTD, sin_BTD), ("batch", "seq", "act_heads", None))
        k = constrain(apply_rope(k, cos_BTD, sin_BTD), ("batch", "seq", "act_kv_heads", None))
        v = constrain(v, ("batch", "seq", "act_kv_heads", None))
        return q, k, v

    def project_out(self, out_BTHD: jax.Array) -> jax.Array:
        """Mixes the heads back into the residual width."""
        return jnp.einsum("bthd,hde->bte", out_BTHD, self.wo[...].astype(self.dtype))

    def __call__(
        self,
        x_BTE: jax.Array,
        cos_BTD: jax.Array,
        sin_BTD: jax.Array,
        segment_ids_BT: jax.Array | None,
        attention_fn: AttentionFn | None,
        cache: CacheView | None = None,
    ) -> tuple[jax.Array, CacheView | None]:
        """Attention output `[batch, T, hidden]` and the cache view (None without a cache).

        Without a cache the tokens attend to each other through `attention_fn` (training, a
        full forward); with one they are written into it and attend to it (prefill, decoding).
        """
        q, k, v = self.project_qkv(x_BTE, cos_BTD, sin_BTD)
        if cache is None:
            out = attention_fn(q, k, v, segment_ids_BT)
        else:
            out, cache = cached_attention(q, k, v, cache)
        return self.project_out(out.astype(self.dtype)), cache


class MLP(nnx.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        embed, hidden = config.hidden_size, config.intermediate_size
        self.dtype = jnp.dtype(config.dtype)
        self.w_gate = _param(rngs, (embed, hidden), ("embed", "mlp"), config)
        self.w_up = _param(rngs, (embed, hidden), ("embed", "mlp"), config)
        self.w_down = _param(rngs, (hidden, embed), ("mlp", "embed"), config)

    def __call__(self, x_BTE: jax.Array) -> jax.Array:
        gate = jnp.einsum("bte,ef->btf", x_BTE, self.w_gate[...].astype(self.dtype))
        up = jnp.einsum("bte,ef->btf", x_BTE, self.w_up[...].astype(self.dtype))
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "seq", "act_mlp"))
        return jnp.einsum("btf,fe->bte", hidden, self.w_down[...].astype(self.dtype))


class DecoderBlock(nnx.Module):
    """One transformer layer: x + attention(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.attention_norm = RMSNorm(config)
        self.attention = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x_BTE: jax.Array,
        cos_BTD: jax.Array,
        sin_BTD: jax.Array,
        segment_ids_BT: jax.Array | None = None,
        attention_fn: AttentionFn | None = None,
        cache: CacheView | None = None,
    ) -> tuple[jax.Array, CacheView | None]:
        """The residual stream after this layer, and the cache view after writing its keys.

        `cache=None` is training (and any full forward): `attention_fn` sees the whole sequence
        and `segment_ids_BT`. With a `CacheView` the block writes its keys/values into the cache
        at the tokens' positions and attends to the cache (prefill and decoding).
        """
        attended, cache = self.attention(
            self.attention_norm(x_BTE), cos_BTD, sin_BTD, segment_ids_BT, attention_fn, cache
        )
        x_BTE = x_BTE + attended
        x_BTE = x_BTE + self.mlp(self.mlp_norm(x_BTE))
        return constrain(x_BTE, ("batch", "seq", "act_embed")), cache


_LAYER_AXIS = {nnx.PARTITION_NAME: "layers", "logical_axes": "layers"}


class LlamaModel(nnx.Module):
    """LLaMA decoder; with `config.vision_vocab_size > 0`, LWM's vision-language model.

    Call it on `input_ids [batch, seq]` (int32) to get text logits `[batch, seq, vocab]`.
    `input_is_vision` picks the vision embedding table for vision tokens; `logits_both_heads`
    returns the text and vision heads' logits for training.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), config)
        if config.has_vision:
            self.vision_embed = _param(
                rngs, (config.vision_vocab_size, config.hidden_size), ("vocab", "embed"), config
            )
            self.vision_head = _param(
                rngs, (config.hidden_size, config.vision_vocab_size), ("embed", "vocab"), config
            )
        if config.scan_layers:
            @nnx.split_rngs(splits=config.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=_LAYER_AXIS)
            def make_layers(layer_rngs: nnx.Rngs) -> DecoderBlock:
                return DecoderBlock(config, rngs=layer_rngs)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List([DecoderBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config)
        if not config.tie_embeddings:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), config)

    def embed_tokens(self, input_ids_BT: jax.Array, input_is_vision_BT: jax.Array | None) -> jax.Array:
        """Looks each token up in the text table, or the vision table where it is a vision token."""
        dtype = jnp.dtype(self.config.dtype)
        text_ids = input_ids_BT
        if self.config.has_vision and input_is_vision_BT is not None:
            text_ids = jnp.where(input_is_vision_BT, 0, input_ids_BT)
        x_BTE = jnp.take(self.embed[...], text_ids, axis=0).astype(dtype)
        if self.config.has_vision and input_is_vision_BT is not None:
            vision_ids = jnp.where(input_is_vision_BT, input_ids_BT, 0)
            vision_BTE = jnp.take(self.vision_embed[...], vision_ids, axis=0).astype(dtype)
            x_BTE = jnp.where(input_is_vision_BT[..., None], vision_BTE, x_BTE)
        return constrain(x_BTE, ("batch", "seq", "act_embed"))

    def hidden_states(
        self,
        input_ids_BT: jax.Array,
        *,
        positions_BT: jax.Array | None = None,
        segment_ids_BT: jax.Array | None = None,
        input_is_vision_BT: jax.Array | None = None,
        attention_fn: AttentionFn | None = None,
        input_embeddings_BTE: jax.Array | None = None,
    ) -> jax.Array:
        """Final-norm hidden states `[batch, seq, hidden]`.

        `input_embeddings_BTE`, when given, replaces the token lookup (for soft prompts and for
        gradients with respect to the inputs).

        `positions_BT` restart at 0 for every packed example (default: 0..seq-1);
        `segment_ids_BT` keep packed examples from attending to each other (default: one segment).
        """
        config = self.config
        batch, seq = input_ids_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq))
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((batch, seq), jnp.int32)
        attention_fn = attention_fn or make_attention_fn(config)
        cos_BTD, sin_BTD = rope_cos_sin(positions_BT, config.head_dim, config.rope_theta)
        if input_embeddings_BTE is None:
            x_BTE = self.embed_tokens(input_ids_BT, input_is_vision_BT)
        else:
            x_BTE = input_embeddings_BTE.astype(jnp.dtype(config.dtype))

        return self.final_norm(self.run_layers(x_BTE, cos_BTD, sin_BTD, segment_ids_BT, attention_fn)[0])

    def run_layers(
        self,
        x_BTE: jax.Array,
        cos_BTD: jax.Array,
        sin_BTD: jax.Array,
        segment_ids_BT: jax.Array | None,
        attention_fn: AttentionFn | None,
        cache: CacheView | None = None,
    ) -> tuple[jax.Array, CacheView | None]:
        """Runs every block on the residual stream: `nnx.scan` over stacked layers or a loop.

        The one layer loop of training (`cache=None`, rematerialised as `config.remat` says)
        and of cached prefill/decoding (the view starts at layer 0 and moves one layer down
        per block, so every block writes its own layer of the all-layer buffers in place).
        """
        config = self.config

        def run_block(block: DecoderBlock, x: jax.Array, cache: CacheView | None):
            x, cache = block(x, cos_BTD, sin_BTD, segment_ids_BT, attention_fn, cache)
            return x, None if cache is None else cache.next_layer()

        if config.remat != "none" and cache is None:
            # Rematerialisation only matters under differentiation, which cached decoding never is.
            run_block = nnx.remat(run_block, policy=REMAT_POLICIES[config.remat], prevent_cse=False)
        if config.scan_layers:
            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry, transform_metadata=_LAYER_AXIS)
            def scan_layers(block: DecoderBlock, carry):
                return run_block(block, *carry)

            return scan_layers(self.layers, (x_BTE, cache))
        for block in self.layers:
            x_BTE, cache = run_block(block, x_BTE, cache)
        return x_BTE, cache

    def extend(
        self,
        cache: KVCache,
        input_ids_BT: jax.Array,
        new_lengths_B: jax.Array,
        *,
        input_is_vision_BT: jax.Array | None = None,
        key_chunk_size: int = 512,
    ) -> tuple[KVCache, jax.Array]:
        """Runs tokens through the model on top of a key/value cache (prefill or one decode step).

        Row `b` appends its first `new_lengths_B[b]` tokens of `input_ids_BT [batch, T]` (the
        rest is padding) at positions `cache.lengths[b], cache.lengths[b] + 1, ...`; each token
        attends to the cache up to and including itself, through the same blocks and layer loop
        as `hidden_states`. Returns the cache with every layer's new keys/values and the new
        lengths, and the final-norm hidden states `[batch, T, hidden]` (those of padding are
        meaningless). Pure: call it inside `jax.jit` (under `jax.set_mesh` for a sharded cache).
        """
        config = self.config
        new_len = input_ids_BT.shape[1]
        offsets_T = jnp.arange(new_len, dtype=jnp.int32)
        new_lengths_B = jnp.asarray(new_lengths_B, jnp.int32)
        valid_BT = offsets_T[None, :] < new_lengths_B[:, None]
        positions_BT = jnp.where(valid_BT, cache.lengths[:, None] + offsets_T[None, :], -1)
        visible_B = cache.lengths + new_lengths_B
        cos_BTD, sin_BTD = rope_cos_sin(jnp.maximum(positions_BT, 0), config.head_dim, config.rope_theta)
        x_BTE = self.embed_tokens(input_ids_BT, input_is_vision_BT if config.has_vision else None)
        view = CacheView(cache.k, cache.v, jnp.int32(0), positions_BT, visible_B, key_chunk_size)
        x_BTE, view = self.run_layers(x_BTE, cos_BTD, sin_BTD, None, None, view)
        return KVCache(view.k, view.v, visible_B), self.final_norm(x_BTE)

    def text_logits(self, hidden_BTE: jax.Array) -> jax.Array:
        """Text-vocabulary logits in float32."""
        dtype = jnp.dtype(self.config.dtype)
        head = self.embed[...].T if self.config.tie_embeddings else self.lm_head[...]
        logits = jnp.einsum("bte,ev->btv", hidden_BTE, head.astype(dtype))
        return constrain(logits.astype(jnp.float32), ("batch", "seq", "act_vocab"))

    def vision_logits(self, hidden_BTE: jax.Array) -> jax.Array:
        """Vision-vocabulary logits in float32 (VQ codes, `<eof>`, `<eov>`)."""
        if not self.config.has_vision:
            raise ValueError("this model has no vision head: set model.vision_vocab_size > 0")
        dtype = jnp.dtype(self.config.dtype)
        logits = jnp.einsum("bte,ev->btv", hidden_BTE, self.vision_head[...].astype(dtype))
        return constrain(logits.astype(jnp.float32), ("batch", "seq", "act_vocab"))

    def logits_both_heads(self, input_ids_BT: jax.Array, **kwargs: Any) -> tuple[jax.Array, jax.Array | None]:
        """Text logits and (for a vision-language model) vision logits of the same hidden states."""
        hidden = self.hidden_states(input_ids_BT, **kwargs)
        vision = self.vision_logits(hidden) if self.config.has_vision else None
        return self.text_logits(hidden), vision

    def __call__(self, input_ids_BT: jax.Array, **kwargs: Any) -> jax.Array:
        return self.text_logits(self.hidden_states(input_ids_BT, **kwargs))
