"""V: the paper's convolutional VAE in Flax NNX, its training and batched encoding.

Encoder: four convolutions (32, 64, 128, 256 channels; kernel 4, stride 2, no padding, ReLU)
take a 64×64×3 frame to 2×2×256 = 1024 features, then two dense layers give mu and log-variance.
Decoder: dense z → 1024, seen as a 1×1×1024 image, then four transposed convolutions (128, 64,
32, 3 channels; kernels 5, 5, 6, 6; stride 2; ReLU, sigmoid on the last) back to 64×64×3.
That is 4,348,547 parameters for z = 32 and 4,446,915 for z = 64.

Loss per frame, as in the paper's code: the squared error summed over all pixels, plus the KL
divergence to N(0, I) floored at `kl_tolerance · z_size` (free bits: below 0.5 nat per dimension
the KL term gives no gradient); both are averaged over the batch.

The layers are `nnx.Conv` / `nnx.ConvTranspose` (so parameters and counts are flax's), but their
strided forms are computed by `strided_conv` and `strided_conv_transpose`: same results, about 7×
faster training on CPU, where XLA's gradients of strided convolutions are slow.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lwm.config import ConfigError
from lwm.config.worldmodels import VaeConfig, WorldModelsConfig
from lwm.worldmodels import checkpoint
from lwm.worldmodels.rollouts import episode_paths, load_episode, write_npz_atomic

ENCODER_CHANNELS = (32, 64, 128, 256)
DECODER_CHANNELS = (128, 64, 32, 3)
DECODER_KERNELS = (5, 5, 6, 6)


def _stride1_conv(x_BHWC: jax.Array, kernel_QQCD: jax.Array) -> jax.Array:
    """Stride-1 VALID cross-correlation as one matmul over Q×Q shifted views (im2col)."""
    taps = kernel_QQCD.shape[0]
    _, height, width, channels = x_BHWC.shape
    out_h, out_w = height - taps + 1, width - taps + 1
    columns = jnp.concatenate(
        [x_BHWC[:, a:a + out_h, b:b + out_w, :] for a in range(taps) for b in range(taps)], axis=-1)
    return columns @ kernel_QQCD.reshape(taps * taps * channels, -1)


def strided_conv(x_BHWC: jax.Array, kernel_KKCD: jax.Array, bias_D: jax.Array, stride: int) -> jax.Array:
    """`nnx.Conv(strides=stride, padding='VALID')` computed as space-to-depth + a stride-1 conv.

    XLA's CPU gradients of strided convolutions fall off its fast paths (a 64×64 VAE step took
    seconds); this form needs only reshapes, slices and one matmul, with the same result.
    """
    k, s = kernel_KKCD.shape[0], stride
    taps = -(-k // s)
    batch, height, width, channels = x_BHWC.shape
    out_h, out_w = (height - k) // s + 1, (width - k) // s + 1
    pad_h, pad_w = -(-height // s) * s, -(-width // s) * s
    x = jnp.pad(x_BHWC, ((0, 0), (0, pad_h - height), (0, pad_w - width), (0, 0)))
    x = x.reshape(batch, pad_h // s, s, pad_w // s, s, channels).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, pad_h // s, pad_w // s, s * s * channels)
    kernel = jnp.pad(kernel_KKCD, ((0, s * taps - k), (0, s * taps - k), (0, 0), (0, 0)))
    kernel = kernel.reshape(taps, s, taps, s, channels, -1).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(taps, taps, s * s * channels, -1)
    return _stride1_conv(x, kernel)[:, :out_h, :out_w] + bias_D


def strided_conv_transpose(x_BHWC: jax.Array, kernel_KKCD: jax.Array, bias_D: jax.Array, stride: int) -> jax.Array:
    """`nnx.ConvTranspose(strides=stride, padding='VALID')` computed as a stride-1 conv per phase.

    Output pixel `s·p + r` only meets kernel taps congruent to `r` mod `s`, so one stride-1 conv
    producing s² channel groups, then a depth-to-space shuffle, gives the transposed conv (with
    flax's unflipped-kernel convention) without the slow dilated-convolution gradients.
    """
    k, s = kernel_KKCD.shape[0], stride
    batch, height, width, channels = x_BHWC.shape
    out_h, out_w = (height - 1) * s + k, (width - 1) * s + k
    flipped = kernel_KKCD[::-1, ::-1]
    if height == 1 and width == 1:  # a dense layer in disguise (the decoder's first deconv)
        return jnp.einsum("bc,ijcd->bijd", x_BHWC[:, 0, 0, :], flipped) + bias_D
    taps = -(-k // s)
    kernel = jnp.pad(flipped, ((0, s * taps - k), (0, s * taps - k), (0, 0), (0, 0)))
    kernel = kernel.reshape(taps, s, taps, s, channels, -1)[::-1, :, ::-1]
    kernel = kernel.transpose(0, 2, 4, 1, 3, 5).reshape(taps, taps, channels, -1)
    x = jnp.pad(x_BHWC, ((0, 0), (taps - 1, taps - 1), (taps - 1, taps - 1), (0, 0)))
    y = _stride1_conv(x, kernel)
    phases_h, phases_w = y.shape[1], y.shape[2]
    y = y.reshape(batch, phases_h, phases_w, s, s, -1).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(batch, phases_h * s, phases_w * s, -1)
    return y[:, :out_h, :out_w] + bias_D


class ConvVAE(nnx.Module):
    """The World Models V: 64×64×3 frames in [0, 1] ↔ a `z_size` latent."""

    def __init__(self, z_size: int, *, rngs: nnx.Rngs):
        self.z_size = z_size
        channels_in = (3,) + ENCODER_CHANNELS[:-1]
        self.encoder = nnx.List([
            nnx.Conv(c_in, c_out, (4, 4), strides=2, padding="VALID", rngs=rngs)
            for c_in, c_out in zip(channels_in, ENCODER_CHANNELS)
        ])
        self.mu = nnx.Linear(1024, z_size, rngs=rngs)
        self.logvar = nnx.Linear(1024, z_size, rngs=rngs)
        self.decoder_input = nnx.Linear(z_size, 1024, rngs=rngs)
        deconv_in = (1024,) + DECODER_CHANNELS[:-1]
        self.decoder = nnx.List([
            nnx.ConvTranspose(c_in, c_out, (k, k), strides=2, padding="VALID", rngs=rngs)
            for c_in, c_out, k in zip(deconv_in, DECODER_CHANNELS, DECODER_KERNELS)
        ])

    def encode(self, x_BHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Frames in [0, 1] → (mu, log-variance), each [B, z]."""
        h = x_BHWC
        for conv in self.encoder:
            h = jax.nn.relu(strided_conv(h, conv.kernel[...], conv.bias[...], 2))
        h = h.reshape(h.shape[0], -1)
        return self.mu(h), self.logvar(h)

    def decode(self, z_BZ: jax.Array) -> jax.Array:
        """Latents [B, z] → frames [B, 64, 64, 3] in [0, 1]."""
        h = self.decoder_input(z_BZ).reshape(z_BZ.shape[0], 1, 1, 1024)
        for index, deconv in enumerate(self.decoder):
            h = strided_conv_transpose(h, deconv.kernel[...], deconv.bias[...], 2)
            h = jax.nn.sigmoid(h) if index == len(self.decoder) - 1 else jax.nn.relu(h)
        return h

    def __call__(self, x_BHWC: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Reconstructs frames through a reparameterised sample; returns (recon, mu, logvar)."""
        mu, logvar = self.encode(x_BHWC)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        return self.decode(z), mu, logvar


def init_vae(z_size: int, seed: int) -> ConvVAE:
    """A freshly initialised V (parameters drawn on the host, see `checkpoint.numpy_init`)."""
    return checkpoint.init_module(lambda: ConvVAE(z_size, rngs=nnx.Rngs(0)), seed)


def count_params(module_factory: Any) -> int:
    """Parameter count of the module that `module_factory()` builds, without allocating it."""
    abstract = nnx.eval_shape(module_factory)
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param))))


def vae_loss(x: jax.Array, recon: jax.Array, mu: jax.Array, logvar: jax.Array,
             kl_tolerance: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Summed-pixel L2 plus free-bits KL (floored at `kl_tolerance · z`), averaged over the batch."""
    reconstruction = jnp.sum(jnp.square(x - recon), axis=(1, 2, 3))
    kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
    kl_floored = jnp.maximum(kl, kl_tolerance * mu.shape[-1])
    loss = jnp.mean(reconstruction + kl_floored)
    return loss, {"loss": loss, "reconstruction": jnp.mean(reconstruction), "kl": jnp.mean(kl)}


def to_unit(frames_u8: jax.Array) -> jax.Array:
    """uint8 frames → float32 in [0, 1]."""
    return frames_u8.astype(jnp.float32) / 255.0


def make_train_step(graphdef: Any, optimizer: optax.GradientTransformation, kl_tolerance: float):
    """A jitted step: (params, opt_state, uint8 batch, key) → (params, opt_state, metrics)."""

    def loss_fn(params, frames_u8, key):
        model = nnx.merge(graphdef, params)
        x = to_unit(frames_u8)
        recon, mu, logvar = model(x, key)
        return vae_loss(x, recon, mu, logvar, kl_tolerance)

    @jax.jit
    def train_step(params, opt_state, frames_u8, key):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, frames_u8, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


def frame_batches(paths: list[Path], batch_size: int, buffer_episodes: int, rng: np.random.Generator,
                  cache: dict[str, np.ndarray]) -> Iterator[np.ndarray]:
    """One epoch of shuffled uint8 frame batches, reading `buffer_episodes` shards at a time.

    Frames left over after a buffer's last full batch carry into the next buffer; fewer than a
    batch at the epoch's end are skipped this epoch (the next epoch's shuffle covers them).
    When every shard fits in one buffer the frames are loaded once and kept in `cache`.
    """
    order = rng.permutation(len(paths))
    leftover = np.zeros((0, 64, 64, 3), np.uint8)
    for start in range(0, len(order), buffer_episodes):
        if "all" in cache:
            frames = cache["all"]
        else:
            frames = np.concatenate([load_episode(paths[i])["frames"] for i in order[start:start + buffer_episodes]])
            if len(paths) <= buffer_episodes:
                cache["all"] = frames
        frames = np.concatenate([leftover, frames[rng.permutation(len(frames))]])
        full = len(frames) // batch_size * batch_size
        for offset in range(0, full, batch_size):
            yield frames[offset:offset + batch_size]
        leftover = frames[full:]


@dataclasses.dataclass
class VaeSummary:
    """What V's training did."""

    steps: int
    epochs: float
    seconds: float
    final_loss: float
    final_reconstruction: float
    final_kl: float
    frames: int

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"V: {self.steps} steps ({self.epochs:.2f} epochs over {self.frames} frames) in {self.seconds:.0f} s; "
                f"loss {self.final_loss:.1f} = reconstruction {self.final_reconstruction:.1f} + KL {self.final_kl:.1f}")


def vae_meta(config: WorldModelsConfig) -> dict[str, Any]:
    """What `load_vae` needs to rebuild V."""
    return {"model": "ConvVAE", "z_size": config.vae.z_size, "env": config.env.name}


def train_vae(config: WorldModelsConfig, progress: bool = True) -> VaeSummary:
    """Trains V on every collected frame and writes `run_dir/vae/vae.npz` (+ `.json`)."""
    from tqdm import tqdm

    vae_config: VaeConfig = config.vae
    paths = episode_paths(config)
    frame_count = sum(int(np.load(path)["actions"].shape[0]) + 1 for path in paths)
    if frame_count < vae_config.batch_size:
        raise ConfigError(f"vae.batch_size={vae_config.batch_size} exceeds the {frame_count} collected frames: "
                          f"lower --vae.batch_size or collect more episodes")
    graphdef, params = nnx.split(init_vae(vae_config.z_size, vae_config.seed), nnx.Param)
    optimizer = optax.adam(vae_config.learning_rate)
    opt_state = optimizer.init(params)
    train_step = make_train_step(graphdef, optimizer, vae_config.kl_tolerance)
    rng = np.random.default_rng(vae_config.seed)
    key = jax.random.key(vae_config.seed)
    steps_per_epoch = max(frame_count // vae_config.batch_size, 1)
    total = steps_per_epoch * vae_config.epochs
    bar = tqdm(total=total, desc="train V", unit="step", disable=not progress)
    start = time.perf_counter()
    step, metrics, cache = 0, {}, {}
    out_of_time = False
    for _ in range(vae_config.epochs):
        for batch in frame_batches(paths, vae_config.batch_size, vae_config.buffer_episodes, rng, cache):
            key, step_key = jax.random.split(key)
            params, opt_state, metrics = train_step(params, opt_state, jnp.asarray(batch), step_key)
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(metrics['loss']):.1f}")
            if vae_config.max_seconds and time.perf_counter() - start > vae_config.max_seconds:
                out_of_time = True
                break
        if out_of_time:
            break
    bar.close()
    seconds = time.perf_counter() - start
    metrics = {name: float(value) for name, value in metrics.items()}
    summary = VaeSummary(step, step / steps_per_epoch, seconds, metrics.get("loss", float("nan")),
                         metrics.get("reconstruction", float("nan")), metrics.get("kl", float("nan")), frame_count)
    meta = vae_meta(config) | {"steps": step, "final_loss": summary.final_loss}
    checkpoint.save_arrays(config.paths.vae, "vae", nnx.State(params).to_pure_dict(), meta)
    return summary


def load_vae(directory: str | Path) -> ConvVAE:
    """Rebuilds V from `directory/vae.npz` and its sidecar."""
    meta = checkpoint.read_meta(directory, "vae")
    model = nnx.eval_shape(lambda: ConvVAE(int(meta["z_size"]), rngs=nnx.Rngs(0)))
    graphdef, template = nnx.split(model, nnx.Param)
    state = checkpoint.restore_state(template, checkpoint.load_arrays(directory, "vae"), f"{directory}/vae.npz")
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))


