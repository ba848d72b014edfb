"""The VQGAN video tokenizer in Flax NNX: encoder, vector quantizer, decoder.

The architecture is the aMUSEd / open-MUSE VQGAN exactly as diffusers' `VQModel` builds it (the
f16 model LWM uses: 256x256 frames -> 16x16 codes from an 8192x64 codebook), so weights import
layer for layer (`lwm.model.formats`). Layers, in order:

- Encoder: `conv_in` 3x3; per level a down block of `num_res_blocks` residual blocks and, on all
  but the last level, a stride-2 3x3 conv after zero padding right/bottom by one; a mid block
  (residual, optional single-head attention, residual); GroupNorm, SiLU, `conv_out` 3x3 to
  `z_channels`.
- `quant_conv` 1x1 to `codebook_dim`; nearest codebook vector by L2 distance; `post_quant_conv`
  1x1 back to `z_channels`.
- Decoder: `conv_in` 3x3; mid block; per level (deepest first) an up block of
  `num_res_blocks + 1` residual blocks and, on all but the last, nearest x2 upsampling then a
  3x3 conv; norm, SiLU, `conv_out` 3x3. With `norm_type="spatial"` every decoder norm is a
  SpatialNorm conditioned on the quantized latents.

Tensors are NHWC; pixels are floats in [-1, 1]; codes are int32 `[N, h, w]`.

diffusers' flags: `lookup_from_codebook` (decode from indices) is what `VQGAN.decode(codes)`
does; `force_upcast` (keep the VAE in float32 under half precision) corresponds to computing
the codebook distances in float32 whatever `dtype` the convolutions use; `scaling_factor` only
matters for latent diffusion and is ignored. Weights are float32 throughout.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.config.vq import VQModelConfig

GROUP_NORM_EPS = 1e-6
SPATIAL_NORM_GROUPS = 32  # diffusers' SpatialNorm hard-codes 32 groups


class Codebook(nnx.Variable):
    """The codebook vectors. A separate variable type so that gradient optimizers (which train
    `nnx.Param`) leave them alone: training updates them by moving averages."""


def _conv(in_channels: int, out_channels: int, kernel: int, rngs: nnx.Rngs, *, stride: int = 1,
          padding: str | tuple = "SAME", dtype=None) -> nnx.Conv:
    return nnx.Conv(in_channels, out_channels, (kernel, kernel), strides=(stride, stride),
                    padding=padding, dtype=dtype, rngs=rngs)


def _group_norm(channels: int, groups: int, rngs: nnx.Rngs, dtype=None) -> nnx.GroupNorm:
    # The two-pass variance matches PyTorch's GroupNorm to float32 rounding.
    return nnx.GroupNorm(channels, num_groups=groups, epsilon=GROUP_NORM_EPS,
                         use_fast_variance=False, dtype=dtype, rngs=rngs)


def resize_nearest(x_NHWC: jax.Array, height: int, width: int) -> jax.Array:
    """Nearest-neighbour resize with PyTorch's `F.interpolate(mode="nearest")` index rule."""
    in_h, in_w = x_NHWC.shape[1:3]
    rows = (np.arange(height) * in_h) // height
    cols = (np.arange(width) * in_w) // width
    return x_NHWC[:, rows][:, :, cols]


