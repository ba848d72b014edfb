"""LWM's flax.linen models, rebuilt for the tests from the structure of LWM's code (repository
LargeWorldModel/LWM, `lwm/llama.py`, `lwm/vision_llama.py`, `lwm/vqgan.py`, read through the
search tool), so that parameter trees carry exactly the names LWM's modules give them and
the forward passes compute the way LWM's do. Only what the tests need: no cache, no sharding,
no dropout, dense causal attention.

Also `write_like_tux`: tux's `StreamingCheckpointer.save_checkpoint`, one
`packer.pack((key, flax.serialization.to_bytes(value)))` per flattened leaf.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
from flax.serialization import to_bytes
from flax.traverse_util import flatten_dict


def write_like_tux(path, tree: dict[str, Any]) -> None:
    """A streaming checkpoint exactly as tux writes one (no header, one record per leaf)."""
    packer = msgpack.Packer()
    with open(path, "wb") as handle:
        for key, value in flatten_dict(tree).items():
            handle.write(packer.pack((key, to_bytes(value))))


# ---------------------------------------------------------------------------------------------
# LLaMA / vision-language model (lwm/llama.py, lwm/vision_llama.py)

class RMSNorm(nn.Module):
    dim: int
    eps: float = 1e-6

    def setup(self):
        self.weight = self.param("kernel", nn.initializers.ones, (self.dim,), jnp.float32)

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        return x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps) * self.weight


def interleaved_rope(x_BTHD, positions_BT, theta, max_positions=512):
    """LWM's rotation: channel pairs (2i, 2i+1) multiplied as complex numbers by e^{i t f_i},
    the table computed in numpy float32 as `precompute_freqs_cis` does."""
    dim = x_BTHD.shape[-1]
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2)[: dim // 2].astype(np.float32) / dim))
    table = np.outer(np.arange(max_positions), freqs).astype(np.float32)
    freqs_cis = jnp.asarray(np.complex64(np.cos(table) + 1j * np.sin(table)))
    f = jnp.take(freqs_cis, positions_BT, axis=0)[:, :, None, :]
    pairs = x_BTHD.astype(jnp.float32).reshape(*x_BTHD.shape[:-1], -1, 2)
    rotated = jax.lax.complex(pairs[..., 0], pairs[..., 1]) * f
    return jnp.stack([jnp.real(rotated), jnp.imag(rotated)], axis=-1).reshape(x_BTHD.shape)


class Attention(nn.Module):
    hidden: int
    heads: int
    theta: float

    @nn.compact
    def __call__(self, x, positions):
        head_dim = self.hidden // self.heads
        dense = lambda width, name: nn.Dense(width, use_bias=False, name=name, precision="highest")  # noqa: E731
        split = lambda t: t.reshape(*t.shape[:2], self.heads, head_dim)  # noqa: E731
        q, k, v = (split(dense(self.hidden, n)(x)) for n in ("wq", "wk", "wv"))
        q, k = interleaved_rope(q, positions, self.theta), interleaved_rope(k, positions, self.theta)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision="highest") / np.sqrt(head_dim)
        T = x.shape[1]
        scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, jnp.finfo(jnp.float32).min)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v, precision="highest")
        return dense(self.hidden, "wo")(out.reshape(*out.shape[:2], -1))


class MLP(nn.Module):
    hidden: int
    intermediate: int

    @nn.compact
    def __call__(self, x):
        dense = lambda width, name: nn.Dense(width, use_bias=False, name=name, precision="highest")  # noqa: E731
        return dense(self.hidden, "w2")(nn.silu(dense(self.intermediate, "w1")(x)) * dense(self.intermediate, "w3")(x))


class Block(nn.Module):
    hidden: int
    intermediate: int
    heads: int
    theta: float
    eps: float
    scanned: bool

    @nn.compact
    def __call__(self, x, positions):
        x = x + Attention(self.hidden, self.heads, self.theta, name="attention")(
            RMSNorm(self.hidden, self.eps, name="attention_norm")(x), positions)
        x = x + MLP(self.hidden, self.intermediate, name="feed_forward")(RMSNorm(self.hidden, self.eps, name="ffn_norm")(x))
        return (x, None) if self.scanned else x


class BlockCollection(nn.Module):
    shape: dict
    scan_layers: bool

    @nn.compact
    def __call__(self, x, positions):
        s = self.shape
        args = (s["hidden"], s["intermediate"], s["heads"], s["theta"], s["eps"])
        if self.scan_layers:
            # nn.scan with params stacked on axis 0, named scan_decoder (FlaxLLaMABlockCollection).
            scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=(nn.broadcast,), length=s["layers"])
            x, _ = scanned(*args, True, name="scan_decoder")(x, positions)
            return x
        for i in range(s["layers"]):
            x = Block(*args, False, name=str(i))(x, positions)
        return x


class Transformer(nn.Module):
    shape: dict
    scan_layers: bool

    @nn.compact
    def __call__(self, ids, vision_mask, positions):
        s = self.shape
        init = nn.initializers.normal(0.02)
        if s["vision_vocab"]:
            vte = nn.Embed(s["vision_vocab"], s["hidden"], embedding_init=init, name="vte")
        wte = nn.Embed(s["vocab"], s["hidden"], embedding_init=init, name="wte")
        if s["vision_vocab"]:
            mask = vision_mask[..., None].astype(jnp.float32)
            x = wte(jnp.where(vision_mask, 0, ids)) * (1 - mask) + vte(jnp.where(vision_mask, ids, 0)) * mask
        else:
            x = wte(ids)
        x = BlockCollection(s, self.scan_layers, name="h")(x, positions)
        return RMSNorm(s["hidden"], s["eps"], name="ln_f")(x)


class LwmForCausalLM(nn.Module):
    """`FlaxVideoLLaMAForCausalLMModule` (vision_vocab > 0) or `FlaxLLaMAForCausalLMModule`:
    returns (vision logits or None, text logits)."""

    shape: dict
    scan_layers: bool = True

    @nn.compact
    def __call__(self, ids, vision_mask, positions):
        s = self.shape
        hidden = Transformer(s, self.scan_layers, name="transformer")(ids, vision_mask, positions)
        dense = lambda width, name: nn.Dense(width, use_bias=False, name=name, precision="highest",  # noqa: E731
                                             kernel_init=nn.initializers.normal(0.02))
        vision = dense(s["vision_vocab"], "vision_head")(hidden) if s["vision_vocab"] else None
        return vision, dense(s["vocab"], "lm_head")(hidden)


def init_lwm_llama(shape: dict, scan_layers: bool, seed: int = 0, seq: int = 4) -> dict:
    """LWM's parameter tree `{'params': {...}}` for `shape`: the names and shapes `module.init`
    gives (by `jax.eval_shape`, nothing computed), filled from numpy (normal(0, 0.02) weights,
    norm weights 1 + noise so that a swapped norm would show in the logits)."""
    module = LwmForCausalLM(shape, scan_layers)
    ids = jnp.zeros((1, seq), jnp.int32)
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), ids, jnp.zeros((1, seq), bool),
                                                  jnp.arange(seq)[None]))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        names = "/".join(str(getattr(part, "key", part)) for part in path)
        if "norm" in names or "ln_f" in names:
            return (1.0 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return {"params": jax.tree_util.tree_map_with_path(fill, abstract["params"])}


def lwm_logits(shape: dict, params: dict, ids, vision_mask, scan_layers: bool):
    """LWM's (vision logits, text logits) for `ids` with positions 0..T-1."""
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return _compiled_apply(tuple(sorted(shape.items())), scan_layers)(
        params, jnp.asarray(ids), jnp.asarray(vision_mask), positions)


