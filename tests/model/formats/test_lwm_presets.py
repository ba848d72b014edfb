"""configs/lwm presets have LWM's exact shapes, and the inference plan of LWM-Chat-1M at 1M
tokens on 8, 32 and 64 devices (jax.eval_shape only, nothing allocated)."""

from __future__ import annotations

import glob
import math

import pytest

from lwm.model.formats.lwm_checkpoint import load_lwm_model_config
from lwm.model.formats.lwm_llama import lwm_param_shapes
from lwm.train.plan import GIB, plan_inference


@pytest.mark.parametrize("path", sorted(glob.glob("configs/lwm/*.yaml")))
def test_presets_have_lwm_shapes(path):
    config = load_lwm_model_config(path)
    shapes = lwm_param_shapes(config)
    count = sum(math.prod(shape) for shape in shapes.values())
    vision = "chat-" in path and "text" not in path
    # LLaMA-2-7B (6,738,415,616) plus, for the vision models, vte and vision_head of 8448 x 4096.
    assert count == 6_738_415_616 + (2 * 8448 * 4096 if vision else 0)
    assert config.rope_theta == 50_000_000.0 and config.rms_norm_eps == 1e-6
    assert config.kv_heads == 32 and not config.tie_embeddings
    if vision:
        assert (config.vision_vocab_size, config.eof_token, config.eov_token) == (8448, 8192, 8193)
        assert shapes[("transformer", "vte", "embedding")] == (8448, 4096)
        assert shapes[("transformer", "h", "scan_decoder", "feed_forward", "w1", "kernel")] == (32, 4096, 11008)


def test_lwm_chat_1m_inference_plan():
    config = load_lwm_model_config("configs/lwm/lwm-chat-1m.yaml")
    assert config.max_seq_len == 1_048_576
    totals = {}
    for devices in (8, 32, 64):
        plan = plan_inference(config, devices, 1_048_576, compute_dtype="bfloat16")
        assert plan.mesh["sp"] == devices
        # keys and values: 2 x 32 layers x 4096 x 2 bytes = 512 KiB a position, split over sp.
        assert plan.kv_cache_bytes == 2 * 32 * 4096 * 2 * 1_048_576 // devices
        assert plan.parameters == 6_807_621_632
        totals[devices] = plan.total_bytes / GIB
    assert 66 < totals[8] < 68 and 17 < totals[32] < 18.5 and 9 < totals[64] < 10
