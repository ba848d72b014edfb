"""KV cache: chunked prefill and step-by-step decoding reproduce the full forward pass, on one
device and with the cache split over eight sequence-parallel devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from infer_helpers import CHUNK, SMALL, make_model, small_config

from lwm.infer.cache import InferenceModel, pad_right

PROMPTS = (29, 22)  # prompt lengths of the two rows (not multiples of the chunk: right padding)
STEPS = 8  # tokens fed one at a time after the prompt


def _sequences(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two token rows mixing text and vision spans (vision ids below the vision vocabulary)."""
    rng = np.random.default_rng(seed)
    ids, flags = [], []
    for length in PROMPTS:
        total = length + STEPS
        vision = np.zeros(total, bool)
        vision[5:14] = True
        vision[length + 2: length + 5] = True
        row = np.where(vision, rng.integers(0, SMALL.vision_vocab_size, total), rng.integers(0, SMALL.vocab_size, total))
        ids.append(row.astype(np.int32))
        flags.append(vision)
    return ids, flags


def _cached_hidden(engine: InferenceModel, ids, flags) -> tuple[list[np.ndarray], np.ndarray]:
    """Hidden states of every position: the prompts prefilled chunk by chunk, then one token
    per step; also the last prompt hidden that `prefill` reports."""
    cache = engine.init_cache(len(ids), 256)
    prompts = [row[:length] for row, length in zip(ids, PROMPTS)]
    prompt_flags = [row[:length] for row, length in zip(flags, PROMPTS)]
    lengths = np.asarray(PROMPTS)
    padded_ids, padded_flags = pad_right(prompts, 2 * CHUNK), pad_right(prompt_flags, 2 * CHUNK, False)
    pieces = []
    for start in range(0, 2 * CHUNK, CHUNK):
        new = np.clip(lengths - start, 0, CHUNK)
        cache, hidden, _ = engine.extend(cache, padded_ids[:, start:start + CHUNK],
                                         padded_flags[:, start:start + CHUNK], new)
        pieces.append(np.asarray(hidden))
    prompt_hidden = np.concatenate(pieces, axis=1)
    rows = [prompt_hidden[row, :length] for row, length in enumerate(PROMPTS)]
    for step in range(STEPS):
        token = np.stack([row[length + step] for row, length in zip(ids, PROMPTS)])[:, None]
        flag = np.stack([row[length + step] for row, length in zip(flags, PROMPTS)])[:, None]
        cache, hidden, _ = engine.extend(cache, token, flag)
        rows = [np.concatenate([rows[row], np.asarray(hidden)[row]]) for row in range(len(ids))]
    assert np.asarray(cache.lengths).tolist() == [length + STEPS for length in PROMPTS]
    _, last = engine.prefill(engine.init_cache(len(ids), 256), prompts, prompt_flags)
    return rows, np.asarray(last)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_cached_decoding_matches_full_forward(scan_layers, small_model):
    model = small_model if scan_layers else make_model(small_config(scan_layers=False), seed=1)
    engine = InferenceModel(model, None, prefill_chunk_size=CHUNK, key_chunk_size=CHUNK)
    ids, flags = _sequences()
    rows, last = _cached_hidden(engine, ids, flags)
    # One full forward over both rows, right-padded: causality keeps padding out of real tokens.
    longest = max(len(row) for row in ids)
    text_full, vision_full = model.logits_both_heads(
        jnp.asarray(pad_right(ids, longest)), input_is_vision_BT=jnp.asarray(pad_right(flags, longest, False)))
    for row, tokens in enumerate(ids):
        hidden = jnp.asarray(rows[row][None])
        count = len(tokens)
        np.testing.assert_allclose(np.asarray(model.text_logits(hidden))[0], np.asarray(text_full)[row, :count],
                                   atol=1e-4)
        np.testing.assert_allclose(np.asarray(model.vision_logits(hidden))[0], np.asarray(vision_full)[row, :count],
                                   atol=1e-4)
        # prefill's last hidden is the hidden of the prompt's last token
        np.testing.assert_allclose(last[row], rows[row][PROMPTS[row] - 1], atol=1e-5)


