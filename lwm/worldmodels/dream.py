"""The dream: M as the environment, every candidate of a generation rolled out at once.

One jitted call scores a whole population: `jax.vmap` over candidates, each playing `rollouts`
dreams as a batch, `lax.scan` over time inside a `lax.while_loop` that stops once every dream
has ended (chunks of `chunk` steps). A dream starts from the z of a random real episode's first
frame (drawn from V's posterior) and zero LSTM state; each step C acts on [z, h(, c)], M
advances and samples the next z at temperature τ, and the episode ends when M's done
probability exceeds `done_threshold` (or at `max_steps`). The return is the number of steps
survived, TakeCover's reward. All candidates share the same dream randomness (the same keys),
so their returns differ only by their behaviour.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.worldmodels.controller import ControllerSpec, batched_controller_tanh, controller_tanh
from lwm.worldmodels.envs import model_action_from_tanh
from lwm.worldmodels.mdnrnn import MDNRNN, sample_mixture
from lwm.worldmodels.vae import decode_latents


def _one_candidate(graphdef, spec, env_name, rollouts, max_steps, chunk,
                   state, theta_N, z0_mu, z0_logvar, key, temperature, done_threshold, sample_done, done_offset):
    """Mean steps survived by one controller over `rollouts` dreams (traced under vmap)."""
    model = nnx.merge(graphdef, state)
    start_key, loop_key = jax.random.split(key)
    pick_key, noise_key = jax.random.split(start_key)
    index = jax.random.randint(pick_key, (rollouts,), 0, z0_mu.shape[0])
    z = z0_mu[index] + jnp.exp(0.5 * z0_logvar[index]) * jax.random.normal(noise_key, (rollouts, z0_mu.shape[1]))
    theta_RN = jnp.broadcast_to(theta_N, (rollouts, theta_N.shape[0]))

    def step(loop_state, _):
        (h, c), z, alive, survived, t, key = loop_state
        key, sample_key, done_key = jax.random.split(key, 3)
        features = jnp.concatenate([z, h, c] if spec.include_cell else [z, h], axis=-1)
        action = model_action_from_tanh(env_name, batched_controller_tanh(theta_RN, features, spec), jnp)
        start = jnp.full((rollouts,), t == 0, jnp.float32)
        h, c = model.step((h, c), z, action, start)
        out = model.heads(h)
        next_z = sample_mixture(sample_key, out.logmix, out.mean, out.logstd, temperature)
        active = alive & (t < max_steps)
        survived = survived + active.astype(jnp.float32)
        p_done = jax.nn.sigmoid(out.done_logit - done_offset)
        done = jnp.where(sample_done, jax.random.uniform(done_key, p_done.shape) < p_done, p_done > done_threshold)
        alive = active & ~done
        return ((h, c), next_z, alive, survived, t + 1, key), None

    def chunk_body(loop_state):
        return jax.lax.scan(step, loop_state, None, length=chunk)[0]

    def keep_going(loop_state):
        return jnp.any(loop_state[2]) & (loop_state[4] < max_steps)

    init = (model.initial_carry((rollouts,)), z, jnp.ones((rollouts,), bool), jnp.zeros((rollouts,)),
            jnp.asarray(0), loop_key)
    return jnp.mean(jax.lax.while_loop(keep_going, chunk_body, init)[3])


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _dream_population(graphdef, spec, env_name, rollouts, max_steps, chunk,
                      state, theta_PN, z0_mu, z0_logvar, key, temperature, done_threshold, independent,
                      sample_done, done_offset):
    # fold_in(key, 0) for every candidate shares the dreams; fold_in(key, p) gives each its own.
    keys = jax.vmap(lambda p: jax.random.fold_in(key, p * independent))(jnp.arange(theta_PN.shape[0]))
    one = partial(_one_candidate, graphdef, spec, env_name, rollouts, max_steps, chunk)
    return jax.vmap(one, in_axes=(None, 0, None, None, 0, None, None, None, None))(
        state, theta_PN, z0_mu, z0_logvar, keys, temperature, done_threshold, sample_done, done_offset)


def make_dream_fn(mdnrnn: MDNRNN, spec: ControllerSpec, env_name: str, rollouts: int, max_steps: int,
                  temperature: float, done_threshold: float, chunk: int = 50, sample_done: bool = True,
                  done_pos_weight: float = 1.0):
    """A function `(θ [P, N], z0 mu [E, z], z0 logvar [E, z], key, shared=True) → returns [P]`.

    One jitted call; `returns[p]` is candidate p's mean number of steps survived over `rollouts`
    dreams. With `shared` every candidate meets the same dreams, else each its own. A dream ends
    with M's done probability (`sample_done`) or when it exceeds `done_threshold`. M's done head
    was trained with positives weighed by `done_pos_weight`, which multiplies its odds by that
    weight; the dream divides them back out. These values are traced: changing them does not
    recompile.
    """
    if mdnrnn.done is None:
        raise ValueError("the dream needs M's done head: train M on an environment where episodes end (takecover)")
    graphdef, state = nnx.split(mdnrnn)
    statics = (graphdef, spec, env_name, rollouts, max_steps, max(1, min(chunk, max_steps)))

    def call(theta_PN: Any, z0_mu: Any, z0_logvar: Any, key: jax.Array, shared: bool = True) -> np.ndarray:
        returns = _dream_population(*statics, state, jnp.asarray(theta_PN, jnp.float32), jnp.asarray(z0_mu),
                                    jnp.asarray(z0_logvar), key, jnp.float32(temperature),
                                    jnp.float32(done_threshold), jnp.int32(0 if shared else 1),
                                    jnp.bool_(sample_done), jnp.float32(np.log(done_pos_weight)))
        return np.asarray(returns)

    return call


def dream_frames(mdnrnn: MDNRNN, vae: Any, theta_N: np.ndarray | None, spec: ControllerSpec, env_name: str,
                 z0: np.ndarray, steps: int, temperature: float, seed: int, done_pos_weight: float = 1.0) -> np.ndarray:
    """Decodes one dream to uint8 frames [T, 64, 64, 3]; C acts when `theta_N` is given, else random.

    Used for pictures: a short dream, one jitted step at a time; it ends like a training dream
    (M's calibrated done probability) or after `steps` frames.
    """
    rng = np.random.default_rng(seed)

    @nnx.jit
    def advance(model, theta_N, use_controller, random_y, carry, z, t, key):
        h, c = carry
        features = jnp.concatenate([z, h, c] if spec.include_cell else [z, h], axis=-1)[0]
        y = jnp.where(use_controller, controller_tanh(theta_N, features, spec, jnp), random_y)
        action = model_action_from_tanh(env_name, y[None], jnp)
        carry = model.step(carry, z, action, jnp.full((1,), t == 0, jnp.float32))
        out = model.heads(carry[0])
        next_z = sample_mixture(jax.random.fold_in(key, t), out.logmix, out.mean, out.logstd, temperature)
        p_done = jnp.zeros(()) if out.done_logit is None else jax.nn.sigmoid(out.done_logit[0] - np.log(done_pos_weight))
        return carry, next_z, p_done

    theta = jnp.zeros(spec.num_params) if theta_N is None else jnp.asarray(theta_N, jnp.float32)
    use_controller = jnp.asarray(theta_N is not None)
    key = jax.random.key(seed)
    carry = mdnrnn.initial_carry((1,))
    z = jnp.asarray(z0[None], jnp.float32)
    frames = []
    for t in range(steps):
        frames.append(decode_latents(vae, np.asarray(z))[0])
        random_y = jnp.asarray(rng.uniform(-1, 1, spec.action_dim), jnp.float32)
        carry, z, p_done = advance(mdnrnn, theta, use_controller, random_y, carry, z, jnp.int32(t), key)
        if rng.uniform() < float(p_done):
            break
    return np.stack(frames)
