"""Training the VQ video tokenizer on frames sampled from the user's own videos.

Losses: L1 + L2 reconstruction in pixel space ([-1, 1]) plus the commitment loss
`commitment_cost * ||z - sg(e)||^2`; the encoder receives the decoder's gradient through the
straight-through estimator. No perceptual or adversarial loss (no pretrained networks here).

The codebook is not trained by gradients: each code moves to the exponential moving average of
the encoder outputs assigned to it (VQ-VAE-2), which is stable at high learning rates and on
tiny data. At step 0 every code is seeded from encoder outputs, and every `restart_every` steps
codes that were not used since the previous restart are re-seeded from encoder outputs of the
current batch. Codebook usage (fraction of codes used over that window) and the batch
perplexity of the code distribution are reported.

Checkpoints go to `checkpoint.dir/step_XXXXXXXX/` with `model/` (Orbax, `nnx.state`),
`train_state/` (optimizer and codebook statistics) and `config.yaml`; the directory alone
reloads the tokenizer (`lwm.model.vqgan_convert.load_vq_tokenizer`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from lwm.config import ConfigError
from lwm.config.vq import VQDataConfig, VQTrainRunConfig
from lwm.data.video import VideoReadError, list_videos, read_video
from lwm.model.vqgan import VQGAN, frames_to_pixels, init_vqgan
from lwm.model.vqgan_convert import CHECKPOINT_CONFIG, save_vq_checkpoint

TRAIN_STATE = "train_state"
EMA_EPSILON = 1e-5


class CodebookStats(nnx.Variable):
    """Moving-average statistics of the codebook (training only)."""


class CodebookEMA(nnx.Module):
    """EMA cluster sizes and sums of assigned encoder outputs, plus per-code use counts since
    the last dead-code restart."""

    def __init__(self, codebook_size: int, codebook_dim: int):
        self.cluster_size = CodebookStats(jnp.ones((codebook_size,), jnp.float32))
        self.embed_sum = CodebookStats(jnp.zeros((codebook_size, codebook_dim), jnp.float32))
        self.usage = CodebookStats(jnp.zeros((codebook_size,), jnp.float32))


@dataclasses.dataclass
class FrameSet:
    """Training frames and how they were gathered."""

    frames: np.ndarray  # [F, H, W, 3] uint8
    videos: int
    skipped: list[tuple[str, str]]


def load_training_frames(data: VQDataConfig, resolution: int, progress: bool = True) -> FrameSet:
    """Samples frames from every video in `data.paths`, resized and center-cropped to
    `resolution`. Unreadable videos are skipped, counted and reported; none readable is an
    error."""
    if not data.paths:
        raise ConfigError("vq data.paths is empty: list video files or folders, e.g. "
                          "--data.paths '[videos/]'")
    try:
        videos = list_videos(data.paths)
    except FileNotFoundError as error:
        raise ConfigError(f"vq data.paths: {error}") from error
    if data.max_videos is not None:
        videos = videos[:data.max_videos]
    if not videos:
        raise ConfigError(f"vq data.paths={list(data.paths)} holds no videos (mp4, webm, gif, ...)")
    frames: list[np.ndarray] = []
    skipped: list[tuple[str, str]] = []
    for path in tqdm(videos, desc="reading videos", disable=not progress, leave=False):
        try:
            if data.fps is not None:
                clip = read_video(path, fps=data.fps, size=resolution, max_frames=data.frames_per_video)
            else:
                clip = read_video(path, num_frames=data.frames_per_video, size=resolution)
        except VideoReadError as error:
            skipped.append((str(path), error.reason))
            continue
        frames.append(clip)
    if skipped:
        print(f"train-vq: skipped {len(skipped)} of {len(videos)} videos: "
              + "; ".join(f"{path} ({reason})" for path, reason in skipped[:5])
              + (" ..." if len(skipped) > 5 else ""), file=sys.stderr)
    if not frames:
        first_path, first_reason = skipped[0]  # every video was skipped
        raise VideoReadError(first_path, f"{first_reason}; none of the {len(videos)} videos of data.paths "
                                         f"could be read, so train-vq has no frames")
    return FrameSet(np.concatenate(frames), len(frames), skipped)


def vq_losses(model: VQGAN, pixels: jax.Array, l1_weight: float, l2_weight: float,
              commitment_cost: float):
    """Total loss and (metrics, latents, codes) for one batch of pixels in [-1, 1]."""
    output = model(pixels)
    error = output.reconstruction - pixels
    l1 = jnp.mean(jnp.abs(error))
    l2 = jnp.mean(error**2)
    commitment = jnp.mean((output.latents - jax.lax.stop_gradient(output.quantized)) ** 2)
    loss = l1_weight * l1 + l2_weight * l2 + commitment_cost * commitment
    metrics = {"loss": loss, "l1": l1, "mse": l2, "commitment": commitment}
    return loss, (metrics, output.latents, output.codes)


def _ema_update(model: VQGAN, ema: CodebookEMA, latents: jax.Array, codes: jax.Array,
                decay: float) -> jax.Array:
    """Moves codes toward the mean of their assigned latents; returns per-code counts."""
    size = ema.cluster_size.shape[0]
    flat_latents = latents.reshape(-1, latents.shape[-1])
    flat_codes = codes.reshape(-1)
    counts = jnp.zeros((size,), jnp.float32).at[flat_codes].add(1.0)
    sums = jax.ops.segment_sum(flat_latents, flat_codes, num_segments=size)
    cluster = decay * ema.cluster_size[...] + (1 - decay) * counts
    embed_sum = decay * ema.embed_sum[...] + (1 - decay) * sums
    total = jnp.sum(cluster)
    smoothed = (cluster + EMA_EPSILON) / (total + size * EMA_EPSILON) * total
    ema.cluster_size[...] = cluster
    ema.embed_sum[...] = embed_sum
    ema.usage[...] = ema.usage[...] + counts
    model.quantize.codebook[...] = embed_sum / smoothed[:, None]
    return counts


def _restart_dead_codes(model: VQGAN, ema: CodebookEMA, latents: jax.Array, key: jax.Array,
                        restart: jax.Array) -> tuple[jax.Array, jax.Array]:
    """When `restart` is true, re-seeds codes unused since the last restart with random encoder
    outputs of this batch and clears the use counts. Returns (codes restarted, fraction of codes
    used since the last restart)."""
    flat = latents.reshape(-1, latents.shape[-1])
    size = ema.usage.shape[0]
    dead = ema.usage[...] == 0
    used_fraction = 1.0 - jnp.mean(dead.astype(jnp.float32))
    dead = dead & restart
    choice = jax.random.randint(key, (size,), 0, flat.shape[0])
    noise = jax.random.normal(jax.random.fold_in(key, 1), (size, flat.shape[1]))
    seeds = flat[choice] + 0.01 * jnp.std(flat) * noise
    model.quantize.codebook[...] = jnp.where(dead[:, None], seeds, model.quantize.codebook[...])
    ema.embed_sum[...] = jnp.where(dead[:, None], seeds, ema.embed_sum[...])
    ema.cluster_size[...] = jnp.where(dead, 1.0, ema.cluster_size[...])
    ema.usage[...] = jnp.where(restart, 0.0, ema.usage[...])
    return jnp.sum(dead), used_fraction


@nnx.jit(static_argnames=("l1_weight", "l2_weight", "commitment_cost", "decay"))
def train_step(model: VQGAN, optimizer: nnx.Optimizer, ema: CodebookEMA, pixels: jax.Array,
               key: jax.Array, restart: jax.Array, *, l1_weight: float, l2_weight: float,
               commitment_cost: float, decay: float) -> dict[str, jax.Array]:
    """One optimisation step: gradients for the networks, EMA update for the codebook, and (when
    `restart` is true) re-seeding of dead codes from this batch's encoder outputs."""
    grad_fn = nnx.grad(vq_losses, has_aux=True)
    grads, (metrics, latents, codes) = grad_fn(model, pixels, l1_weight, l2_weight, commitment_cost)
    optimizer.update(model, grads)
    counts = _ema_update(model, ema, latents, codes, decay)
    metrics["codes_restarted"], metrics["codebook_usage"] = _restart_dead_codes(
        model, ema, latents, key, restart)
    probabilities = counts / jnp.sum(counts)
    entropy = -jnp.sum(jnp.where(probabilities > 0, probabilities * jnp.log(probabilities), 0.0))
    metrics["perplexity"] = jnp.exp(entropy)
    return metrics


