"""M: the MDN-RNN — an LSTM whose output parameterises a Gaussian mixture over the next z.

Layout (the one that gives the paper's parameter counts):
- LSTM on the input `[z_t, a_t]` (TakeCover adds a flag that is 1 on an episode's first step),
  one fused kernel `[input + hidden, 4·hidden]` and one bias `[4·hidden]` (gates i, f, g, o;
  1 is added to the forget gate's pre-activation, as TensorFlow's LSTM cells do);
- MDN head: a linear layer hidden → mixtures·3·z, read per z dimension as `mixtures` log-weights,
  means and log standard deviations (each dimension of z has its own 1-D mixture);
- TakeCover only: a done head, linear hidden → 1, the logit that the episode ends after `a_t`.
CarRacing (z 32, action 3, 256 units, 5 mixtures): 4·256·(35+256) + 4·256 + 256·480 + 480 =
422,368. TakeCover (z 64, action 1 + start flag, 512 units): 1,185,792 + 492,480 + 513 =
1,678,785, the count in the paper's Doom table.

Training is teacher-forced: from `(z_t, a_t)` predict `z_{t+1}` (negative log-likelihood of the
mixture, log-sum-exp over components) and, for TakeCover, whether the episode ends.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lwm.config.worldmodels import WorldModelsConfig
from lwm.worldmodels import checkpoint

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class MixtureOutput(NamedTuple):
    """M's prediction for the next step: per z dimension a mixture, plus the done logit."""

    logmix: jax.Array  # [..., z, K], normalised log mixture weights
    mean: jax.Array  # [..., z, K]
    logstd: jax.Array  # [..., z, K]
    done_logit: jax.Array | None  # [...] or None without a done head