def test_sharded_cache_matches_single_device(single_engine, sharded_engine):
    ids, flags = _sequences(seed=3)
    single_rows, _ = _cached_hidden(single_engine, ids, flags)
    sharded_rows, _ = _cached_hidden(sharded_engine, ids, flags)
    for single, sharded in zip(single_rows, sharded_rows):
        np.testing.assert_allclose(sharded, single, atol=1e-5)

    prompts = [row[:length] for row, length in zip(ids, PROMPTS)]
    prompt_flags = [row[:length] for row, length in zip(flags, PROMPTS)]
    results = []
    for engine in (single_engine, sharded_engine):
        cache = engine.init_cache(2, 256)
        cache, hidden = engine.prefill(cache, prompts, prompt_flags)
        cache, _, tokens = engine.decode(cache, hidden, max_new_tokens=STEPS)
        results.append(np.asarray(tokens))
        if engine is sharded_engine:
            # every device holds 256 / 8 = 32 positions of every row and layer
            shard_shapes = {shard.data.shape for shard in cache.k.addressable_shards}
            assert shard_shapes == {(SMALL.num_layers, 2, 32, SMALL.kv_heads, SMALL.head_dim)}
            assert cache.nbytes_per_device() * 8 == cache.k.nbytes + cache.v.nbytes
    np.testing.assert_array_equal(results[1], results[0])
    assert (results[0] >= 0).all()


def test_a_padded_batch_decodes_like_single_prompts(single_engine):
    ids, flags = _sequences(seed=5)
    prompts = [row[:length] for row, length in zip(ids, PROMPTS)]
    prompt_flags = [row[:length] for row, length in zip(flags, PROMPTS)]
    cache, hidden = single_engine.prefill(single_engine.init_cache(2, 256), prompts, prompt_flags)
    _, _, batch_tokens = single_engine.decode(cache, hidden, max_new_tokens=STEPS)
    for row in range(2):
        pair = [prompts[row], prompts[row]]
        cache, hidden = single_engine.prefill(single_engine.init_cache(2, 256), pair, [prompt_flags[row]] * 2)
        _, _, alone = single_engine.decode(cache, hidden, max_new_tokens=STEPS)
        np.testing.assert_array_equal(np.asarray(batch_tokens)[row], np.asarray(alone)[0])


def test_cache_sizes_are_checked(single_engine, sharded_engine):
    assert sharded_engine.round_cache_size(1) == 256  # min_cache_size; multiples of 16 x 8 above
    assert sharded_engine.round_cache_size(300) == 384
    with pytest.raises(ValueError, match="multiple of key_chunk_size"):
        sharded_engine.init_cache(1, 200)
    cache = single_engine.init_cache(1, CHUNK)
    with pytest.raises(ValueError, match="exceed the cache size 16"):
        single_engine.prefill(cache, [list(range(CHUNK + 1))])
    with pytest.raises(ValueError, match="exceed the cache size"):
        single_engine.decode(cache, jnp.zeros((1, SMALL.hidden_size)), max_new_tokens=CHUNK + 1)


def test_layer_write_follows_the_sharded_cache_update_rule(mesh_sp8):
    """The engine's write (`update_sharded_cache` at a layer of the all-layer buffer) equals the
    same function on that layer alone, and leaves the other layers untouched."""
    from lwm.infer.cache import CACHE_AXES
    from lwm.mesh import logical_to_spec
    from ringattention import update_sharded_cache

    rng = np.random.default_rng(0)
    k_all = jnp.asarray(rng.normal(size=(3, 2, 64, 2, 4)), jnp.float32)
    v_all = k_all + 1.0
    k_new = jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32)
    positions = jnp.asarray([[6, 7, 8, 9, 10], [40, 41, -1, -1, 63]], jnp.int32)
    cache_spec = logical_to_spec(CACHE_AXES, k_all.shape, mesh_sp8)
    replicated = [logical_to_spec((None,) * rank) for rank in (4, 2)]

    def local(k_all, v_all, k_new, positions):
        ours = update_sharded_cache(k_all, v_all, k_new, k_new, positions, axis_name="sp", layer=1)
        theirs = update_sharded_cache(k_all[1], v_all[1], k_new, k_new, positions, axis_name="sp")
        return ours[0], ours[1], theirs[0]

    with jax.set_mesh(mesh_sp8):
        ours_k, ours_v, theirs_k = jax.jit(jax.shard_map(
            local, mesh=mesh_sp8, in_specs=(cache_spec, cache_spec, *replicated[:1], replicated[1]),
            out_specs=(cache_spec, cache_spec, logical_to_spec(CACHE_AXES[1:], k_all.shape[1:], mesh_sp8)),
            check_vma=False))(k_all, v_all, k_new, positions)
    np.testing.assert_array_equal(np.asarray(ours_k)[1], np.asarray(theirs_k))
    np.testing.assert_array_equal(np.asarray(ours_k)[[0, 2]], np.asarray(k_all)[[0, 2]])  # other layers untouched
    np.testing.assert_array_equal(np.asarray(ours_v)[1, 1, 40], np.asarray(k_new)[1, 0])
