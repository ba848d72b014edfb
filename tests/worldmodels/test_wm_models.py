"""V, M and C: exact parameter counts, the fast convolutions, the MDN likelihood and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from lwm.worldmodels import checkpoint
from lwm.worldmodels.controller import ControllerSpec, batched_controller_tanh, controller_tanh
from lwm.worldmodels.mdnrnn import MDNRNN, init_mdnrnn, load_mdnrnn, mixture_log_prob, sample_mixture
from lwm.worldmodels.vae import ConvVAE, count_params, init_vae, strided_conv, strided_conv_transpose, vae_loss

# Everything runs under jit: eager JAX compiles each small op on its own, which is slow on CI.
log_prob = jax.jit(mixture_log_prob)
sample = jax.jit(sample_mixture)


@pytest.mark.parametrize("z_size, expected", [(32, 4_348_547), (64, 4_446_915)])
def test_vae_parameter_count_matches_the_paper(z_size, expected):
    assert count_params(lambda: ConvVAE(z_size, rngs=nnx.Rngs(0))) == expected


def test_mdnrnn_parameter_counts_match_the_paper():
    # CarRacing: LSTM on [z 32, a 3] with 256 units + MDN head 256 → 5·3·32.
    carracing = count_params(lambda: MDNRNN(32, 3, 256, 5, False, rngs=nnx.Rngs(0)))
    assert carracing == 4 * 256 * (35 + 256) + 4 * 256 + 256 * 480 + 480 == 422_368
    # TakeCover: LSTM on [z 64, a 1, first-step flag] with 512 units, MDN head and a done head.
    takecover = count_params(lambda: MDNRNN(64, 1, 512, 5, True, rngs=nnx.Rngs(0)))
    assert takecover == 4 * 512 * (66 + 512) + 4 * 512 + 512 * 960 + 960 + 513 == 1_678_785


def test_controller_parameter_counts():
    assert ControllerSpec(32, 256, 3).num_params == 867
    assert ControllerSpec(64, 512, 1).num_params == 577
    assert ControllerSpec(64, 512, 1, include_cell=True).num_params == 1089


def test_controller_layout_is_weights_then_bias():
    spec = ControllerSpec(2, 3, 2)
    theta = np.arange(spec.num_params, dtype=np.float32) / 10.0
    features = np.array([1.0, -1.0, 0.5, 0.0, 2.0], np.float32)
    weights, bias = theta[:10].reshape(2, 5), theta[10:]
    expected = np.tanh(weights @ features + bias)
    np.testing.assert_allclose(controller_tanh(theta, features, spec), expected, rtol=1e-6)
    batched = batched_controller_tanh(jnp.asarray(np.stack([theta, theta])), jnp.asarray(np.stack([features] * 2)), spec)
    np.testing.assert_allclose(np.asarray(batched), np.stack([expected] * 2), rtol=1e-5)


@pytest.mark.parametrize("height, c_in, c_out, kernel", [(64, 3, 4, 4), (31, 4, 5, 4), (6, 3, 2, 4)])
def test_strided_conv_equals_flax_conv(height, c_in, c_out, kernel):
    layer = checkpoint.init_module(lambda: nnx.Conv(c_in, c_out, (kernel, kernel), strides=2, padding="VALID",
                                                    rngs=nnx.Rngs(0)), seed=1)
    layer.bias[...] = jnp.linspace(-1, 1, c_out)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, height, height, c_in)), jnp.float32)
    both = nnx.jit(lambda layer, x: (strided_conv(x, layer.kernel[...], layer.bias[...], 2), layer(x)))
    ours, expected = both(layer, x)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("height, c_in, c_out, kernel", [(1, 8, 4, 5), (5, 4, 3, 5), (13, 3, 2, 6), (30, 2, 3, 6)])
def test_strided_conv_transpose_equals_flax_conv_transpose(height, c_in, c_out, kernel):
    layer = checkpoint.init_module(lambda: nnx.ConvTranspose(c_in, c_out, (kernel, kernel), strides=2,
                                                             padding="VALID", rngs=nnx.Rngs(0)), seed=2)
    layer.bias[...] = jnp.linspace(-1, 1, c_out)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, height, height, c_in)), jnp.float32)
    both = nnx.jit(lambda layer, x: (strided_conv_transpose(x, layer.kernel[...], layer.bias[...], 2), layer(x)))
    ours, expected = both(layer, x)
    assert expected.shape[1] == (height - 1) * 2 + kernel
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_vae_shapes_and_free_bits_floor():
    model = init_vae(32, seed=0)
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 64, 64, 3)), jnp.float32)
    recon, mu, logvar = nnx.jit(lambda model, x, key: model(x, key))(model, x, jax.random.key(2))
    assert recon.shape == (2, 64, 64, 3) and mu.shape == (2, 32) and logvar.shape == (2, 32)
    assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0
    # A KL below 0.5 nat per dimension is lifted to the floor 0.5·z and gives no gradient.
    small_mu = jnp.full((2, 32), 0.1)
    zero_logvar = jnp.zeros((2, 32))
    loss_and_grad = jax.jit(jax.value_and_grad(lambda mu: vae_loss(x, x, mu, zero_logvar, 0.5), has_aux=True))
    (loss, metrics), grad = loss_and_grad(small_mu)
    assert float(loss) == pytest.approx(16.0)
    assert float(metrics["kl"]) == pytest.approx(0.5 * 32 * 0.01, rel=1e-5)
    assert float(jnp.abs(grad).max()) == 0.0
    (loss, _), grad = loss_and_grad(jnp.full((2, 32), 2.0))
    assert float(loss) == pytest.approx(0.5 * 32 * 4.0)
    assert float(jnp.abs(grad).min()) > 0.0


def test_mdn_log_prob_equals_scipy_for_one_component():
    rng = np.random.default_rng(0)
    y, mean, logstd = rng.normal(size=(3, 7)), rng.normal(size=(7, 1)), rng.normal(scale=0.5, size=(7, 1))
    logmix = np.zeros((7, 1))
    ours = log_prob(jnp.asarray(y), jnp.asarray(logmix), jnp.asarray(mean), jnp.asarray(logstd))
    expected = scipy.stats.norm.logpdf(y, loc=mean[:, 0], scale=np.exp(logstd[:, 0]))
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5, atol=1e-5)


def test_mdn_log_prob_equals_scipy_mixture():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(4, 6))
    weights = rng.dirichlet(np.ones(5), size=6)  # [z, K]
    mean, logstd = rng.normal(size=(6, 5)), rng.normal(scale=0.3, size=(6, 5))
    ours = log_prob(jnp.asarray(y), jnp.log(jnp.asarray(weights)), jnp.asarray(mean), jnp.asarray(logstd))
    density = np.sum(weights * scipy.stats.norm.pdf(y[..., None], loc=mean, scale=np.exp(logstd)), axis=-1)
    np.testing.assert_allclose(np.asarray(ours), np.log(density), rtol=1e-5, atol=1e-5)


def test_low_temperature_sampling_collapses_to_most_likely_mean():
    rng = np.random.default_rng(2)
    logmix = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(16, 5))), axis=-1)
    mean, logstd = jnp.asarray(rng.normal(size=(16, 5))), jnp.zeros((16, 5))
    expected = np.take_along_axis(np.asarray(mean), np.asarray(jnp.argmax(logmix, -1))[:, None], -1)[:, 0]
    for seed in range(5):
        drawn = sample(jax.random.key(seed), logmix, mean, logstd, 1e-6)
        np.testing.assert_allclose(np.asarray(drawn), expected, atol=1e-2)


def test_temperature_scales_one_component_noise_by_sqrt_tau():
    logmix, mean, logstd = jnp.zeros((20000, 1)), jnp.full((20000, 1), 1.5), jnp.full((20000, 1), np.log(0.5))
    samples = np.asarray(sample(jax.random.key(3), logmix, mean, logstd, 4.0))
    assert samples.mean() == pytest.approx(1.5, abs=0.03)
    assert samples.std() == pytest.approx(0.5 * 2.0, rel=0.03)


def test_teacher_forced_call_matches_step_by_step_and_survives_a_save(tmp_path):
    meta = {"z_size": 4, "action_dim": 1, "hidden": 8, "mixtures": 3, "with_done": True}
    model = init_mdnrnn(meta, seed=0)
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32)
    actions = jnp.asarray(rng.normal(size=(2, 5, 1)), jnp.float32)
    start = jnp.asarray(np.eye(5)[0][None].repeat(2, 0), jnp.float32)

    @nnx.jit
    def both(model, z, actions, start):
        carry, steps = model.initial_carry((2,)), []
        for t in range(5):
            carry = model.step(carry, z[:, t], actions[:, t], start[:, t])
            steps.append(model.heads(carry[0]))
        return model(z, actions, start), steps

    out, steps = both(model, z, actions, start)
    for t, step_out in enumerate(steps):
        np.testing.assert_allclose(np.asarray(step_out.mean), np.asarray(out.mean[:, t]), atol=1e-5)
        np.testing.assert_allclose(np.asarray(step_out.done_logit), np.asarray(out.done_logit[:, t]), atol=1e-5)
    checkpoint.save_arrays(tmp_path, "mdnrnn", nnx.state(model, nnx.Param).to_pure_dict(), meta)
    restored_out, _ = both(load_mdnrnn(tmp_path), z, actions, start)
    np.testing.assert_allclose(np.asarray(restored_out.logstd), np.asarray(out.logstd), atol=1e-6)
    assert checkpoint.read_meta(tmp_path, "mdnrnn")["param_count"] == count_params(
        lambda: MDNRNN(4, 1, 8, 3, True, rngs=nnx.Rngs(0)))