@functools.lru_cache(maxsize=8)
def _compiled_apply(shape_items, scan_layers):
    return jax.jit(LwmForCausalLM(dict(shape_items), scan_layers).apply)


# ---------------------------------------------------------------------------------------------
# VQGAN (lwm/vqgan.py): nn.compact modules, so parameters carry flax's automatic names, which
# come from the class names: these classes are named as LWM's are.

class ResnetBlock(nn.Module):
    out_channels: int | None = None

    @nn.compact
    def __call__(self, x):
        width = self.out_channels or x.shape[-1]
        h = nn.Conv(width, [3, 3])(nn.silu(nn.GroupNorm()(x)))
        h = nn.Conv(width, [3, 3])(nn.silu(nn.GroupNorm()(h)))
        if width != x.shape[-1]:
            x = nn.Conv(width, [1, 1])(x)
        return h + x


class Downsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, [(0, 0), (0, 1), (0, 1), (0, 0)])
        return nn.Conv(x.shape[-1], [3, 3], strides=[2, 2], padding="VALID")(x)


class Upsample(nn.Module):
    @nn.compact
    def __call__(self, x):
        B, H, W, C = x.shape
        x = jax.image.resize(x, (B, H * 2, W * 2, C), method="nearest")
        return nn.Conv(C, [3, 3])(x)


