"""Shared pieces of the server tests (imported as `serve_helpers`, a unique module name): a small
random vision-language model, its engine and server state, and lwm's direct scoring."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from flax import nnx

from lwm.config import ModelConfig
from lwm.config.vision import VisionVocab

# A text vocabulary large enough for the project's tokenizer (2048 ids); grouped-query attention;
# 16 VQ codes + <eof>/<eov> + 2 spare ids, 4 codes (2x2) per frame.
MODEL = ModelConfig(
    vocab_size=2048, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
    max_seq_len=1024, rms_norm_eps=1e-6, vision_vocab_size=20,
    vision=VisionVocab(codebook_size=16, tokens_per_frame=4),
)
CHUNK = 16  # prefill and key chunk
SLOT_SIZE = 256
SLOTS = 4


def make_model(config: ModelConfig = MODEL, seed: int = 0):
    """Random weights drawn by numpy (normal, std 0.02; norm scales 1): instant on a small CPU."""

    from lwm.model.params_io import numpy_initialised_model

    model = numpy_initialised_model(config, seed)
    return model


def make_vq(tmp_dir):
    """A VQ tokenizer: 8x8 frames -> 2x2 = 4 codes from a 16-code codebook."""
    from lwm.config.vq import VQModelConfig
    from lwm.model.vqgan import init_vqgan
    from lwm.model.vqgan_convert import load_vq_tokenizer, save_vq_checkpoint

    config = VQModelConfig(resolution=8, hidden_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                           z_channels=8, codebook_size=16, codebook_dim=8, norm_num_groups=4)
    return load_vq_tokenizer(save_vq_checkpoint(tmp_dir / "vq", init_vqgan(config, seed=0)))


def serve_config(**serve_fields):
    """A `ServeRunConfig` for the small model (the model itself is passed in, not loaded)."""
    from lwm.config.infer import CacheConfig, LoadConfig
    from lwm.config.serve import ServerSection, ServeRunConfig

    section = dataclasses.replace(ServerSection(slots=SLOTS, queue_size=8, max_frames=4, video_frames=3,
                                                max_body_bytes=2_000_000), **serve_fields)
    return ServeRunConfig(load=LoadConfig(model="(in memory)"), serve=section,
                          cache=CacheConfig(max_len=SLOT_SIZE, prefill_chunk=CHUNK, key_chunk=CHUNK))


def direct_logprobs(model, ids) -> np.ndarray:
    """log p(ids[i] | ids[:i]) for i >= 1 from one full forward pass of the model (no cache)."""
    import jax
    import jax.numpy as jnp

    # Right-padded to a multiple of 64 (causal: padding after the tokens changes none of them), so
    # prompts of different lengths share one compiled forward pass.
    padded = list(ids) + [0] * (-len(ids) % 64)
    logits = _forward(model, jnp.asarray([padded], jnp.int32)).astype(jnp.float32)
    logprobs = np.asarray(jax.nn.log_softmax(logits, axis=-1))[0]
    return np.asarray([logprobs[i - 1, ids[i]] for i in range(1, len(ids))])


def greedy_by_forward(model, ids, max_new_tokens: int, stop_id: int) -> list[int]:
    """Greedy answer ids from one full forward pass per token (no cache), stop id removed."""
    import jax.numpy as jnp

    ids, answer = list(ids), []
    for _ in range(max_new_tokens):
        padded = ids + [0] * (-len(ids) % 64)
        token = int(np.argmax(np.asarray(_forward(model, jnp.asarray([padded], jnp.int32)))[0, len(ids) - 1]))
        if token == stop_id:
            break
        answer.append(token)
        ids.append(token)
    return answer


@functools.partial(jax.jit, static_argnums=(0,))
def _jitted_forward(graphdef, state, ids_BT):
    return nnx.merge(graphdef, state)(ids_BT)


def _forward(model, ids_BT):
    graphdef, state = nnx.split(model)
    return _jitted_forward(graphdef, state, ids_BT)
