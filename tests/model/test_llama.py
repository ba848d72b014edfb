"""The LLaMA decoder: full-size shapes without allocation, causality, packing, sharding."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.config import MeshConfig, ModelConfig, TrainRunConfig, load_config
from lwm.config.vision import VisionVocab
from lwm.mesh import make_mesh, state_shardings
from lwm.model.attention import KVCache
from lwm.model.llama import LlamaModel
from lwm.model.params_io import abstract_model, count_parameters, create_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

SMALL = ModelConfig(
    vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
    num_kv_heads=2, max_seq_len=64,
)


def test_llama2_7b_preset_has_exact_parameter_count():
    config = load_config(TrainRunConfig, CONFIGS / "llama2-7b.yaml").model
    assert count_parameters(abstract_model(config)) == 6_738_415_616


@pytest.mark.parametrize("preset", ["tiny", "llama-200m", "llama-1b", "long/lwm-text-1m"])
def test_presets_build_abstractly(preset):
    config = load_config(TrainRunConfig, CONFIGS / f"{preset}.yaml").model
    assert count_parameters(abstract_model(config)) > 0


@pytest.mark.parametrize("scan_layers", [True, False])
def test_future_tokens_have_exactly_zero_gradient(scan_layers):
    config = ModelConfig(**{**SMALL.__dict__, "scan_layers": scan_layers})
    model = create_model(config)
    embeddings = jax.random.normal(jax.random.key(1), (1, 12, config.hidden_size))
    t = 5

    graphdef, state = nnx.split(model)

    def loss_at_t(state, inputs_BTE):
        logits = nnx.merge(graphdef, state)(jnp.zeros((1, 12), jnp.int32), input_embeddings_BTE=inputs_BTE)
        return logits[0, t].sum()

    # Differentiate with respect to the state too: NNX transforms inside need traced variables.
    grad = jax.grad(loss_at_t, argnums=(0, 1))(state, embeddings)[1]
    assert np.all(np.asarray(grad[0, t + 1:]) == 0.0)
    assert np.all(np.abs(np.asarray(grad[0, : t + 1])).sum(-1) > 0)


def test_packed_segments_do_not_see_each_other():
    model = create_model(SMALL)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 61, size=(1, 20)).astype(np.int32)
    segments = np.array([[1] * 8 + [2] * 9 + [0] * 3], np.int32)
    positions = np.concatenate([np.arange(8), np.arange(9), np.zeros(3)])[None].astype(np.int32)
    changed = tokens.copy()
    changed[0, 8:] = rng.integers(0, 61, size=12)
    run = lambda ids: np.asarray(model(jnp.asarray(ids), positions_BT=positions, segment_ids_BT=segments))
    np.testing.assert_array_equal(run(tokens)[0, :8], run(changed)[0, :8])
    # and segment 1 alone, unpacked, gives the same logits: positions restart, nothing leaks
    alone = np.asarray(model(jnp.asarray(tokens[:, :8])))
    np.testing.assert_allclose(run(tokens)[0, :8], alone[0], atol=1e-5)
    # segment 2 also equals running it alone from position 0
    second = np.asarray(model(jnp.asarray(tokens[:, 8:17])))
    np.testing.assert_allclose(run(tokens)[0, 8:17], second[0], atol=1e-5)


@pytest.mark.parametrize("mesh_config", [
    MeshConfig(dp=2, fsdp=2, tp=2, sp=1),
    MeshConfig(dp=1, fsdp=4, tp=1, sp=2),
    MeshConfig(dp=1, fsdp=-1, tp=1, sp=1),
])
def test_sharded_forward_equals_unsharded(mesh_config):
    config = ModelConfig(**{**SMALL.__dict__, "vocab_size": 64})
    model = create_model(config)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, size=(4, 16)).astype(np.int32))
    expected = np.asarray(model(tokens))
    mesh = make_mesh(mesh_config)
    graphdef, state = nnx.split(model)
    with jax.set_mesh(mesh):
        sharded_state = jax.device_put(state, state_shardings(state, mesh))
        forward = jax.jit(lambda s, ids: nnx.merge(graphdef, s)(ids))
        actual = np.asarray(forward(sharded_state, tokens))
    # the embedding really is split across devices, not replicated
    embed = sharded_state["embed"][...]
    assert len(embed.sharding.device_set) == 8 and embed.addressable_shards[0].data.size < embed.size
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_vision_model_routes_tables_and_heads():
    config = ModelConfig(**{**SMALL.__dict__, "vision_vocab_size": 20, "vision": VisionVocab(16, SMALL.tokens_per_frame)})
    model = LlamaModel(config, rngs=nnx.Rngs(0))
    ids = jnp.asarray([[3, 5, 7, 9]], jnp.int32)
    is_vision = jnp.asarray([[False, True, True, False]])
    text, vision = model.logits_both_heads(ids, input_is_vision_BT=is_vision)
    assert text.shape == (1, 4, 61) and vision.shape == (1, 4, 20)
    embedded = model.embed_tokens(ids, is_vision)
    np.testing.assert_array_equal(embedded[0, 1], model.vision_embed[...][5])
    np.testing.assert_array_equal(embedded[0, 0], model.embed[...][3])
    assert config.eof_token == 16 and config.eov_token == 17


def _numpy_model(config: ModelConfig) -> LlamaModel:
    """Random weights (normal, std 0.1) filled in from NumPy: instant, unlike compiling the
    initialisers of `create_model` for every shape."""
    model = abstract_model(config)
    rng = np.random.default_rng(0)
    for _, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Variable):
            variable.set_value(jnp.asarray(rng.normal(0.0, 0.1, variable.shape), variable.dtype))
    return model


def _cached_logits(model: LlamaModel, mesh, ids_BT: np.ndarray, prompt_lengths, chunk: int, size: int) -> np.ndarray:
    """Text logits of every position of `ids_BT` through the cached path: each row's prompt
    prefilled `chunk` tokens at a time (right-padded rows), then the rest one token per step."""
    config = model.config
    graphdef, state = nnx.split(model)
    batch, total = ids_BT.shape
    shape = (config.num_layers, batch, size, config.kv_heads, config.head_dim)

    @jax.jit
    def extend(state, cache, ids, new_lengths):
        cache, hidden = nnx.merge(graphdef, state).extend(cache, ids, new_lengths, key_chunk_size=4)
        return cache, nnx.merge(graphdef, state).text_logits(hidden)

    lengths = np.asarray(prompt_lengths)
    rows = [[] for _ in range(batch)]
    with jax.set_mesh(mesh):
        state = jax.device_put(state, state_shardings(state, mesh))
        cache = KVCache(jnp.zeros(shape), jnp.zeros(shape), jnp.zeros((batch,), jnp.int32))
        longest = int(lengths.max())
        for start in range(0, longest, chunk):
            new = np.clip(lengths - start, 0, chunk).astype(np.int32)
            piece = np.zeros((batch, chunk), np.int32)
            for row in range(batch):
                piece[row, :new[row]] = ids_BT[row, start:start + new[row]]
            cache, logits = extend(state, cache, jnp.asarray(piece), jnp.asarray(new))
            for row in range(batch):
                rows[row].extend(np.asarray(logits)[row, :new[row]])
        for step in range(total - longest):
            token = np.stack([ids_BT[row, lengths[row] + step] for row in range(batch)])[:, None]
            cache, logits = extend(state, cache, jnp.asarray(token, jnp.int32), jnp.ones((batch,), jnp.int32))
            for row in range(batch):
                rows[row].append(np.asarray(logits)[row, 0])
    assert np.asarray(cache.lengths).tolist() == (lengths + total - longest).tolist()
    return [np.stack(row) for row in rows]


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
@pytest.mark.parametrize("sequence_parallel", [1, 4], ids=["sp1", "sp4"])
def test_cached_prefill_and_decode_equal_the_training_forward(scan_layers, sequence_parallel):
    """The same blocks with a cache (prefill in chunks, then token by token; the cache split
    over `sp`) give the logits of one full forward through the training attention."""
    config = ModelConfig(**{**SMALL.__dict__, "scan_layers": scan_layers, "attention": "blockwise",
                            "query_chunk_size": 8, "key_chunk_size": 8})
    model = _numpy_model(config)
    ids = np.random.default_rng(2).integers(0, SMALL.vocab_size, size=(2, 16)).astype(np.int32)
    graphdef, state = nnx.split(model)
    expected = np.asarray(jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids))(state, jnp.asarray(ids)))
    mesh = make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=sequence_parallel), devices=jax.devices()[:sequence_parallel])
    # Rows of different prompt lengths (11 and 6) continue with 5 decoded tokens each.
    rows = _cached_logits(model, mesh, ids[:, :16], prompt_lengths=(11, 6), chunk=4, size=32)
    for row, length in enumerate((16, 11)):
        np.testing.assert_allclose(rows[row], expected[row, :length], atol=2e-5)
