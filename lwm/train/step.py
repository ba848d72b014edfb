"""One training step: forward both heads, modality-weighted loss, gradients, AdamW update.

Gradient accumulation splits the global batch into `grad_accum_steps` micro-batches and sums
their gradients. Each micro-batch's loss divides by the modality token counts of the WHOLE
batch (counted from the batch before any forward pass), so the accumulated gradient equals the
gradient of the loss in `lwm/train/loss.py` over the whole batch, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lwm.config import TrainConfig
from lwm.train.loss import add_sums, cross_entropy_sums, modality_scales, weighted_loss, zero_sums

Batch = Mapping[str, jax.Array]


def forward_sums(model: nnx.Module, batch: Batch) -> dict[str, jax.Array]:
    """Runs the model on a (micro-)batch and returns the per-modality cross-entropy sums."""
    text_logits, vision_logits = model.logits_both_heads(
        batch["input_ids"],
        positions_BT=batch["positions"],
        segment_ids_BT=batch["segment_ids"],
        input_is_vision_BT=batch["input_is_vision"],
    )
    return cross_entropy_sums(text_logits, vision_logits, batch)


def make_train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    train_config: TrainConfig,
    *,
    prepare_batch: Callable[[Batch], Batch] | None = None,
) -> Callable[[dict[str, Any], Batch], tuple[dict[str, Any], dict[str, jax.Array]]]:
    """A pure `(state, batch) -> (state, metrics)` function to jit.

    `state` is `{"params": nnx.State, "opt_state": ..., "step": int32}`; `prepare_batch` may
    rearrange the global batch first (the load-balanced ring layout permutes the sequence).
    """
    accum = train_config.grad_accum_steps
    text_weight, vision_weight = train_config.text_loss_weight, train_config.vision_loss_weight

    def micro_loss(params: nnx.State, micro: Batch, text_scale: jax.Array, vision_scale: jax.Array):
        sums = forward_sums(nnx.merge(graphdef, params), micro)
        loss = text_scale * sums["text_loss_sum"] + vision_scale * sums["vision_loss_sum"]
        return loss, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: dict[str, Any], batch: Batch) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        if prepare_batch is not None:
            batch = prepare_batch(batch)
        text_scale, vision_scale = modality_scales(batch, text_weight, vision_weight)
        params = state["params"]
        if accum == 1:
            (_, sums), grads = grad_fn(params, batch, text_scale, vision_scale)
        else:
            micro_batches = jax.tree.map(
                lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), dict(batch)
            )
            zero_grads = jax.tree.map(jnp.zeros_like, params)

            def accumulate(carry, micro):
                # The parameters ride in the carry so that NNX sees them at the scan's trace level.
                params_in, grads_sum, sums_sum = carry
                (_, sums), grads = grad_fn(params_in, micro, text_scale, vision_scale)
                return (params_in, jax.tree.map(jnp.add, grads_sum, grads), add_sums(sums_sum, sums)), None

            (_, grads, sums), _ = jax.lax.scan(accumulate, (params, zero_grads, zero_sums()), micro_batches)
        _, metrics = weighted_loss(sums, text_weight, vision_weight)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["param_norm"] = optax.global_norm(new_params)
        new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, metrics

    return train_step


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation) -> dict[str, Any]:
    """The full training state for fresh parameters."""
    return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}


def train_state_shardings(
    optimizer: optax.GradientTransformation, params: nnx.State, param_shardings: nnx.State, scalar_sharding: Any
) -> dict[str, Any]:
    """Shardings of the full training state: optimizer moments follow their parameters.

    Left to propagation, XLA replicates the moments (they are zeros, independent of the
    parameters' values), which would cost every device the whole optimizer state.
    """
    abstract_opt_state = jax.eval_shape(optimizer.init, params)
    opt_shardings = optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt_state,
        param_shardings,
        transform_non_params=lambda _: scalar_sharding,
        is_leaf=lambda x: isinstance(x, jax.sharding.Sharding),
    )
    return {"params": param_shardings, "opt_state": opt_shardings, "step": scalar_sharding}