class LSTMCell(nnx.Module):
    """An LSTM cell with one fused input+recurrent kernel and one bias."""

    def __init__(self, input_size: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        init = nnx.initializers.glorot_uniform()
        self.kernel = nnx.Param(init(rngs.params(), (input_size + hidden, 4 * hidden)))
        self.bias = nnx.Param(jnp.zeros((4 * hidden,)))

    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One step: `(h, c), x → (h', c')`."""
        h, c = carry
        gates = jnp.concatenate([x, h], axis=-1) @ self.kernel[...] + self.bias[...]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c


class MDNRNN(nnx.Module):
    """The World Models M (see the module docstring for the layout)."""

    def __init__(self, z_size: int, action_dim: int, hidden: int, mixtures: int, with_done: bool,
                 *, rngs: nnx.Rngs):
        self.z_size, self.action_dim, self.hidden = z_size, action_dim, hidden
        self.mixtures, self.with_done = mixtures, with_done
        self.lstm = LSTMCell(z_size + action_dim + int(with_done), hidden, rngs=rngs)
        self.mdn = nnx.Linear(hidden, mixtures * 3 * z_size, rngs=rngs)
        self.done = nnx.Linear(hidden, 1, rngs=rngs) if with_done else None

    def initial_carry(self, batch_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Zero `(h, c)` for a batch."""
        zeros = jnp.zeros(batch_shape + (self.hidden,))
        return zeros, zeros

    def step(self, carry: tuple[jax.Array, jax.Array], z: jax.Array, action: jax.Array,
             start: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Feeds `(z_t, a_t)` (and the first-step flag for TakeCover); returns `(h_{t+1}, c_{t+1})`."""
        inputs = [z, action]
        if self.with_done:
            inputs.append(jnp.zeros(z.shape[:-1] + (1,)) if start is None else start[..., None].astype(z.dtype))
        return self.lstm(carry, jnp.concatenate(inputs, axis=-1))

    def heads(self, h: jax.Array) -> MixtureOutput:
        """The mixture over `z_{t+1}` (and the done logit) from `h_{t+1}`."""
        out = self.mdn(h).reshape(h.shape[:-1] + (self.z_size, 3 * self.mixtures))
        logmix, mean, logstd = jnp.split(out, 3, axis=-1)
        logmix = jax.nn.log_softmax(logmix, axis=-1)
        done_logit = self.done(h)[..., 0] if self.done is not None else None
        return MixtureOutput(logmix, mean, logstd, done_logit)

    def __call__(self, z_BTZ: jax.Array, action_BTA: jax.Array, start_BT: jax.Array) -> MixtureOutput:
        """Teacher-forced predictions for every step of sequences `[B, T, ...]`."""
        def body(carry, inputs):
            z, action, start = inputs
            carry = self.step(carry, z, action, start)
            return carry, carry[0]

        time_major = (jnp.swapaxes(z_BTZ, 0, 1), jnp.swapaxes(action_BTA, 0, 1), jnp.swapaxes(start_BT, 0, 1))
        _, h_TBH = jax.lax.scan(body, self.initial_carry(z_BTZ.shape[:1]), time_major)
        return self.heads(jnp.swapaxes(h_TBH, 0, 1))


def mixture_log_prob(y: jax.Array, logmix: jax.Array, mean: jax.Array, logstd: jax.Array) -> jax.Array:
    """log p(y) per dimension under the 1-D Gaussian mixtures: `[..., z]`."""
    y = y[..., None]
    log_normal = -0.5 * jnp.square((y - mean) * jnp.exp(-logstd)) - logstd - LOG_SQRT_2PI
    return jax.scipy.special.logsumexp(logmix + log_normal, axis=-1)


def sample_mixture(key: jax.Array, logmix: jax.Array, mean: jax.Array, logstd: jax.Array,
                   temperature: float | jax.Array) -> jax.Array:
    """Draws z from the mixtures at temperature τ: logits / τ, noise std × √τ (paper's code)."""
    pick_key, noise_key = jax.random.split(key)
    component = jax.random.categorical(pick_key, logmix / temperature, axis=-1)[..., None]
    chosen_mean = jnp.take_along_axis(mean, component, axis=-1)[..., 0]
    chosen_logstd = jnp.take_along_axis(logstd, component, axis=-1)[..., 0]
    noise = jax.random.normal(noise_key, chosen_mean.shape)
    return chosen_mean + jnp.exp(chosen_logstd) * jnp.sqrt(temperature) * noise


def weighted_bce(logit: jax.Array, target: jax.Array, pos_weight: float) -> jax.Array:
    """Binary cross-entropy with the positive class weighed by `pos_weight`."""
    return -(pos_weight * target * jax.nn.log_sigmoid(logit) + (1.0 - target) * jax.nn.log_sigmoid(-logit))


def mdnrnn_loss(model: MDNRNN, batch: dict[str, jax.Array], key: jax.Array,
                done_pos_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked mean NLL of `z_{t+1}` (+ weighted done cross-entropy); z is sampled from N(mu, σ).

    `batch`: mu/logvar `[B, T+1, z]`, actions `[B, T, A]`, start/done/mask `[B, T]`.
    """
    z = batch["mu"] + jnp.exp(0.5 * batch["logvar"]) * jax.random.normal(key, batch["mu"].shape)
    out = model(z[:, :-1], batch["actions"], batch["start"])
    mask = batch["mask"]
    denominator = jnp.maximum(jnp.sum(mask), 1.0)
    nll = -mixture_log_prob(z[:, 1:], out.logmix, out.mean, out.logstd)  # [B, T, z]
    z_loss = jnp.sum(jnp.mean(nll, axis=-1) * mask) / denominator
    metrics = {"z_nll": z_loss}
    loss = z_loss
    if out.done_logit is not None:
        done_loss = jnp.sum(weighted_bce(out.done_logit, batch["done"], done_pos_weight) * mask) / denominator
        metrics["done_bce"] = done_loss
        loss = loss + done_loss
    metrics["loss"] = loss
    return loss, metrics


class Series:
    """Encoded episodes (from `series.npz`) and random training windows cut from them."""

    def __init__(self, path: str | Path):
        with np.load(path) as data:
            self.arrays = {key: data[key] for key in data.files}
        self.frame_offsets = self.arrays["frame_offsets"]
        self.step_offsets = self.arrays["step_offsets"]
        self.lengths = np.diff(self.step_offsets)
        if len(self.lengths) == 0 or self.lengths.sum() == 0:
            raise ValueError(f"{path}: no encoded steps; run `lwm wm collect` and `lwm wm train-vae` first")

    @property
    def z_size(self) -> int:
        """Width of the encoded latents."""
        return int(self.arrays["mu"].shape[1])

    def initial_latents(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, logvar) of every episode's first frame: where dreams start."""
        first = self.frame_offsets[:-1]
        return self.arrays["mu"][first], self.arrays["logvar"][first]

    def sample(self, rng: np.random.Generator, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """`batch_size` windows of `seq_len` steps; episodes drawn in proportion to their length.

        Steps past an episode's end are masked out (mask 0) and repeat its last values.
        """
        episodes = rng.choice(len(self.lengths), size=batch_size, p=self.lengths / self.lengths.sum())
        lengths = self.lengths[episodes]
        starts = rng.integers(0, np.maximum(lengths - seq_len, 0) + 1)
        t = starts[:, None] + np.arange(seq_len)[None, :]  # [B, L]
        mask = t < lengths[:, None]
        step_t = np.minimum(t, lengths[:, None] - 1)
        frame_t = np.minimum(np.concatenate([t, t[:, -1:] + 1], axis=1), lengths[:, None])
        frames = self.frame_offsets[episodes][:, None] + frame_t
        steps = self.step_offsets[episodes][:, None] + step_t
        return {
            "mu": self.arrays["mu"][frames],
            "logvar": self.arrays["logvar"][frames],
            "actions": self.arrays["actions"][steps],
            "start": (t == 0).astype(np.float32),
            "done": self.arrays["dones"][steps].astype(np.float32) * mask,
            "mask": mask.astype(np.float32),
        }


def make_train_step(graphdef: Any, optimizer: optax.GradientTransformation, done_pos_weight: float):
    """A jitted step: (params, opt_state, batch, key) → (params, opt_state, metrics)."""

    def loss_fn(params, batch, key):
        return mdnrnn_loss(nnx.merge(graphdef, params), batch, key, done_pos_weight)

    @jax.jit
    def train_step(params, opt_state, batch, key):
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


@dataclasses.dataclass
class MdnRnnSummary:
    """What M's training did."""

    steps: int
    seconds: float
    final: dict[str, float]

    def summary(self) -> str:
        """One line for the terminal."""
        metrics = ", ".join(f"{name} {value:.3f}" for name, value in sorted(self.final.items()))
        return f"M: {self.steps} steps in {self.seconds:.0f} s; last batch {metrics}"


def build_mdnrnn(meta: dict[str, Any], rngs: nnx.Rngs) -> MDNRNN:
    """M with the sizes recorded in `meta` (an `mdnrnn.json` sidecar)."""
    return MDNRNN(int(meta["z_size"]), int(meta["action_dim"]), int(meta["hidden"]), int(meta["mixtures"]),
                  bool(meta["with_done"]), rngs=rngs)


def init_mdnrnn(meta: dict[str, Any], seed: int) -> MDNRNN:
    """A freshly initialised M (parameters drawn on the host, see `checkpoint.numpy_init`)."""
    return checkpoint.init_module(lambda: build_mdnrnn(meta, nnx.Rngs(0)), seed)


def train_mdnrnn(config: WorldModelsConfig, progress: bool = True) -> MdnRnnSummary:
    """Trains M on `run_dir/series/series.npz`; writes `run_dir/mdnrnn/mdnrnn.npz` (+ `.json`)."""
    from tqdm import tqdm

    settings = config.mdnrnn
    series = Series(config.paths.series / "series.npz")
    meta = {"model": "MDNRNN", "z_size": series.z_size, "action_dim": config.env.action_dim,
            "hidden": settings.hidden, "mixtures": settings.mixtures, "with_done": config.env.has_done,
            "done_pos_weight": settings.done_pos_weight, "env": config.env.name}
    graphdef, params = nnx.split(init_mdnrnn(meta, settings.seed), nnx.Param)
    optimizer = optax.chain(optax.clip(settings.grad_clip), optax.adam(settings.learning_rate)) \
        if settings.grad_clip > 0 else optax.adam(settings.learning_rate)
    opt_state = optimizer.init(params)
    train_step = make_train_step(graphdef, optimizer, settings.done_pos_weight)
    rng = np.random.default_rng(settings.seed)
    key = jax.random.key(settings.seed)
    start = time.perf_counter()
    metrics: dict[str, Any] = {}
    step = 0
    bar = tqdm(total=settings.steps, desc="train M", unit="step", disable=not progress)
    while step < settings.steps:
        batch = {name: jnp.asarray(value) for name, value in series.sample(rng, settings.batch_size, settings.seq_len).items()}
        key, step_key = jax.random.split(key)
        params, opt_state, metrics = train_step(params, opt_state, batch, step_key)
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
        if settings.max_seconds and time.perf_counter() - start > settings.max_seconds:
            break
    bar.close()
    final = {name: float(value) for name, value in metrics.items()}
    checkpoint.save_arrays(config.paths.mdnrnn, "mdnrnn", nnx.State(params).to_pure_dict(),
                           meta | {"steps": step, "final": final})
    return MdnRnnSummary(step, time.perf_counter() - start, final)


def load_mdnrnn(directory: str | Path) -> MDNRNN:
    """Rebuilds M from `directory/mdnrnn.npz` and its sidecar."""
    meta = checkpoint.read_meta(directory, "mdnrnn")
    model = nnx.eval_shape(lambda: build_mdnrnn(meta, nnx.Rngs(0)))
    graphdef, template = nnx.split(model, nnx.Param)
    state = checkpoint.restore_state(template, checkpoint.load_arrays(directory, "mdnrnn"), f"{directory}/mdnrnn.npz")
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))
