"""Loss weighting: a hand computation, head selection, and independence from packing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.data.packing import empty_row, pack_examples
from lwm.data.store import TokenExample
from lwm.train import loss as loss_module
from lwm.train.loss import add_sums, cross_entropy_sums, weighted_loss

# Compiled once per shape: eager dispatch of every small op is slow on a busy CPU.
next_token_loss = jax.jit(loss_module.next_token_loss)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


def test_hand_computation():
    # One row, four positions: targets text 2, vision 1, text 0 (no loss), vision 0.
    batch = {"target_ids": np.array([[2, 1, 0, 0]]),
             "target_is_vision": np.array([[False, True, False, True]]),
             "loss_weight": np.array([[1.0, 1.0, 0.0, 1.0]], np.float32)}
    text_logits = np.array([[[0.0, 1.0, 2.0], [5.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])
    vision_logits = np.array([[[3.0, 3.0], [0.0, 2.0], [1.0, 0.0], [1.0, 0.0]]])
    text_ce = -log_softmax([0.0, 1.0, 2.0])[2]
    vision_ce = [-log_softmax([0.0, 2.0])[1], -log_softmax([1.0, 0.0])[0]]
    sums = jax.jit(cross_entropy_sums)(jnp.asarray(text_logits), jnp.asarray(vision_logits), batch)
    assert float(sums["text_loss_sum"]) == pytest.approx(text_ce, rel=1e-6)
    assert float(sums["vision_loss_sum"]) == pytest.approx(sum(vision_ce), rel=1e-6)
    assert (float(sums["text_count"]), float(sums["vision_count"])) == (1.0, 2.0)
    assert (float(sums["text_correct"]), float(sums["vision_correct"])) == (1.0, 2.0)
    loss, metrics = jax.jit(weighted_loss)(sums, 3.0, 1.0)
    expected = (3.0 * text_ce + 1.0 * np.mean(vision_ce)) / 4.0
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["vision_loss"]) == pytest.approx(np.mean(vision_ce), rel=1e-6)
    assert float(metrics["text_accuracy"]) == 1.0 and float(metrics["vision_tokens"]) == 2.0
    # One modality alone gives its plain token mean whatever the weights.
    text_only = dict(batch, target_is_vision=np.zeros((1, 4), bool))
    loss, _ = next_token_loss(jnp.asarray(text_logits), jnp.asarray(vision_logits), text_only, 3.0, 1.0)
    text_all = [-log_softmax(text_logits[0, i])[t] for i, t in ((0, 2), (1, 1), (3, 0))]
    assert float(loss) == pytest.approx(np.mean(text_all), rel=1e-6)


def test_each_target_uses_only_its_modalitys_head():
    rng = np.random.default_rng(0)
    batch = {"target_ids": rng.integers(0, 4, (2, 5)), "target_is_vision": rng.random((2, 5)) < 0.5,
             "loss_weight": np.ones((2, 5), np.float32)}
    text_logits = rng.normal(size=(2, 5, 6))
    vision_logits = rng.normal(size=(2, 5, 4))
    loss = next_token_loss(text_logits, vision_logits, batch, 1.0, 1.0)[0]
    # Changing the text head where the target is vision (and vice versa) changes nothing.
    text_changed = np.where(batch["target_is_vision"][..., None], 100.0, text_logits)
    vision_changed = np.where(batch["target_is_vision"][..., None], vision_logits, -100.0)
    assert float(next_token_loss(text_changed, vision_changed, batch, 1.0, 1.0)[0]) == pytest.approx(float(loss))


def test_missing_head_and_out_of_range_targets_are_counted():
    batch = {"target_ids": np.array([[1, 7]]), "target_is_vision": np.array([[False, True]]),
             "loss_weight": np.ones((1, 2), np.float32)}
    _, metrics = next_token_loss(np.zeros((1, 2, 3)), None, batch)
    assert float(metrics["vision_no_head"]) == 1.0 and float(metrics["vision_tokens"]) == 0.0
    _, metrics = next_token_loss(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)), batch)
    assert float(metrics["vision_out_of_range"]) == 1.0
    _, metrics = next_token_loss(np.zeros((1, 2, 3)), np.zeros((1, 2, 4)),
                                 dict(batch, loss_weight=np.zeros((1, 2), np.float32)))
    assert float(metrics["loss"]) == 0.0


KEY = jax.random.PRNGKey(0)
TEXT_TABLE = jax.random.normal(KEY, (40, 40))
VISION_TABLE = jax.random.normal(jax.random.fold_in(KEY, 1), (40, 20))
POSITION_TABLE = jax.random.normal(jax.random.fold_in(KEY, 2), (64, 1))


@jax.jit
def fake_model_sums(batch):
    """Sums for a 'model' whose logits depend only on a token and its position in its example."""
    ids, positions = batch["input_ids"], batch["positions"]
    text_logits = TEXT_TABLE[ids] * POSITION_TABLE[positions]
    vision_logits = VISION_TABLE[ids] + POSITION_TABLE[positions]
    return cross_entropy_sums(text_logits, vision_logits, batch)


def packed_loss(examples, seq_len, weights, micro_batches=1):
    rows, _ = pack_examples(examples, seq_len=seq_len, num_bins=4)
    rows += [empty_row(seq_len)] * (-len(rows) % micro_batches)  # equal micro-batches
    batch = {name: np.stack([row[name] for row in rows]) for name in rows[0]}
    total = None
    for part in np.split(np.arange(len(rows)), micro_batches):
        sums = fake_model_sums({name: value[part] for name, value in batch.items()})
        total = sums if total is None else add_sums(total, sums)
    return float(jax.jit(weighted_loss, static_argnums=(1, 2))(total, *weights)[0])


def test_loss_does_not_depend_on_packing():
    rng = np.random.default_rng(3)
    examples = []
    for _ in range(12):
        length = int(rng.integers(2, 12))
        vision = rng.random(length) < 0.5
        tokens = np.where(vision, rng.integers(0, 20, length), rng.integers(0, 40, length))
        examples.append(TokenExample.make(tokens, vision, rng.random(length) < 0.8))
    weights = (0.7, 0.3)
    reference = packed_loss(examples, 12, weights)
    assert packed_loss(examples, 16, weights) == pytest.approx(reference, rel=1e-5)
    assert packed_loss(examples[::-1], 40, weights) == pytest.approx(reference, rel=1e-5)
    assert packed_loss(examples, 16, weights, micro_batches=3) == pytest.approx(reference, rel=1e-5)


def test_jit_and_bfloat16_logits():
    batch = {"target_ids": np.array([[1, 2]]), "target_is_vision": np.array([[False, False]]),
             "loss_weight": np.ones((1, 2), np.float32)}
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 5)), jnp.bfloat16)
    loss, metrics = next_token_loss(logits, None, batch)
    expected = np.mean([-log_softmax(np.asarray(logits[0, i], np.float32))[t] for i, t in ((0, 1), (1, 2))])
    assert loss.dtype == jnp.float32 and float(loss) == pytest.approx(expected, rel=1e-5)