class DownsamplingBlock(nn.Module):
    cfg: dict
    block_idx: int

    @nn.compact
    def __call__(self, x):
        width = self.cfg["hidden_channels"] * self.cfg["channel_mult"][self.block_idx]
        for _ in range(self.cfg["num_res_blocks"]):
            x = ResnetBlock(width)(x)
        if self.block_idx != len(self.cfg["channel_mult"]) - 1:
            x = Downsample()(x)
        return x


class UpsamplingBlock(nn.Module):
    cfg: dict
    block_idx: int

    @nn.compact
    def __call__(self, x):
        width = self.cfg["hidden_channels"] * self.cfg["channel_mult"][self.block_idx]
        for _ in range(self.cfg["num_res_blocks"] + 1):
            x = ResnetBlock(width)(x)
        if self.block_idx != 0:
            x = Upsample()(x)
        return x


class MidBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = ResnetBlock()(x)  # ResnetBlock_0 runs first (flax names modules as they are built)
        return ResnetBlock()(x)


class Encoder(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.cfg["hidden_channels"], [3, 3])(x)
        for level in range(len(self.cfg["channel_mult"])):
            x = DownsamplingBlock(self.cfg, level)(x)
        x = MidBlock()(x)
        return nn.Conv(self.cfg["z_channels"], [3, 3])(nn.silu(nn.GroupNorm()(x)))


class Decoder(nn.Module):
    cfg: dict

    @nn.compact
    def __call__(self, x):
        levels = len(self.cfg["channel_mult"])
        x = nn.Conv(self.cfg["hidden_channels"] * self.cfg["channel_mult"][levels - 1], [3, 3])(x)
        x = MidBlock()(x)
        for level in reversed(range(levels)):
            x = UpsamplingBlock(self.cfg, level)(x)
        return nn.Conv(3, [3, 3])(nn.silu(nn.GroupNorm()(x)))


class VectorQuantizer(nn.Module):
    n_e: int
    e_dim: int

    @nn.compact
    def __call__(self, z, indices=None):
        embeddings = self.param("embeddings", lambda rng, shape, dtype: jax.random.uniform(
            rng, shape, dtype, -1.0 / self.n_e, 1.0 / self.n_e), [self.n_e, self.e_dim], jnp.float32)
        if indices is not None:
            return embeddings[(indices,)]
        flat = z.reshape(-1, z.shape[-1])
        d = (jnp.sum(flat**2, axis=1, keepdims=True) + jnp.sum(embeddings.T**2, axis=0, keepdims=True)
             - 2 * jnp.einsum("bd,nd->bn", flat, embeddings))
        indices = jnp.argmin(d, axis=1)
        return embeddings[(indices,)].reshape(z.shape), indices.reshape(z.shape[:-1])


class LwmVQGAN(nn.Module):
    """`VQGANModel`: `encode(pixels) -> (quantized, codes)`, `decode(codes)` clipped to [-1, 1]."""

    cfg: dict

    def setup(self):
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.quantize = VectorQuantizer(self.cfg["num_embeddings"], self.cfg["quantized_embed_dim"])
        self.quant_conv = nn.Conv(self.cfg["quantized_embed_dim"], [1, 1])
        self.post_quant_conv = nn.Conv(self.cfg["z_channels"], [1, 1])

    def encode(self, pixels):
        return self.quantize(self.quant_conv(self.encoder(pixels)))

    def decode(self, codes):
        x = self.post_quant_conv(self.quantize(None, codes))
        return jnp.clip(self.decoder(x), -1, 1)

    def __call__(self, pixels):
        return self.decode(self.encode(pixels)[1])


LWM_VQ_DEFAULT = dict(resolution=256, hidden_channels=128, channel_mult=(1, 2, 2, 4, 6), num_res_blocks=2,
                      z_channels=64, num_embeddings=8192, quantized_embed_dim=64)


def lwm_vqgan_shapes(cfg: dict) -> dict:
    """LWM's VQGAN parameter tree (names and shapes only) for `cfg`, by `jax.eval_shape`."""
    side = cfg["resolution"]
    return jax.eval_shape(lambda: LwmVQGAN(cfg).init(jax.random.key(0), jnp.zeros((1, side, side, 3))))["params"]


def init_lwm_vqgan(cfg: dict, seed: int = 0) -> dict:
    """A random LWM VQGAN tree (plain dict of float32 numpy arrays, as LWM's file holds)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        if name == "scale":
            return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name == "embeddings":
            return rng.standard_normal(leaf.shape).astype(np.float32)
        return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

    tree = jax.tree_util.tree_map_with_path(fill, lwm_vqgan_shapes(cfg))
    return jax.tree.map(np.asarray, _plain(tree))


def _plain(tree):
    return {key: _plain(value) for key, value in tree.items()} if hasattr(tree, "items") else tree