class SpatialNorm(nnx.Module):
    """GroupNorm whose scale and shift are 1x1 convs of the (resized) quantized latents."""

    def __init__(self, channels: int, zq_channels: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm_layer = _group_norm(channels, SPATIAL_NORM_GROUPS, rngs, dtype)
        self.conv_y = _conv(zq_channels, channels, 1, rngs, dtype=dtype)
        self.conv_b = _conv(zq_channels, channels, 1, rngs, dtype=dtype)

    def __call__(self, x: jax.Array, zq: jax.Array) -> jax.Array:
        zq = resize_nearest(zq, x.shape[1], x.shape[2])
        return self.norm_layer(x) * self.conv_y(zq) + self.conv_b(zq)


class Norm(nnx.Module):
    """GroupNorm, or SpatialNorm when `zq_channels` is given (decoder with norm_type="spatial")."""

    def __init__(self, channels: int, groups: int, zq_channels: int | None, *, rngs: nnx.Rngs,
                 dtype=None):
        self.spatial = zq_channels is not None
        if self.spatial:
            self.norm = SpatialNorm(channels, zq_channels, rngs=rngs, dtype=dtype)
        else:
            self.norm = _group_norm(channels, groups, rngs, dtype)

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        return self.norm(x, zq) if self.spatial else self.norm(x)


class ResnetBlock(nnx.Module):
    """Pre-norm residual block: norm, SiLU, 3x3 conv, norm, SiLU, 3x3 conv, plus a 1x1 shortcut
    when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, groups: int,
                 zq_channels: int | None = None, *, rngs: nnx.Rngs, dtype=None):
        self.norm1 = Norm(in_channels, groups, zq_channels, rngs=rngs, dtype=dtype)
        self.conv1 = _conv(in_channels, out_channels, 3, rngs, dtype=dtype)
        self.norm2 = Norm(out_channels, groups, zq_channels, rngs=rngs, dtype=dtype)
        self.conv2 = _conv(out_channels, out_channels, 3, rngs, dtype=dtype)
        self.conv_shortcut = (
            _conv(in_channels, out_channels, 1, rngs, dtype=dtype)
            if in_channels != out_channels else None
        )

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        h = self.conv1(nnx.silu(self.norm1(x, zq)))
        h = self.conv2(nnx.silu(self.norm2(h, zq)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention over all positions with a residual connection (diffusers'
    `Attention` with `_from_deprecated_attn_block`, head width = channels)."""

    def __init__(self, channels: int, groups: int, zq_channels: int | None = None, *,
                 rngs: nnx.Rngs, dtype=None):
        self.norm = Norm(channels, groups, zq_channels, rngs=rngs, dtype=dtype)
        self.to_q = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_k = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_v = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)
        self.to_out = nnx.Linear(channels, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        batch, height, width, channels = x.shape
        h = self.norm(x, zq).reshape(batch, height * width, channels)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        scores = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(channels)
        weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = self.to_out(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(batch, height, width, channels)


class MidBlock(nnx.Module):
    """Residual block, optional attention, residual block, at the lowest resolution."""

    def __init__(self, channels: int, groups: int, attention: bool,
                 zq_channels: int | None = None, *, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            ResnetBlock(channels, channels, groups, zq_channels, rngs=rngs, dtype=dtype)
            for _ in range(2)
        ])
        self.attention = (
            AttentionBlock(channels, groups, zq_channels, rngs=rngs, dtype=dtype) if attention else None
        )

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        x = self.resnets[0](x, zq)
        if self.attention is not None:
            x = self.attention(x, zq)
        return self.resnets[1](x, zq)


class DownBlock(nnx.Module):
    """Residual blocks, then (except on the last level) a stride-2 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, groups: int,
                 downsample: bool, *, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups,
                        rngs=rngs, dtype=dtype)
            for i in range(num_res_blocks)
        ])
        self.downsample = (
            _conv(out_channels, out_channels, 3, rngs, stride=2, padding="VALID", dtype=dtype)
            if downsample else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsample is not None:
            # Asymmetric padding (right and bottom only), as taming and diffusers do.
            x = self.downsample(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))
        return x


class UpBlock(nnx.Module):
    """Residual blocks, then (except on the last level) nearest x2 upsampling and a 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, groups: int,
                 upsample: bool, zq_channels: int | None, *, rngs: nnx.Rngs, dtype=None):
        self.resnets = nnx.List([
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups,
                        zq_channels, rngs=rngs, dtype=dtype)
            for i in range(num_res_blocks)
        ])
        self.upsample = _conv(out_channels, out_channels, 3, rngs, dtype=dtype) if upsample else None

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        for resnet in self.resnets:
            x = resnet(x, zq)
        if self.upsample is not None:
            x = self.upsample(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
        return x


class Encoder(nnx.Module):
    """Pixels `[N, H, W, C]` -> latents `[N, H/f, W/f, z_channels]`."""

    def __init__(self, config: VQModelConfig, *, rngs: nnx.Rngs, dtype=None):
        channels = [config.hidden_channels * mult for mult in config.channel_mult]
        groups = config.norm_num_groups
        # conv_in widens to hidden_channels (taming and LWM); a first level with channel_mult > 1
        # then widens again in its first residual block (diffusers' configs always have 1).
        self.conv_in = _conv(config.in_channels, config.hidden_channels, 3, rngs, dtype=dtype)
        blocks = []
        previous = config.hidden_channels
        for level, width in enumerate(channels):
            last = level == len(channels) - 1
            blocks.append(DownBlock(previous, width, config.num_res_blocks, groups, not last,
                                    rngs=rngs, dtype=dtype))
            previous = width
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(channels[-1], groups, config.mid_attention, rngs=rngs, dtype=dtype)
        self.conv_norm_out = _group_norm(channels[-1], groups, rngs, dtype)
        self.conv_out = _conv(channels[-1], config.z_channels, 3, rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nnx.silu(self.conv_norm_out(x)))


class PositionwiseBlock(nnx.Module):
    """Residual block that mixes channels at each position only: LayerNorm, SiLU, 1x1 conv,
    twice. Nothing crosses positions, so a latent depends on its own patch alone."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs, dtype=None):
        self.norm1 = nnx.LayerNorm(channels, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)
        self.conv1 = _conv(channels, channels, 1, rngs, dtype=dtype)
        self.norm2 = nnx.LayerNorm(channels, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(channels, channels, 1, rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(nnx.silu(self.norm2(self.conv1(nnx.silu(self.norm1(x))))))


class PatchEncoder(nnx.Module):
    """Pixels `[N, H, W, C]` -> latents `[N, H/f, W/f, z_channels]`, each from its own f x f
    patch only (`encoder: patch`): an f-stride f x f conv, `num_res_blocks + 2` position-wise
    residual blocks (as many as the VQGAN encoder's last level and mid block), LayerNorm, SiLU,
    a 1x1 conv. Codes are then local: one changes only where the pixels under it change."""

    def __init__(self, config: VQModelConfig, *, rngs: nnx.Rngs, dtype=None):
        width, factor = config.hidden_channels * config.channel_mult[-1], config.downsample_factor
        self.conv_in = _conv(config.in_channels, width, factor, rngs, stride=factor, padding="VALID", dtype=dtype)
        self.blocks = nnx.List([PositionwiseBlock(width, rngs=rngs, dtype=dtype)
                                for _ in range(config.num_res_blocks + 2)])
        self.norm_out = nnx.LayerNorm(width, epsilon=GROUP_NORM_EPS, dtype=dtype, rngs=rngs)
        self.conv_out = _conv(width, config.z_channels, 1, rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_in(x)
        for block in self.blocks:
            x = block(x)
        return self.conv_out(nnx.silu(self.norm_out(x)))


class Decoder(nnx.Module):
    """Latents `[N, h, w, z_channels]` (and, for spatial norms, the quantized codes' vectors)
    -> pixels `[N, h*f, w*f, C]`."""

    def __init__(self, config: VQModelConfig, *, rngs: nnx.Rngs, dtype=None):
        channels = [config.hidden_channels * mult for mult in config.channel_mult]
        groups = config.norm_num_groups
        zq_channels = config.z_channels if config.norm_type == "spatial" else None
        self.conv_in = _conv(config.z_channels, channels[-1], 3, rngs, dtype=dtype)
        self.mid_block = MidBlock(channels[-1], groups, config.mid_attention, zq_channels,
                                  rngs=rngs, dtype=dtype)
        blocks = []
        previous = channels[-1]
        for index, width in enumerate(reversed(channels)):
            last = index == len(channels) - 1
            blocks.append(UpBlock(previous, width, config.num_res_blocks + 1, groups, not last,
                                  zq_channels, rngs=rngs, dtype=dtype))
            previous = width
        self.up_blocks = nnx.List(blocks)
        self.conv_norm_out = Norm(channels[0], groups, zq_channels, rngs=rngs, dtype=dtype)
        self.conv_out = _conv(channels[0], config.in_channels, 3, rngs, dtype=dtype)

    def __call__(self, x: jax.Array, zq: jax.Array | None = None) -> jax.Array:
        x = self.conv_in(x)
        x = self.mid_block(x, zq)
        for block in self.up_blocks:
            x = block(x, zq)
        return self.conv_out(nnx.silu(self.conv_norm_out(x, zq)))


class VectorQuantizer(nnx.Module):
    """Nearest-codebook-vector quantization (L2 distance) with a straight-through gradient."""

    def __init__(self, codebook_size: int, codebook_dim: int, *, rngs: nnx.Rngs):
        bound = 1.0 / codebook_size
        self.codebook = Codebook(jax.random.uniform(
            rngs.params(), (codebook_size, codebook_dim), jnp.float32, -bound, bound))

    # LWM's distance formula (`|z|^2 + |e|^2 - 2 z.e` at default matmul precision) instead of
    # ours; `set_lwm_numerics` turns it on so codes match LWM's bit for bit.
    lwm_distance: bool = False

    def nearest(self, z_ND: jax.Array) -> jax.Array:
        """Index of the nearest codebook vector for each row of `z_ND` (float32 distances)."""
        codebook = self.codebook[...]
        if self.lwm_distance:
            z32 = z_ND.astype(jnp.float32)
            distances = (jnp.sum(z32**2, axis=1, keepdims=True) + jnp.sum(codebook.T**2, axis=0, keepdims=True)
                         - 2 * jnp.einsum("bd,nd->bn", z32, codebook))
            return jnp.argmin(distances, axis=1).astype(jnp.int32)
        # ||z||^2 is the same for every code, so it is left out; that also keeps float32
        # precision for the terms that decide the argmin.
        cross = jnp.matmul(z_ND.astype(jnp.float32), codebook.T,
                           precision=jax.lax.Precision.HIGHEST)
        distances = jnp.sum(codebook**2, axis=-1)[None, :] - 2.0 * cross
        return jnp.argmin(distances, axis=-1).astype(jnp.int32)

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Codebook vectors for integer codes of any shape (a trailing axis is added)."""
        return jnp.take(self.codebook[...], codes, axis=0)

    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns the straight-through quantized latents (shape of `z`) and codes `z.shape[:-1]`."""
        codes = self.nearest(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1])
        quantized = self.lookup(codes).astype(z.dtype)
        return z + jax.lax.stop_gradient(quantized - z), codes


@dataclasses.dataclass
class VQOutput:
    """Everything a training step needs from one forward pass."""

    reconstruction: jax.Array  # [N, H, W, C], float in about [-1, 1]
    latents: jax.Array  # encoder output after quant_conv, [N, h, w, codebook_dim], float32
    quantized: jax.Array  # codebook vectors (no straight-through), same shape
    codes: jax.Array  # [N, h, w] int32


class VQGAN(nnx.Module):
    """The VQ video tokenizer: frames to codes and codes to frames.

    Example: `model = init_vqgan(config); codes = model.encode(frames_to_pixels(frames))` with
    uint8 `frames` `[N, H, W, 3]`. (`init_vqgan` draws the same initial distributions as this
    constructor, faster on CPU; `lwm.load_vq` / `lwm.model.vq_tokenizer` load trained weights.)
    """

    def __init__(self, config: VQModelConfig, *, rngs: nnx.Rngs):
        config.validate()
        self.config = config
        dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
        encoder = PatchEncoder if config.encoder == "patch" else Encoder
        self.encoder = encoder(config, rngs=rngs, dtype=dtype)
        self.quant_conv = _conv(config.z_channels, config.codebook_dim, 1, rngs, dtype=dtype)
        self.quantize = VectorQuantizer(config.codebook_size, config.codebook_dim, rngs=rngs)
        self.post_quant_conv = _conv(config.codebook_dim, config.z_channels, 1, rngs, dtype=dtype)
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype)

    def encode_latents(self, pixels_NHWC: jax.Array) -> jax.Array:
        """Continuous latents before quantization, float32 `[N, h, w, codebook_dim]`."""
        return self.quant_conv(self.encoder(pixels_NHWC)).astype(jnp.float32)

    def encode(self, pixels_NHWC: jax.Array) -> jax.Array:
        """Codes `[N, h, w]` int32 for pixels in [-1, 1]."""
        latents = self.encode_latents(pixels_NHWC)
        return self.quantize.nearest(latents.reshape(-1, latents.shape[-1])).reshape(latents.shape[:-1])

    def decode_latents(self, quantized_NhwD: jax.Array) -> jax.Array:
        """Pixels (float, about [-1, 1]) from quantized latents."""
        zq = quantized_NhwD if self.config.norm_type == "spatial" else None
        return self.decoder(self.post_quant_conv(quantized_NhwD), zq).astype(jnp.float32)

    # LWM's decode() clips its output to [-1, 1]; `set_lwm_numerics` turns this on.
    clip_decoded: bool = False

    def decode(self, codes_Nhw: jax.Array) -> jax.Array:
        """Pixels (float, about [-1, 1]; clipped to it with LWM's numerics) `[N, H, W, C]` from
        codes `[N, h, w]`."""
        pixels = self.decode_latents(self.quantize.lookup(codes_Nhw))
        return jnp.clip(pixels, -1.0, 1.0) if self.clip_decoded else pixels

    def __call__(self, pixels_NHWC: jax.Array) -> VQOutput:
        """Encode, quantize (straight-through) and decode: the training forward pass."""
        latents = self.encode_latents(pixels_NHWC)
        straight_through, codes = self.quantize(latents)
        reconstruction = self.decode_latents(straight_through)
        return VQOutput(reconstruction, latents, self.quantize.lookup(codes), codes)


def set_lwm_numerics(model: VQGAN) -> VQGAN:
    """Makes `model` compute exactly as LWM's flax VQGAN (`lwm/vqgan.py`): GroupNorm with
    flax.linen's default one-pass variance, LWM's codebook distance, and `decode` clipped to
    [-1, 1]. Returns the model (changed in place)."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.GroupNorm):
            node.use_fast_variance = True
    model.quantize.lwm_distance = True
    model.clip_decoded = True
    return model


def abstract_vqgan(config: VQModelConfig) -> VQGAN:
    """A VQGAN whose variables are shapes only (no compute); fill it with `set_value`."""
    return nnx.eval_shape(lambda: VQGAN(config, rngs=nnx.Rngs(0)))


def init_vqgan(config: VQModelConfig, seed: int = 0) -> VQGAN:
    """A freshly initialised VQGAN, drawn with numpy rather than JAX's PRNG.

    Initialising dozens of differently shaped parameters with JAX compiles one program per
    shape, which takes tens of seconds on a small CPU; numpy draws the same distributions at
    once. Kernels: truncated normal (2 std) with variance 1/fan_in (flax's default); biases 0;
    norm scales 1; codebook uniform in [-1/K, 1/K] (as diffusers and taming initialise it).
    """
    model = abstract_vqgan(config)
    rng = np.random.default_rng(seed)
    for path, variable in nnx.iter_graph(model):
        if not isinstance(variable, nnx.Variable):
            continue
        shape, name = tuple(variable.shape), str(path[-1])
        if isinstance(variable, Codebook):
            bound = 1.0 / shape[0]
            value = rng.uniform(-bound, bound, shape)
        elif name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            # The std of a standard normal truncated at +-2 is 0.8796; divide it out.
            value = np.clip(rng.standard_normal(shape), -2.0, 2.0) / 0.87962566 / np.sqrt(fan_in)
        elif name == "scale":
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        variable.set_value(jnp.asarray(value, dtype=variable.dtype))
    return model


def frames_to_pixels(frames: np.ndarray | jax.Array) -> jax.Array:
    """uint8 frames `[..., H, W, 3]` in [0, 255] to float32 pixels in [-1, 1]; float input is
    taken to be in [-1, 1] already and passed through as float32."""
    frames = jnp.asarray(frames)
    if frames.dtype == jnp.uint8:
        return frames.astype(jnp.float32) / 127.5 - 1.0
    if not jnp.issubdtype(frames.dtype, jnp.floating):
        raise TypeError(f"frames must be uint8 in [0, 255] or float in [-1, 1], got {frames.dtype}")
    return frames.astype(jnp.float32)


def pixels_to_frames(pixels: jax.Array | np.ndarray) -> np.ndarray:
    """Float pixels in [-1, 1] to uint8 frames (clipped and rounded)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    return np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
