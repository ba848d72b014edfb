"""Sampling: greedy, temperature, top-k, top-p, stop tokens, classifier-free guidance and the
vision frame structure (`<eof>` at every frame end, `<eov>` at the end)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwm.infer.generate import split_generated
from lwm.infer.sampling import (
    SamplingParams,
    VisionSchedule,
    classifier_free_guidance,
    sample_tokens,
    top_p_filter,
)

LOGITS = jnp.log(jnp.asarray([[0.05, 0.5, 0.3, 0.15], [0.4, 0.1, 0.2, 0.3]], jnp.float32))


def _draws(logits, params, count=400):
    keys = jax.random.split(jax.random.key(0), count)
    return np.asarray(jax.vmap(lambda key: sample_tokens(logits, key, params))(keys))  # [count, batch]


def test_greedy_is_argmax_and_tiny_temperature_equals_greedy():
    logits = jax.random.normal(jax.random.key(1), (6, 50))
    greedy = np.asarray(sample_tokens(logits, jax.random.key(2), SamplingParams()))
    np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), axis=-1))
    cold = _draws(logits, SamplingParams(temperature=1e-4), count=50)
    assert (cold == greedy[None]).all()
    hot = _draws(logits, SamplingParams(temperature=1.0), count=50)
    assert (hot != greedy[None]).any()  # real sampling is not greedy


def test_top_k_restricts_the_support_to_the_k_best():
    draws = _draws(LOGITS, SamplingParams(temperature=1.0, top_k=2))
    assert set(draws[:, 0].tolist()) == {1, 2}
    assert set(draws[:, 1].tolist()) == {0, 3}


def test_top_p_keeps_the_smallest_set_reaching_p():
    draws = _draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.75))
    assert set(draws[:, 0].tolist()) == {1, 2}  # 0.5 + 0.3 reaches 0.75
    assert set(draws[:, 1].tolist()) == {0, 3, 2}  # 0.4 + 0.3 falls short: 0.2 is needed too
    draws = _draws(LOGITS, SamplingParams(temperature=1.0, top_p=0.85))
    assert set(draws[:, 0].tolist()) == {1, 2, 3}
    # a tiny p keeps only the most likely token, never nothing
    kept = np.isfinite(np.asarray(top_p_filter(LOGITS, 1e-6)))
    np.testing.assert_array_equal(kept.sum(-1), [1, 1])


def test_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1.0)


def test_guidance_mixes_conditional_and_unconditional_rows():
    conditional = jax.random.normal(jax.random.key(3), (2, 10))
    unconditional = jax.random.normal(jax.random.key(4), (2, 10))
    both = jnp.concatenate([conditional, unconditional])
    np.testing.assert_allclose(classifier_free_guidance(both, 1.0), conditional, atol=1e-6)
    np.testing.assert_allclose(classifier_free_guidance(both, 3.0), unconditional + 3.0 * (conditional - unconditional),
                               atol=1e-6)


def test_vision_schedule_forces_frame_ends():
    schedule = VisionSchedule(tokens_per_frame=3, codebook_size=8, num_frames=2)
    forced = [int(schedule.forced_token(jnp.int32(step))) for step in range(schedule.total_tokens)]
    assert forced == [-1, -1, -1, 8, -1, -1, -1, 9]
    logits = jnp.zeros((1, 12))
    allowed = np.isfinite(np.asarray(schedule.constrain(logits, jnp.int32(1))))[0]
    assert allowed.tolist() == [True] * 8 + [False] * 4  # codes only
    allowed = np.isfinite(np.asarray(schedule.constrain(logits, jnp.int32(3))))[0]
    assert np.nonzero(allowed)[0].tolist() == [8]
    continued = VisionSchedule(tokens_per_frame=3, codebook_size=8, num_frames=1, end_with_eov=False)
    assert int(continued.forced_token(jnp.int32(3))) == 8


def _prefilled(engine, prompts, size=256):
    return engine.prefill(engine.init_cache(len(prompts), size), prompts)


PROMPTS = ([1, 17, 300, 45, 1200, 7, 99], [1, 5, 6, 7, 8])


def test_stop_tokens_stop_their_row_only(single_engine):
    _, _, free = single_engine.decode(*_prefilled(single_engine, PROMPTS), max_new_tokens=8)
    free = np.asarray(free)
    stop = int(free[0, 2])
    assert stop not in free[1].tolist() and stop not in free[0, :2].tolist()
    _, _, stopped = single_engine.decode(*_prefilled(single_engine, PROMPTS), max_new_tokens=8, stop_ids=[stop])
    stopped = np.asarray(stopped)
    np.testing.assert_array_equal(stopped[0, :3], free[0, :3])
    assert (stopped[0, 3:] == -1).all()  # nothing after the stop token
    np.testing.assert_array_equal(stopped[1], free[1])  # the other row goes on
    assert split_generated(stopped[0], [stop]) == (free[0, :2].tolist(), True)


def test_guidance_scale_one_equals_the_conditional_model(single_engine):
    conditional, unconditional = PROMPTS
    _, _, plain = single_engine.decode(*_prefilled(single_engine, PROMPTS), max_new_tokens=8)
    _, _, guided = single_engine.decode(*_prefilled(single_engine, [conditional, unconditional]), max_new_tokens=8,
                                        guidance_scale=1.0)
    np.testing.assert_array_equal(np.asarray(guided)[0], np.asarray(plain)[0])


def test_generated_vision_tokens_end_every_frame(single_engine):
    config = single_engine.config
    schedule = VisionSchedule(config.tokens_per_frame, config.codebook_size, num_frames=3)
    cache, hidden = _prefilled(single_engine, PROMPTS)
    cache, _, tokens = single_engine.decode(
        cache, hidden, max_new_tokens=schedule.total_tokens, sampling=SamplingParams(temperature=1.0), head="vision",
        guidance_scale=3.0, schedule=schedule, key=jax.random.key(7),
    )
    frames = np.asarray(tokens)[0].reshape(3, config.tokens_per_frame + 1)
    assert frames[:, -1].tolist() == [config.eof_token, config.eof_token, config.eov_token]
    assert (frames[:, :-1] < config.codebook_size).all() and (frames[:, :-1] >= 0).all()
    # both guided rows received the generated tokens as vision tokens
    assert np.asarray(cache.lengths).tolist() == [len(p) + schedule.total_tokens for p in PROMPTS]
