"""C: the linear controller a = tanh(W [z, h] + b) and its evaluation in the real environment.

C's parameters are one flat vector θ (what CMA-ES searches): `W = θ[:A·F].reshape(A, F)`, then
`b = θ[A·F:]`, where F = z + hidden (+ hidden with `include_cell`). CarRacing: 3·(32 + 256) + 3
= 867 parameters. Its tanh output becomes a model action as described in `envs.py`.

Real-environment evaluation runs many episodes in lockstep: every step, all their frames go
through V, C and M in one jitted call (padded to a fixed batch, so one compilation serves all
generations), then each environment steps. Several spawned worker processes each run a share
of the episodes; each keeps its environments and compiled function across generations.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.worldmodels import WorldModelsConfig
from lwm.worldmodels import checkpoint

_WORKER: dict[str, Any] = {}
# Jitted policy steps per (environment, controller shape, sample_z), and the largest batch each
# has compiled in this process: smaller calls are padded up to it instead of compiling again.
_POLICY_STEPS: dict[tuple[str, ControllerSpec, bool], Any] = {}
_COMPILED_BATCH: dict[tuple[str, ControllerSpec, bool], int] = {}


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
    """The shapes of C: feature width F, action width A, whether it reads the LSTM cell."""

    z_size: int
    hidden: int
    action_dim: int
    include_cell: bool = False

    @property
    def features(self) -> int:
        """F: the width of C's input."""
        return self.z_size + self.hidden * (2 if self.include_cell else 1)

    @property
    def num_params(self) -> int:
        """Length of θ: A·F weights plus A biases."""
        return self.action_dim * self.features + self.action_dim


def controller_tanh(theta_N: Any, features_F: Any, spec: ControllerSpec, xp: Any = np) -> Any:
    """tanh(W f + b) for one θ and one feature vector (numpy or jax.numpy via `xp`)."""
    weights = theta_N[: spec.action_dim * spec.features].reshape(spec.action_dim, spec.features)
    return xp.tanh(weights @ features_F + theta_N[spec.action_dim * spec.features:])


def batched_controller_tanh(theta_BN: Any, features_BF: Any, spec: ControllerSpec) -> Any:
    """tanh(W_b f_b + b_b) for a batch of controllers, each with its own features (JAX)."""
    import jax.numpy as jnp

    split = spec.action_dim * spec.features
    weights = theta_BN[:, :split].reshape(-1, spec.action_dim, spec.features)
    return jnp.tanh(jnp.einsum("baf,bf->ba", weights, features_BF) + theta_BN[:, split:])


def save_controller(directory: str | Path, name: str, theta: np.ndarray, spec: ControllerSpec,
                    meta: dict[str, Any]) -> Path:
    """Writes `directory/name.npz` (key `params`) and its JSON sidecar."""
    info = dict(meta) | dataclasses.asdict(spec) | {"model": "LinearController"}
    return checkpoint.save_arrays(directory, name, {"params": np.asarray(theta, np.float32)}, info)


def load_controller(directory: str | Path, name: str = "best") -> tuple[np.ndarray, ControllerSpec, dict[str, Any]]:
    """(θ, spec, sidecar) of a saved controller; checks θ's length against the spec."""
    meta = checkpoint.read_meta(directory, name)
    spec = ControllerSpec(int(meta["z_size"]), int(meta["hidden"]), int(meta["action_dim"]), bool(meta["include_cell"]))
    theta = np.asarray(checkpoint.load_arrays(directory, name)["params"], np.float32)
    if theta.shape != (spec.num_params,):
        raise ValueError(f"{directory}/{name}.npz: params has shape {theta.shape}, the sidecar's sizes need "
                         f"({spec.num_params},)")
    return theta, spec, meta


def spec_for(config: WorldModelsConfig, vae_meta: dict[str, Any], mdn_meta: dict[str, Any]) -> ControllerSpec:
    """C's shapes for the V and M of a run."""
    return ControllerSpec(int(vae_meta["z_size"]), int(mdn_meta["hidden"]), config.env.action_dim,
                          config.controller.include_cell)


def make_policy_step(env_name: str, spec: ControllerSpec, sample_z: bool):
    """The (cached) jitted policy step; see `_build_policy_step`."""
    key = (env_name, spec, sample_z)
    if key not in _POLICY_STEPS:
        _POLICY_STEPS[key] = _build_policy_step(env_name, spec, sample_z)
    return _POLICY_STEPS[key]


