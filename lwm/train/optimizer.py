"""AdamW with warmup and decay, global-norm clipping, and decay that skips norms and embeddings."""

from __future__ import annotations

from typing import Any

import jax
import optax

from lwm.config import TrainConfig

# Parameter names (last path element) that weight decay leaves alone by default.
NO_DECAY_NAMES = ("scale", "embed", "vision_embed")


def learning_rate_schedule(config: TrainConfig, lr: float | None = None, steps: int | None = None) -> optax.Schedule:
    """Linear warmup to `lr`, then cosine or linear decay to `lr * final_lr_ratio` at `steps`."""
    lr = config.lr if lr is None else lr
    steps = config.steps if steps is None else steps
    warmup = min(config.warmup_steps, steps)
    final = lr * config.final_lr_ratio
    decay_steps = max(steps - warmup, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=config.final_lr_ratio)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(lr, final, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    warm = optax.linear_schedule(0.0 if warmup else lr, lr, max(warmup, 1))
    return optax.join_schedules([warm, decay], [warmup])


def decay_mask(params: Any, config: TrainConfig) -> Any:
    """True for parameters that get weight decay: matrices, except norms and embeddings."""

    def wants_decay(path: tuple[Any, ...], leaf: Any) -> bool:
        if config.decay_norms_and_embeddings:
            return True
        name = str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
        return name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(wants_decay, params)


def make_optimizer(config: TrainConfig, lr: float | None = None, steps: int | None = None) -> optax.GradientTransformation:
    """The optax transformation the train step applies (clip, then AdamW on the schedule)."""
    schedule = learning_rate_schedule(config, lr, steps)
    parts = []
    if config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=config.adam_b1,
            b2=config.adam_b2,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            mask=lambda params: decay_mask(params, config),
        )
    )
    return optax.chain(*parts)
