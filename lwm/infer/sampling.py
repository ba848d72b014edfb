"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus).

Everything here is pure JAX on `[batch, vocab]` float logits and runs inside `jax.jit` and
`lax.while_loop`. Settings are a frozen, hashable `SamplingParams`, a static argument of the
compiled decode loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens.

    `temperature` 0 is greedy (argmax); otherwise logits are divided by it and sampled.
    `top_k` > 0 keeps the k most likely tokens; `top_p` < 1 keeps the smallest set of most
    likely tokens whose probability reaches `top_p`. Both filters apply after the temperature.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @classmethod
    def of(cls, section: Any) -> SamplingParams:
        """The sampling a config section names (`temperature`, `top_k`, `top_p` fields)."""
        return cls(section.temperature, section.top_k, section.top_p)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")

    @property
    def greedy(self) -> bool:
        """Whether tokens are chosen by argmax."""
        return self.temperature == 0.0


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    """Sets every logit below the row's k-th largest to -inf (ties at the threshold stay)."""
    if k <= 0 or k >= logits_BV.shape[-1]:
        return logits_BV
    threshold = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV < threshold, -jnp.inf, logits_BV)


def top_p_filter(logits_BV: jax.Array, p: float) -> jax.Array:
    """Keeps the most likely tokens until their probability first reaches `p`; -inf elsewhere.

    The most likely token always stays, so the support is never empty.
    """
    if p >= 1.0:
        return logits_BV
    order = jnp.argsort(-logits_BV, axis=-1)
    sorted_logits = jnp.take_along_axis(logits_BV, order, axis=-1)
    probabilities = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probabilities, axis=-1) - probabilities
    keep_sorted = mass_before < p
    keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits_BV.shape[0])[:, None], order].set(keep_sorted)
    return jnp.where(keep, logits_BV, -jnp.inf)


def filter_logits(logits_BV: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scaled logits with the top-k and top-p filters applied (not for greedy)."""
    logits = logits_BV.astype(jnp.float32) / params.temperature
    return top_p_filter(top_k_filter(logits, params.top_k), params.top_p)


def sample_tokens(logits_BV: jax.Array, key: jax.Array, params: SamplingParams) -> jax.Array:
    """One token id per row, int32 `[batch]`."""
    if params.greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, filter_logits(logits_BV, params), axis=-1).astype(jnp.int32)


def classifier_free_guidance(logits_2BV: jax.Array, scale: float) -> jax.Array:
    """Combines conditional rows `[:B]` and unconditional rows `[B:]`: u + scale · (c − u)."""
    half = logits_2BV.shape[0] // 2
    conditional, unconditional = logits_2BV[:half], logits_2BV[half:]
    return unconditional + scale * (conditional - unconditional)


@dataclasses.dataclass(frozen=True)
class VisionSchedule:
    """The frame structure of generated vision tokens, enforced at every step (as LWM does).

    Each frame is `tokens_per_frame` VQ codes followed by `<eof>` (= `codebook_size`); the last
    frame ends with `<eov>` (= `codebook_size + 1`) when `end_with_eov`, otherwise with `<eof>`
    (a first frame that a video continues). At code positions only codes can be sampled.
    """

    tokens_per_frame: int
    codebook_size: int
    num_frames: int
    end_with_eov: bool = True

    @property
    def total_tokens(self) -> int:
        """Tokens generated for all frames, end tokens included."""
        return self.num_frames * (self.tokens_per_frame + 1)

    def forced_token(self, step: jax.Array) -> jax.Array:
        """The end token step `step` (0-based) must be, or -1 at code positions."""
        frame_end = (step + 1) % (self.tokens_per_frame + 1) == 0
        last = step == self.total_tokens - 1
        end = jnp.where(last & self.end_with_eov, self.codebook_size + 1, self.codebook_size)
        return jnp.where(frame_end, end, -1).astype(jnp.int32)

    def constrain(self, logits_BV: jax.Array, step: jax.Array) -> jax.Array:
        """Masks everything but codes at code positions and everything but the end token at ends."""
        forced = self.forced_token(step)
        ids = jnp.arange(logits_BV.shape[-1])
        allowed = jnp.where(forced >= 0, ids == forced, ids < self.codebook_size)
        return jnp.where(allowed[None, :], logits_BV, -jnp.inf)

    def force(self, tokens_B: jax.Array, step: jax.Array) -> jax.Array:
        """Replaces sampled tokens by the end token where one is due."""
        forced = self.forced_token(step)
        return jnp.where(forced >= 0, forced, tokens_B).astype(jnp.int32)