def _make_optimizer(model: VQGAN, config: VQTrainRunConfig) -> nnx.Optimizer:
    train = config.train
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, train.lr, max(1, min(train.warmup_steps, train.steps - 1)), max(train.steps, 2),
        end_value=train.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(train.grad_clip) if train.grad_clip > 0 else optax.identity(),
                     optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=train.weight_decay))
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def _step_dirs(run_dir: Path) -> list[Path]:
    steps = [child for child in run_dir.glob("step_*") if (child / CHECKPOINT_CONFIG).is_file()
             and (child / TRAIN_STATE).exists()]
    return sorted(steps, key=lambda child: int(child.name.split("_")[-1]))


def _save(run_dir: Path, step: int, model, optimizer, ema, config, keep: int) -> Path:
    import orbax.checkpoint as ocp

    step_dir = save_vq_checkpoint(run_dir / f"step_{step:08d}", model, config)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(step_dir / TRAIN_STATE,
                      {"optimizer": nnx.state(optimizer), "ema": nnx.state(ema),
                       "step": np.asarray(step, np.int64)}, force=True)
    checkpointer.wait_until_finished()
    for old in _step_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return step_dir


def _restore(step_dir: Path, model, optimizer, ema) -> int:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    restored_model = checkpointer.restore(step_dir.absolute() / "model", nnx.state(model))
    nnx.update(model, restored_model)
    target = {"optimizer": nnx.state(optimizer), "ema": nnx.state(ema),
              "step": np.asarray(0, np.int64)}
    restored = checkpointer.restore(step_dir.absolute() / TRAIN_STATE, target)
    nnx.update(optimizer, restored["optimizer"])
    nnx.update(ema, restored["ema"])
    return int(restored["step"])


