"""`encoder: patch`: each latent is a function of its own f x f pixel patch only, so changing the
pixels of one patch moves that patch's latent and no other; the VQGAN encoder (3x3 convs and
frame-wide GroupNorm) moves latents far from the change. Both share one decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.config import ConfigError
from lwm.config.vq import VQModelConfig
from lwm.model.vqgan import VQGAN, PatchEncoder

SMALL = dict(resolution=32, hidden_channels=16, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
             codebook_size=32, codebook_dim=8, norm_num_groups=8)


def _moved_latents(encoder: str) -> np.ndarray:
    """Which latent positions change when the pixels of patch (1, 2) alone are replaced."""
    model = VQGAN(VQModelConfig(**SMALL, encoder=encoder), rngs=nnx.Rngs(0))
    factor = model.config.downsample_factor
    pixels = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
    changed = pixels.at[:, factor:2 * factor, 2 * factor:3 * factor].set(0.9)
    before, after = model.encode_latents(pixels), model.encode_latents(changed)
    return np.asarray(jnp.abs(after - before).max(axis=-1)[0] > 1e-6)


def test_patch_encoder_latents_depend_on_their_own_patch_only():
    moved = _moved_latents("patch")
    expected = np.zeros_like(moved)
    expected[1, 2] = True
    np.testing.assert_array_equal(moved, expected)
    # The convolutional encoder spreads the same change (the contrast this option exists for).
    assert _moved_latents("vqgan").sum() > 1


def test_patch_encoder_shapes_and_round_trip():
    model = VQGAN(VQModelConfig(**SMALL, encoder="patch"), rngs=nnx.Rngs(0))
    assert isinstance(model.encoder, PatchEncoder)
    pixels = jnp.zeros((2, 32, 32, 3))
    codes = model.encode(pixels)
    assert codes.shape == (2, 16, 16) and codes.dtype == jnp.int32
    assert model.decode(codes).shape == (2, 32, 32, 3)


def test_encoder_name_is_validated():
    with pytest.raises(ConfigError, match=r"vq model.encoder='conv' must be 'vqgan' or 'patch'"):
        VQModelConfig(**SMALL, encoder="conv").validate()
