"""diffusers `VQModel` folders (config.json + safetensors, as `save_pretrained` writes them)
-> `lwm.model.vqgan.VQGAN`. Neither torch nor diffusers is needed to read them.

diffusers' names map onto ours almost one to one (`down_blocks.{i}.resnets.{j}`, ...); conv
kernels go from OIHW to HWIO and linear weights are transposed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.vq import VQModelConfig
from lwm.model.formats.safe_files import WeightMappingError
from lwm.model.formats.vq_assign import assign_weights
from lwm.model.vqgan import VQGAN, abstract_vqgan

# ---------------------------------------------------------------------------------------------
# diffusers VQModel

_DIFFUSERS_RULES: tuple[tuple[str, str], ...] = (
    (r"^quantize\.embedding\.weight$", "quantize.codebook"),
    (r"\.downsamplers\.0\.conv\.", ".downsample."),
    (r"\.upsamplers\.0\.conv\.", ".upsample."),
    (r"\.attentions\.0\.(group_norm|spatial_norm)\.", ".attention.norm.norm."),
    (r"\.attentions\.0\.", ".attention."),
    (r"\.to_out\.0\.", ".to_out."),
    (r"\.(norm1|norm2)\.", r".\1.norm."),
    (r"^decoder\.conv_norm_out\.", "decoder.conv_norm_out.norm."),
)


def diffusers_config_to_vq(config: Mapping[str, Any], resolution: int = 256,
                           source: str = "config.json") -> VQModelConfig:
    """Our `VQModelConfig` for a diffusers `VQModel` config.json; refuses block types, activations
    or channel lists this architecture does not cover."""
    channels = list(config.get("block_out_channels", (64,)))
    depth = len(channels)
    down = list(config.get("down_block_types", ("DownEncoderBlock2D",)))
    up = list(config.get("up_block_types", ("UpDecoderBlock2D",)))
    if down != ["DownEncoderBlock2D"] * depth or up != ["UpDecoderBlock2D"] * depth:
        raise WeightMappingError(
            f"{source}: only DownEncoderBlock2D/UpDecoderBlock2D blocks (one per entry of "
            f"block_out_channels) are supported, got {down} and {up}"
        )
    if config.get("act_fn", "silu") not in ("silu", "swish"):
        raise WeightMappingError(f"{source}: act_fn={config['act_fn']!r}; only silu is supported")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise WeightMappingError(f"{source}: in_channels and out_channels differ")
    hidden = channels[0]
    if any(width % hidden for width in channels):
        raise WeightMappingError(
            f"{source}: block_out_channels={channels} are not multiples of the first entry"
        )
    latent = int(config.get("latent_channels", 3))
    return VQModelConfig(
        resolution=resolution,
        in_channels=int(config.get("in_channels", 3)),
        hidden_channels=hidden,
        channel_mult=tuple(width // hidden for width in channels),
        num_res_blocks=int(config.get("layers_per_block", 1)),
        z_channels=latent,
        codebook_size=int(config.get("num_vq_embeddings", 256)),
        codebook_dim=int(config.get("vq_embed_dim") or latent),
        norm_num_groups=int(config.get("norm_num_groups", 32)),
        norm_type=config.get("norm_type", "group"),
        mid_attention=bool(config.get("mid_block_add_attention", True)),
    )


def diffusers_state_to_ours(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a diffusers `VQModel` state dict to this module's names and layouts (conv kernels
    OIHW -> HWIO, linear weights transposed)."""
    converted: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = key
        for pattern, replacement in _DIFFUSERS_RULES:
            name = re.sub(pattern, replacement, name)
        value = np.asarray(value, dtype=np.float32)
        if name.endswith(".weight"):
            if value.ndim == 4:
                name, value = name[:-7] + ".kernel", value.transpose(2, 3, 1, 0)
            elif value.ndim == 2:
                name, value = name[:-7] + ".kernel", value.T
            else:
                name = name[:-7] + ".scale"
        converted[name] = value
    return converted


def _read_safetensors(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"{folder}: no .safetensors weights; save the VQModel with save_pretrained() "
            f"(safe_serialization=True, the default)"
        )
    return load_file(files[0])


def load_diffusers_vqgan(folder: str | Path, resolution: int = 256) -> VQGAN:
    """Builds our VQGAN from a local diffusers `VQModel` folder (config.json + safetensors as
    `save_pretrained` writes them). Neither torch nor diffusers is needed.

    `resolution` is the frame size the tokenizer will resize inputs to (diffusers' config does
    not record it reliably); the model itself is fully convolutional.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a diffusers VQModel folder")
    config = diffusers_config_to_vq(json.loads(config_path.read_text()), resolution, str(config_path))
    return assign_weights(abstract_vqgan(config), diffusers_state_to_ours(_read_safetensors(folder)), str(folder))