def _build_policy_step(env_name: str, spec: ControllerSpec, sample_z: bool):
    """A jitted `(vae, mdnrnn, θ [B, N], frames uint8 [B, 64, 64, 3], (h, c), start [B], key)
    → (model actions [B, A], (h, c))`; `start` is 1 on an episode's first step (M's TakeCover flag).

    Frame → V's mean (or a posterior sample) → C on [z, h(, c)] → model action → M's next state.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lwm.worldmodels.envs import model_action_from_tanh
    from lwm.worldmodels.vae import to_unit

    @nnx.jit
    def step(vae, mdnrnn, theta_BN, frames_u8, carry, start_B, key):
        mu, logvar = vae.encode(to_unit(frames_u8))
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape) if sample_z else mu
        h, c = carry
        features = jnp.concatenate([z, h, c] if spec.include_cell else [z, h], axis=-1)
        actions = model_action_from_tanh(env_name, batched_controller_tanh(theta_BN, features, spec), jnp)
        return actions, mdnrnn.step(carry, z, actions, start_B)

    return step


class LockstepRunner:
    """Plays many episodes at once in one process: one jitted V→C→M call per step for all."""

    def __init__(self, config: WorldModelsConfig, vae: Any, mdnrnn: Any, spec: ControllerSpec, sample_z: bool):
        self.config = config
        self.vae, self.mdnrnn, self.spec = vae, mdnrnn, spec
        self.step = make_policy_step(config.env.name, spec, sample_z)
        self.step_key = (config.env.name, spec, sample_z)
        self.envs: list[Any] = []
        self.last_steps = 0  # environment steps taken by the last `run`, all episodes together

    def run(self, thetas: np.ndarray, seeds: list[int], batch: int, key_seed: int = 0,
            record: bool = False) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Returns of `len(seeds)` episodes (θ `thetas[i]`, seed `seeds[i]`), padded to `batch` slots.

        With `record`, also the raw frames of every episode (for GIFs).
        """
        import jax
        import jax.numpy as jnp

        from lwm.worldmodels.envs import make_env

        count = len(seeds)
        if count > batch:
            raise ValueError(f"{count} episodes do not fit a batch of {batch}")
        batch = max(batch, _COMPILED_BATCH.get(self.step_key, 0))
        _COMPILED_BATCH[self.step_key] = batch
        while len(self.envs) < count:
            self.envs.append(make_env(self.config.env))
        theta_pad = np.zeros((batch, self.spec.num_params), np.float32)
        theta_pad[:count] = thetas
        frames = np.zeros((batch, 64, 64, 3), np.uint8)
        recordings: list[list[np.ndarray]] = [[] for _ in range(count)]
        for index in range(count):
            frames[index] = self.envs[index].reset(int(seeds[index]))
            if record:
                recordings[index].append(self.envs[index].raw_frame.copy())
        carry = self.mdnrnn.initial_carry((batch,))
        returns = np.zeros(count)
        running = np.ones(count, bool)
        key = jax.random.key(key_seed)
        theta_device = jnp.asarray(theta_pad)
        self.last_steps = 0
        start = jnp.ones((batch,))
        while running.any():
            key, step_key = jax.random.split(key)
            actions, carry = self.step(self.vae, self.mdnrnn, theta_device, jnp.asarray(frames), carry, start, step_key)
            start = jnp.zeros((batch,))
            actions = np.asarray(actions)
            for index in np.flatnonzero(running):
                frame, reward, terminated, truncated = self.envs[index].step(actions[index])
                self.last_steps += 1
                frames[index] = frame
                returns[index] += reward
                if record:
                    recordings[index].append(self.envs[index].raw_frame.copy())
                if terminated or truncated:
                    running[index] = False
        return returns, recordings


def _worker_init(config: WorldModelsConfig, sample_z: bool, threads_env: dict[str, str]) -> None:
    os.environ.update(threads_env)
    from lwm.worldmodels.mdnrnn import load_mdnrnn
    from lwm.worldmodels.vae import load_vae

    vae = load_vae(config.paths.vae)
    mdnrnn = load_mdnrnn(config.paths.mdnrnn)
    meta_v = checkpoint.read_meta(config.paths.vae, "vae")
    meta_m = checkpoint.read_meta(config.paths.mdnrnn, "mdnrnn")
    _WORKER["runner"] = LockstepRunner(config, vae, mdnrnn, spec_for(config, meta_v, meta_m), sample_z)


def _worker_run(task: tuple[np.ndarray, list[int], int, int]) -> np.ndarray:
    thetas, seeds, batch, key_seed = task
    return _WORKER["runner"].run(thetas, seeds, batch, key_seed)[0]


class RealEnvEvaluator:
    """Scores controllers in the real environment, in `workers` processes (0: in this process)."""

    def __init__(self, config: WorldModelsConfig, workers: int, sample_z: bool):
        self.config = config
        self.workers = workers
        self.sample_z = sample_z
        self.pool = None
        self.runner: LockstepRunner | None = None
        meta_v = checkpoint.read_meta(config.paths.vae, "vae")
        meta_m = checkpoint.read_meta(config.paths.mdnrnn, "mdnrnn")
        self.spec = spec_for(config, meta_v, meta_m)
        if workers > 0:
            # One XLA thread per worker: the workers already use every core between them.
            threads_env = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
                           "JAX_PLATFORMS": "cpu"}
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(workers, initializer=_worker_init, initargs=(config, sample_z, threads_env))
        else:
            _worker_init(config, sample_z, {})
            self.runner = _WORKER.pop("runner")

    def returns(self, thetas: np.ndarray, seeds: list[int], key_seed: int = 0) -> np.ndarray:
        """Return of episode i played by `thetas[i]` from environment seed `seeds[i]`."""
        count = len(seeds)
        if self.pool is None:
            return self.runner.run(thetas, seeds, count, key_seed)[0]
        shares = min(self.workers, count)
        batch = -(-count // shares)
        tasks = [(thetas[start:start + batch], list(seeds[start:start + batch]), batch, key_seed + start)
                 for start in range(0, count, batch)]
        return np.concatenate(self.pool.map(_worker_run, tasks))

    def close(self) -> None:
        """Stops the worker processes."""
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None

    def __enter__(self) -> RealEnvEvaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
