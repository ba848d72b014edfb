"""Parity with Hugging Face `transformers` (PyTorch) LLaMA, and bit-exact round trips."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lwm.model.convert import hf_to_lwm, lwm_to_hf  # noqa: E402
from lwm.model.params_io import load_model  # noqa: E402


def make_hf_model(folder, *, tie=False, theta=50_000.0):
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    # Random norms, so a swapped norm would show in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_transformers(tmp_path, scan_layers, tie):
    hf_model = make_hf_model(tmp_path / "hf", tie=tie)
    hf_to_lwm(tmp_path / "hf", tmp_path / "lwm", scan_layers=scan_layers)
    model = load_model(tmp_path / "lwm")
    assert model.config.rope_theta == 50_000.0 and model.config.kv_heads == 2
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 40)).astype(np.int32)
    with torch.no_grad():
        expected = hf_model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()
    actual = np.asarray(model(jnp.asarray(tokens)))
    assert actual.shape == (2, 40, 97)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_round_trip_is_bit_exact(tmp_path, scan_layers):
    make_hf_model(tmp_path / "hf")
    hf_to_lwm(tmp_path / "hf", tmp_path / "lwm", scan_layers=scan_layers)
    lwm_to_hf(tmp_path / "lwm", tmp_path / "back")
    from safetensors.numpy import load_file

    original = load_file(str(tmp_path / "hf" / "model.safetensors"))
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert sorted(original) == sorted(back)
    for name in original:
        assert original[name].dtype == back[name].dtype
        np.testing.assert_array_equal(original[name], back[name], err_msg=name)
    # transformers loads the exported folder as a LlamaForCausalLM with the same settings.
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back")
    assert reloaded.config.num_key_value_heads == 2
    assert json.loads((tmp_path / "back" / "config.json").read_text())["rope_parameters"]["rope_theta"] == 50_000.0
