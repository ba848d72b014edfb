"""Loss arithmetic for text+vision next-token prediction (pure jax.numpy; knows no model).

For a batch (or the sum of several micro-batches), with `w_t` = `text_loss_weight`,
`w_v` = `vision_loss_weight`, `a_i` = the batch's `loss_weight` of target position `i` (0 or 1)
and `CE_i = logsumexp(z_i) - z_i[y_i]` computed in float32 from the logits `z_i` of the head
of the target's modality (the text head where `target_is_vision` is false, the vision head
where it is true; the other head's logits never count):

    S_m = Σ_{i: modality(i) = m} a_i · CE_i          (summed cross-entropy of modality m)
    N_m = Σ_{i: modality(i) = m} a_i                 (number of loss-carrying targets of m)
    L   = Σ_{m ∈ M} w_m · S_m / N_m  /  Σ_{m ∈ M} w_m,   M = {m ∈ {text, vision} : N_m > 0}

so each modality contributes its token-mean loss, the weights are renormalised over the
modalities present (one modality alone gives its plain token mean; with both present and
`w_t = w_v` the loss is the mean of the two token means, LWM's fixed 0.5/0.5), and L = 0 when
no target carries loss. Because S_m and N_m are sums over target tokens, L does not depend on
how examples were packed into rows or split into micro-batches: `cross_entropy_sums` gives
S_m, N_m (and correct-prediction counts) per micro-batch, `add_sums` adds them, and
`weighted_loss` divides only at the end.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

MODALITIES = ("text", "vision")
SUM_NAMES = ("loss_sum", "correct", "count", "out_of_range", "no_head")


def zero_sums() -> dict[str, jax.Array]:
    """The `cross_entropy_sums` of an empty batch (the start of an accumulation)."""
    return {f"{modality}_{name}": jnp.zeros((), jnp.float32) for modality in MODALITIES for name in SUM_NAMES}


def modality_scales(
    batch: Mapping[str, jax.Array], text_weight: float, vision_weight: float
) -> tuple[jax.Array, jax.Array]:
    """`w_m / (N_m · Σ_{m∈M} w_m)` for text and vision: the factor by which `L` weighs each S_m.

    Computed once from the whole batch, these let micro-batches of an accumulated step scale
    their own sums so that the accumulated gradient is exactly that of `L` over the batch.
    """
    weights = jnp.asarray(batch["loss_weight"]).astype(jnp.float32)
    is_vision = jnp.asarray(batch["target_is_vision"]).astype(bool)
    counts = {"text": jnp.sum(jnp.where(is_vision, 0.0, weights)), "vision": jnp.sum(jnp.where(is_vision, weights, 0.0))}
    effective = {name: jnp.where(counts[name] > 0, weight, 0.0)
                 for name, weight in (("text", text_weight), ("vision", vision_weight))}
    total = jnp.maximum(effective["text"] + effective["vision"], 1e-30)
    text_scale, vision_scale = (effective[name] / jnp.maximum(counts[name], 1.0) / total for name in MODALITIES)
    return text_scale, vision_scale


def _modality_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> dict[str, jax.Array]:
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    safe_targets = jnp.clip(targets, 0, vocab - 1)
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
    cross_entropy = log_normaliser - target_logit
    counted = weights > 0
    predicted = jnp.argmax(logits, axis=-1)
    return {
        "loss_sum": jnp.sum(jnp.where(counted, cross_entropy, 0.0) * weights),
        "correct": jnp.sum(jnp.where(predicted == targets, weights, 0.0)),
        "count": jnp.sum(weights),
        # Targets the head cannot represent: a data/model vocabulary mismatch, made visible.
        "out_of_range": jnp.sum(jnp.where(counted & ((targets < 0) | (targets >= vocab)), 1.0, 0.0)),
    }


def cross_entropy_sums(
    text_logits: jax.Array | None,
    vision_logits: jax.Array | None,
    batch: Mapping[str, jax.Array],
) -> dict[str, jax.Array]:
    """Per-modality sums for one (micro-)batch.

    `text_logits` `[B, T, V_text]`, `vision_logits` `[B, T, V_vision]` (either may be None for
    a model without that head); `batch` holds `target_ids`, `target_is_vision` and
    `loss_weight`, each `[B, T]`. Returns float32 scalars `{m}_loss_sum`, `{m}_correct`,
    `{m}_count`, `{m}_out_of_range` for m in text, vision, and `{m}_no_head`: targets of a
    modality whose logits were None (they are left out of the loss; a nonzero value means the
    model lacks a head the data needs).
    """
    targets = jnp.asarray(batch["target_ids"]).astype(jnp.int32)
    is_vision = jnp.asarray(batch["target_is_vision"]).astype(bool)
    weights = jnp.asarray(batch["loss_weight"]).astype(jnp.float32)
    sums: dict[str, jax.Array] = {}
    for name, logits, mask in (("text", text_logits, ~is_vision), ("vision", vision_logits, is_vision)):
        modality_weights = jnp.where(mask, weights, 0.0)
        zero = jnp.zeros((), jnp.float32)
        if logits is None:
            part = {"loss_sum": zero, "correct": zero, "count": zero, "out_of_range": zero}
            sums[f"{name}_no_head"] = jnp.sum(modality_weights)
        else:
            if logits.shape[:-1] != targets.shape:
                raise ValueError(f"{name}_logits shape {logits.shape} does not match targets "
                                 f"{targets.shape} (expected [B, T, vocab])")
            part = _modality_sums(logits, targets, modality_weights)
            sums[f"{name}_no_head"] = zero
        for key, value in part.items():
            sums[f"{name}_{key}"] = value
    return sums


def add_sums(first: Mapping[str, jax.Array], second: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Adds two `cross_entropy_sums` results (gradient accumulation over micro-batches)."""
    return {key: first[key] + second[key] for key in first}


def weighted_loss(
    sums: Mapping[str, jax.Array], text_weight: float, vision_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss L of the module docstring and metrics, from (accumulated) sums.

    Metrics: `loss`, `{m}_loss` (token mean; 0 when absent), `{m}_accuracy`, `{m}_tokens`, and
    the `{m}_out_of_range` / `{m}_no_head` counts.
    """
    numerator = jnp.zeros((), jnp.float32)
    denominator = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for name, weight in (("text", text_weight), ("vision", vision_weight)):
        count = sums[f"{name}_count"]
        present = count > 0
        safe_count = jnp.where(present, count, 1.0)
        mean = sums[f"{name}_loss_sum"] / safe_count
        effective = jnp.where(present, jnp.asarray(weight, jnp.float32), 0.0)
        numerator = numerator + effective * mean
        denominator = denominator + effective
        metrics[f"{name}_loss"] = mean
        metrics[f"{name}_accuracy"] = sums[f"{name}_correct"] / safe_count
        metrics[f"{name}_tokens"] = count
        metrics[f"{name}_out_of_range"] = sums[f"{name}_out_of_range"]
        metrics[f"{name}_no_head"] = sums[f"{name}_no_head"]
    loss = numerator / jnp.where(denominator > 0, denominator, 1.0)
    metrics["loss"] = loss
    return loss, metrics


def next_token_loss(
    text_logits: jax.Array | None,
    vision_logits: jax.Array | None,
    batch: Mapping[str, jax.Array],
    text_weight: float = 1.0,
    vision_weight: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`weighted_loss(cross_entropy_sums(...))` for a batch without accumulation."""
    return weighted_loss(cross_entropy_sums(text_logits, vision_logits, batch), text_weight, vision_weight)