def encode_frames(model: ConvVAE, frames_u8: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu, logvar) for uint8 frames [N, 64, 64, 3], `chunk` frames per call (last one padded)."""
    graphdef, state = nnx.split(model)
    encode = _encode_fn(graphdef)
    mus, logvars = [], []
    for start in range(0, len(frames_u8), chunk):
        piece = frames_u8[start:start + chunk]
        padded = np.zeros((chunk,) + piece.shape[1:], np.uint8)
        padded[:len(piece)] = piece
        mu, logvar = encode(state, jnp.asarray(padded))
        mus.append(np.asarray(mu)[:len(piece)])
        logvars.append(np.asarray(logvar)[:len(piece)])
    return np.concatenate(mus), np.concatenate(logvars)


_JITTED: dict[tuple[Any, str], Any] = {}


def _encode_fn(graphdef: Any):
    # One jitted function per model structure, so repeated calls reuse the compiled chunk shape.
    if (graphdef, "encode") not in _JITTED:
        _JITTED[graphdef, "encode"] = jax.jit(lambda state, frames_u8: nnx.merge(graphdef, state).encode(to_unit(frames_u8)))
    return _JITTED[graphdef, "encode"]


def decode_latents(model: ConvVAE, z_BZ: np.ndarray) -> np.ndarray:
    """Latents [B, z] → uint8 frames [B, 64, 64, 3] (one jitted call)."""
    graphdef, state = nnx.split(model)
    if (graphdef, "decode") not in _JITTED:
        _JITTED[graphdef, "decode"] = jax.jit(lambda state, z: nnx.merge(graphdef, state).decode(z))
    frames = _JITTED[graphdef, "decode"](state, jnp.asarray(z_BZ, jnp.float32))
    return (np.asarray(frames) * 255.0).round().astype(np.uint8)


def encode_dataset(config: WorldModelsConfig, progress: bool = True) -> Path:
    """Encodes every collected episode with V into `run_dir/series/series.npz`.

    The file holds mu and logvar per frame ([N_frames, z]), the episodes' actions, rewards and
    dones ([N_steps, ...]), and offsets: episode e has frames `frame_offsets[e]:frame_offsets[e+1]`
    and steps `step_offsets[e]:step_offsets[e+1]` (one frame more than steps).
    """
    from tqdm import tqdm

    model = load_vae(config.paths.vae)
    paths = episode_paths(config)
    mus, logvars, actions, rewards, dones = [], [], [], [], []
    frame_offsets, step_offsets = [0], [0]
    for path in tqdm(paths, desc="encode", unit="episode", disable=not progress):
        episode = load_episode(path)
        mu, logvar = encode_frames(model, episode["frames"], config.vae.encode_chunk)
        mus.append(mu)
        logvars.append(logvar)
        actions.append(episode["actions"])
        rewards.append(episode["rewards"])
        dones.append(episode["dones"])
        frame_offsets.append(frame_offsets[-1] + len(mu))
        step_offsets.append(step_offsets[-1] + len(episode["actions"]))
    directory = config.paths.series
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "series.npz"
    write_npz_atomic(out, mu=np.concatenate(mus), logvar=np.concatenate(logvars),
                     actions=np.concatenate(actions), rewards=np.concatenate(rewards),
                     dones=np.concatenate(dones), frame_offsets=np.asarray(frame_offsets, np.int64),
                     step_offsets=np.asarray(step_offsets, np.int64))
    return out