@dataclasses.dataclass
class VQTrainResult:
    """Outcome of a tokenizer training run."""

    model: VQGAN
    run_dir: Path
    steps: int
    metrics: dict[str, float]
    frames: int


def train_vq(config: VQTrainRunConfig, frames: np.ndarray | None = None,
             progress: bool = True) -> VQTrainResult:
    """Trains the tokenizer described by `config`; `frames` (uint8 `[F, H, W, 3]` at
    `model.resolution`) replaces reading `data.paths` when given."""
    resolution = config.model.resolution
    if frames is None:
        frames = load_training_frames(config.data, resolution, progress).frames
    if frames.ndim != 4 or frames.shape[1:3] != (resolution, resolution) or frames.dtype != np.uint8:
        raise ValueError(f"train-vq: expected uint8 frames [F, {resolution}, {resolution}, 3], "
                         f"got {frames.dtype} {frames.shape}")
    train = config.train
    run_dir = Path(config.checkpoint.dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = init_vqgan(config.model, train.seed)
    optimizer = _make_optimizer(model, config)
    ema = CodebookEMA(config.model.codebook_size, config.model.codebook_dim)
    start = 0
    existing = _step_dirs(run_dir) if config.checkpoint.resume else []
    if existing:
        start = _restore(existing[-1], model, optimizer, ema)
    rng = np.random.default_rng(train.seed + start)
    key = jax.random.key(train.seed)
    hyper = dict(l1_weight=train.l1_weight, l2_weight=train.l2_weight,
                 commitment_cost=train.commitment_cost, decay=train.ema_decay)

    def batch() -> jax.Array:
        chosen = frames[rng.integers(0, len(frames), train.batch_size)]
        if config.data.horizontal_flip:
            flip = rng.random(train.batch_size) < 0.5
            chosen = np.where(flip[:, None, None, None], chosen[:, :, ::-1], chosen)
        return frames_to_pixels(chosen)

    metrics: dict[str, float] = {}
    usage = float("nan")
    log_file = (run_dir / "metrics.jsonl").open("a")
    show = progress and jax.process_index() == 0
    bar = tqdm(range(start, train.steps), desc="train-vq", initial=start, total=train.steps,
               disable=not show)
    try:
        for step in bar:
            restart = step % train.restart_every == 0
            step_metrics = train_step(model, optimizer, ema, batch(), jax.random.fold_in(key, step),
                                      jnp.asarray(restart), **hyper)
            if restart and step > 0:
                usage = float(step_metrics["codebook_usage"])
                metrics["codebook_usage"] = usage
                metrics["codes_restarted"] = int(step_metrics["codes_restarted"])
            if (step + 1) % train.log_every == 0 or step + 1 == train.steps:
                metrics.update({name: float(step_metrics[name])
                                for name in ("loss", "l1", "mse", "commitment", "perplexity")})
                log_file.write(json.dumps({"step": step + 1, **metrics}) + "\n")
                log_file.flush()
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", mse=f"{metrics['mse']:.4f}",
                                ppl=f"{metrics['perplexity']:.0f}", usage=f"{usage:.2f}")
            if (step + 1) % config.checkpoint.every == 0 and step + 1 < train.steps:
                _save(run_dir, step + 1, model, optimizer, ema, config, config.checkpoint.keep)
    finally:
        bar.close()
        log_file.close()
    final_step = max(start, train.steps)
    if not (run_dir / f"step_{final_step:08d}" / TRAIN_STATE).exists():
        _save(run_dir, final_step, model, optimizer, ema, config, config.checkpoint.keep)
    return VQTrainResult(model, run_dir, final_step, metrics, len(frames))


def reconstruction_error(model: VQGAN, frames: np.ndarray, batch_size: int = 64) -> float:
    """Mean squared error in [-1, 1] pixel units of encode -> decode over uint8 frames."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def roundtrip(state, pixels):
        vq = nnx.merge(graphdef, state)
        return vq.decode(vq.encode(pixels))

    errors = []
    for start in range(0, len(frames), batch_size):
        pixels = frames_to_pixels(frames[start:start + batch_size])
        errors.append(np.asarray(jnp.mean((roundtrip(state, pixels) - pixels) ** 2, axis=(1, 2, 3))))
    return float(np.mean(np.concatenate(errors)))
