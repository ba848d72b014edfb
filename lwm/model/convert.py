"""Conversion between Hugging Face `LlamaForCausalLM` folders and the project's model layout.

Only local folders are read (config.json + safetensors, as `save_pretrained` writes them); no
hub access. Both directions only transpose and reshape, so a round trip is bit-exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config import ModelConfig
from lwm.model.params_io import (
    create_model,
    load_model,
    params_dict,
    save_model,
    set_params,
    stack_layers,
    unstack_layers,
)


def _read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(path.name for path in folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no *.safetensors weights (expected save_pretrained output)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        tensors.update(load_file(str(folder / name)))
    return tensors


def hf_config_to_model_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """Reads a Hugging Face LLaMA `config.json` dict into a `ModelConfig`, refusing what differs."""
    if hf.get("model_type") not in (None, "llama"):
        raise ValueError(f"config.json has model_type={hf.get('model_type')!r}; only 'llama' converts")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise ValueError(f"config.json sets {flag}=true; the LLaMA layout here has no biases")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json has hidden_act={hf['hidden_act']!r}; only 'silu' is supported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"config.json uses RoPE scaling {rope.get('rope_type')!r}, which is not supported")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    if head_dim * heads != hf["hidden_size"]:
        raise ValueError(
            f"config.json head_dim={head_dim} × heads={heads} != hidden_size={hf['hidden_size']}; "
            f"this layout needs head_dim = hidden_size / num_attention_heads"
        )
    fields = dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads", heads),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta),
        max_seq_len=hf.get("max_position_embeddings", 4096),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        initializer_range=hf.get("initializer_range", 0.02),
    )
    fields.update(overrides)
    config = ModelConfig(**fields)
    config.validate()
    return config


def model_config_to_hf_config(config: ModelConfig, dtype: str) -> dict[str, Any]:
    """A Hugging Face `LlamaConfig` dict for `config`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "max_position_embeddings": config.max_seq_len,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def hf_tensors_to_params(tensors: dict[str, np.ndarray], config: ModelConfig) -> dict[str, Any]:
    """Maps Hugging Face tensor names and layouts to the unstacked parameter dict."""
    E, H, K, D = config.hidden_size, config.num_heads, config.kv_heads, config.head_dim

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise KeyError(f"Hugging Face weights lack {name!r}")
        return tensors.pop(name)

    layers = {}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        layers[i] = {
            "attention_norm": {"scale": take(prefix + "input_layernorm.weight")},
            "attention": {
                "wq": take(prefix + "self_attn.q_proj.weight").T.reshape(E, H, D),
                "wk": take(prefix + "self_attn.k_proj.weight").T.reshape(E, K, D),
                "wv": take(prefix + "self_attn.v_proj.weight").T.reshape(E, K, D),
                "wo": take(prefix + "self_attn.o_proj.weight").T.reshape(H, D, E),
            },
            "mlp_norm": {"scale": take(prefix + "post_attention_layernorm.weight")},
            "mlp": {
                "w_gate": take(prefix + "mlp.gate_proj.weight").T,
                "w_up": take(prefix + "mlp.up_proj.weight").T,
                "w_down": take(prefix + "mlp.down_proj.weight").T,
            },
        }
    params: dict[str, Any] = {
        "embed": take("model.embed_tokens.weight"),
        "layers": layers,
        "final_norm": {"scale": take("model.norm.weight")},
    }
    if not config.tie_embeddings:
        params["lm_head"] = take("lm_head.weight").T
    else:
        tensors.pop("lm_head.weight", None)
    leftover = sorted(name for name in tensors if "rotary_emb" not in name)
    if leftover:
        raise ValueError(f"Hugging Face weights have tensors this layout does not use: {leftover[:5]}")
    return jax_tree_copy(params)


def jax_tree_copy(tree: Any) -> Any:
    """Contiguous copies of every array (transposed views would otherwise alias the source)."""
    if isinstance(tree, dict):
        return {key: jax_tree_copy(value) for key, value in tree.items()}
    return np.ascontiguousarray(tree)


def params_to_hf_tensors(params: dict[str, Any], config: ModelConfig) -> dict[str, np.ndarray]:
    """The inverse of `hf_tensors_to_params` for an unstacked parameter dict."""
    E, H, K, D = config.hidden_size, config.num_heads, config.kv_heads, config.head_dim
    tensors = {
        "model.embed_tokens.weight": params["embed"],
        "model.norm.weight": params["final_norm"]["scale"],
    }
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = params["lm_head"].T
    for i in range(config.num_layers):
        layer, prefix = params["layers"][i], f"model.layers.{i}."
        attention, mlp = layer["attention"], layer["mlp"]
        tensors.update({
            prefix + "input_layernorm.weight": layer["attention_norm"]["scale"],
            prefix + "post_attention_layernorm.weight": layer["mlp_norm"]["scale"],
            prefix + "self_attn.q_proj.weight": attention["wq"].reshape(E, H * D).T,
            prefix + "self_attn.k_proj.weight": attention["wk"].reshape(E, K * D).T,
            prefix + "self_attn.v_proj.weight": attention["wv"].reshape(E, K * D).T,
            prefix + "self_attn.o_proj.weight": attention["wo"].reshape(H * D, E).T,
            prefix + "mlp.gate_proj.weight": mlp["w_gate"].T,
            prefix + "mlp.up_proj.weight": mlp["w_up"].T,
            prefix + "mlp.down_proj.weight": mlp["w_down"].T,
        })
    return {name: np.ascontiguousarray(np.asarray(value)) for name, value in tensors.items()}


def hf_to_lwm(hf_dir: str | Path, out_dir: str | Path, *, scan_layers: bool = True) -> Path:
    """Converts a local Hugging Face LLaMA folder into an lwm model directory."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{hf_dir} has no config.json (expected a save_pretrained folder)")
    config = hf_config_to_model_config(json.loads(config_path.read_text()), scan_layers=scan_layers)
    tensors = _read_safetensors(hf_dir)
    params = hf_tensors_to_params(tensors, config)
    if scan_layers:
        params = stack_layers(params, config.num_layers)
    dtype = str(params["embed"].dtype)
    import dataclasses

    config = dataclasses.replace(config, param_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32")
    model = create_model(config)
    set_params(model, params)
    return save_model(model, out_dir)


def lwm_to_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Writes an lwm model directory as a Hugging Face `LlamaForCausalLM` folder."""
    from safetensors.numpy import save_file

    model = load_model(model_dir)
    config = model.config
    if config.has_vision:
        raise ValueError("a vision-language model has no Hugging Face LlamaForCausalLM equivalent")
    params = jax_to_numpy(params_dict(model))
    if config.scan_layers:
        params = unstack_layers(params, config.num_layers)
    tensors = params_to_hf_tensors(params, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dtype = str(next(iter(tensors.values())).dtype)
    (out_dir / "config.json").write_text(json.dumps(model_config_to_hf_config(config, dtype), indent=2))
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    return out_dir


def jax_to_numpy(tree: Any) -> Any:
    """Host numpy copies of a nested dict of arrays."""
    if isinstance(tree, dict):
        return {key: jax_to_numpy(value) for key, value in tree.items()}
    return np.asarray(tree)
