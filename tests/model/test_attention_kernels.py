"""The model gives the same logits and gradients with dense, blockwise and ring attention."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.config import MeshConfig, ModelConfig
from lwm.mesh import make_mesh, state_shardings
from lwm.model.attention import sequence_permutation
from lwm.model.params_io import create_model
from ringattention import from_layout, to_layout

BASE = ModelConfig(
    vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, max_seq_len=128, query_chunk_size=8, key_chunk_size=8,
)


def packed_inputs(batch=2, seq=32, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 64, size=(batch, seq)).astype(np.int32)
    lengths = [11, 13]
    segments = np.zeros((batch, seq), np.int32)
    positions = np.zeros((batch, seq), np.int32)
    start = 0
    for index, length in enumerate(lengths, start=1):
        segments[:, start:start + length] = index
        positions[:, start:start + length] = np.arange(length)
        start += length
    return tokens, segments, positions  # the tail is padding (segment 0)


def loss_and_grads(model, tokens, segments, positions, mask):
    graphdef, state = nnx.split(model)

    def loss(state):
        logits = nnx.merge(graphdef, state)(tokens, positions_BT=positions, segment_ids_BT=segments)
        return jnp.sum(jnp.where(mask[..., None], logits, 0.0) ** 2), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(state)
    return value, logits, grads


@pytest.mark.parametrize("attention, mesh_config, layout", [
    ("blockwise", None, "contiguous"),
    ("ring", MeshConfig(dp=1, fsdp=2, tp=1, sp=4), "contiguous"),
    ("ring", MeshConfig(dp=1, fsdp=2, tp=1, sp=4), "zigzag"),
    ("ring", MeshConfig(dp=2, fsdp=1, tp=2, sp=2), "striped"),
])
def test_kernels_match_dense(attention, mesh_config, layout):
    tokens, segments, positions = packed_inputs()
    mask = segments > 0
    dense_model = create_model(BASE)
    expected_loss, expected_logits, expected_grads = loss_and_grads(dense_model, tokens, segments, positions, mask)
    config = dataclasses.replace(BASE, attention=attention, ring_layout=layout)
    model = create_model(config)
    if mesh_config is None:
        loss, logits, grads = loss_and_grads(model, tokens, segments, positions, mask)
    else:
        mesh = make_mesh(mesh_config)
        sp = mesh.shape["sp"]
        permute = sequence_permutation(config, sp) or (lambda batch: batch)
        arranged = permute({"tokens": tokens, "segments": segments, "positions": positions, "mask": mask})
        graphdef, state = nnx.split(model)
        with jax.set_mesh(mesh):
            state = jax.device_put(state, state_shardings(state, mesh))
            model = nnx.merge(graphdef, state)
            loss, logits, grads = jax.jit(loss_and_grads)(
                model, arranged["tokens"], arranged["segments"], arranged["positions"], arranged["mask"]
            )
        if layout != "contiguous":
            logits = from_layout(logits, layout, sp, axis=1)
    valid = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(expected_logits)[valid], atol=2e-5)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_layout_permutation_round_trips():
    config = dataclasses.replace(BASE, attention="ring", ring_layout="zigzag")
    permute = sequence_permutation(config, 4)
    x = np.arange(2 * 32).reshape(2, 32)
    arranged = permute({"x": x})["x"]
    assert not np.array_equal(arranged, x)
    np.testing.assert_array_equal(from_layout(arranged, "zigzag", 4, axis=1), x)
    assert sequence_permutation(dataclasses.replace(config, ring_layout="contiguous"), 4) is None
    np.testing.assert_array_equal(to_layout(x, "zigzag", 4, axis=1), arranged)
