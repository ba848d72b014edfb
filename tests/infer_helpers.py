"""Constants and helpers shared by the inference tests (imported as `infer_helpers`, a unique
module name, so it never clashes with other test folders' conftest modules)."""

import dataclasses

import jax

from lwm.config import ModelConfig
from lwm.config.vision import VisionVocab

# Text vocabulary large enough for the project's tokenizer (2048 ids); grouped-query attention;
# a vision vocabulary of 16 codes + <eof>/<eov> + 2 spare ids, 4 codes (2x2) per frame.
SMALL = ModelConfig(
    vocab_size=2048, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    max_seq_len=1024, rms_norm_eps=1e-6, vision_vocab_size=20, vision=VisionVocab(codebook_size=16, tokens_per_frame=4),
)
CHUNK = 16  # prefill and key chunk of every engine in these tests


def small_config(**changes) -> ModelConfig:
    """`SMALL` with some fields changed."""
    return dataclasses.replace(SMALL, **changes)


def first_devices(count: int):
    """The first `count` devices (for meshes smaller than the eight fake devices)."""
    return jax.devices()[:count]


def make_model(config: ModelConfig, seed: int = 0):
    """A model with random weights drawn by numpy (normal, std 0.02; norm scales 1).

    `create_model` compiles one random-init program per parameter shape, which costs seconds on
    a small CPU; filling an abstract model from numpy is instant.
    """
    from lwm.model.params_io import numpy_initialised_model

    return numpy_initialised_model(config, seed)
