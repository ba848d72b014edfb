"""LWM's `vqgan` file (a pickle of flax.linen parameters) <-> `lwm.model.vqgan.VQGAN`.

LWM's `lwm/vqgan.py` builds its modules with `nn.compact`, so the parameters carry flax's
automatic names, `ClassName_{n}` numbered by creation order within the parent:

    encoder/Conv_0                        conv_in (3 -> hidden_channels)
    encoder/DownsamplingBlock_{i}/ResnetBlock_{j}/GroupNorm_0, Conv_0, GroupNorm_1, Conv_1,
                                          Conv_2 (1x1 shortcut, only when the width changes)
    encoder/DownsamplingBlock_{i}/Downsample_0/Conv_0   stride 2 after padding (0,1),(0,1);
                                          not on the last level
    encoder/MidBlock_0/ResnetBlock_{0,1}, encoder/GroupNorm_0, encoder/Conv_1 (conv_out)
    quant_conv, quantize/embeddings [codes, dim], post_quant_conv
    decoder/Conv_0, decoder/MidBlock_0/ResnetBlock_{0,1}
    decoder/UpsamplingBlock_{k}/ResnetBlock_{0..num_res_blocks}, .../Upsample_0/Conv_0
                                          k = 0 is the DEEPEST level: the blocks are created in
                                          `reversed(range(levels))`, so flax numbers them in the
                                          order they run, as ours are numbered
    decoder/GroupNorm_0, decoder/Conv_1

Convolution kernels are HWIO like ours. LWM's code crashes for a VQGAN with attention, so
only attention-free shapes exist (`mid_attention` must be false). The file is a pickle of
numpy arrays (or jax arrays) and is read through `SafeUnpickler`; a flax msgpack tree with the
same names also loads. `load_lwm_vqgan` returns a VQGAN computing with LWM's numerics
(`set_lwm_numerics`: one-pass GroupNorm variance, LWM's distance formula, clipped decode).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lwm.config.vq import VQModelConfig
from lwm.model.formats.safe_files import WeightMappingError, flatten_tree, load_param_file
from lwm.model.formats.vq_assign import assign_weights, variable_names
from lwm.model.vqgan import VQGAN, abstract_vqgan, set_lwm_numerics

_RESNET_PARTS = {"GroupNorm_0": "norm1.norm", "Conv_0": "conv1", "GroupNorm_1": "norm2.norm",
                 "Conv_1": "conv2", "Conv_2": "conv_shortcut"}
_RULES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(pattern), replacement) for pattern, replacement in (
    (r"^encoder\.Conv_0\.", "encoder.conv_in."),
    (r"^encoder\.Conv_1\.", "encoder.conv_out."),
    (r"^encoder\.GroupNorm_0\.", "encoder.conv_norm_out."),
    (r"^decoder\.Conv_0\.", "decoder.conv_in."),
    (r"^decoder\.Conv_1\.", "decoder.conv_out."),
    (r"^decoder\.GroupNorm_0\.", "decoder.conv_norm_out.norm."),
    (r"^encoder\.DownsamplingBlock_(\d+)\.Downsample_0\.Conv_0\.", r"encoder.down_blocks.\1.downsample."),
    (r"^encoder\.DownsamplingBlock_(\d+)\.ResnetBlock_(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.@"),
    (r"^decoder\.UpsamplingBlock_(\d+)\.Upsample_0\.Conv_0\.", r"decoder.up_blocks.\1.upsample."),
    (r"^decoder\.UpsamplingBlock_(\d+)\.ResnetBlock_(\d+)\.", r"decoder.up_blocks.\1.resnets.\2.@"),
    (r"^(encoder|decoder)\.MidBlock_0\.ResnetBlock_(\d+)\.", r"\1.mid_block.resnets.\2.@"),
    (r"^quantize\.embeddings$", "quantize.codebook"),
    (r"^(quant_conv|post_quant_conv)\.(kernel|bias)$", r"\1.\2"),
))
_RESNET_PART = re.compile(r"@(GroupNorm_[01]|Conv_[012])\.(scale|bias|kernel)$")


def lwm_name_to_ours(name: str) -> str | None:
    """Our dotted name for one of LWM's dotted names (`encoder.Conv_0.kernel`), or None when the
    name is not part of an attention-free LWM VQGAN."""
    for pattern, replacement in _RULES:
        if pattern.search(name):
            converted = pattern.sub(replacement, name, count=1)
            if "@" in converted:
                match = _RESNET_PART.search(converted)
                if match is None:
                    return None
                converted = converted[:match.start()] + f"{_RESNET_PARTS[match.group(1)]}.{match.group(2)}"
            return converted
    return None


def lwm_tree_to_ours(tree: Mapping[str, object], source: str) -> dict[str, np.ndarray]:
    """`{our dotted name: float32 array}` for LWM's nested parameter dict (an optional `params`
    wrapper is removed). Raises `WeightMappingError` naming a key that is not LWM's."""
    if set(tree) == {"params"}:
        tree = tree["params"]  # type: ignore[assignment]
    converted: dict[str, np.ndarray] = {}
    for name, value in flatten_tree(tree).items():
        ours = lwm_name_to_ours(name)
        if ours is None:
            hint = " (LWM's VQGAN has no attention blocks)" if "AttnBlock" in name else ""
            raise WeightMappingError(f"{source}: {name.replace('.', '/')} is not a parameter of LWM's VQGAN{hint}")
        converted[ours] = np.asarray(value, dtype=np.float32)
    return converted


def infer_lwm_vq_config(tree: Mapping[str, object], resolution: int = 256) -> VQModelConfig:
    """The `VQModelConfig` an LWM parameter tree was built with, read from its shapes (LWM's
    file carries no config): widths, levels, residual blocks, z channels, codebook."""
    if set(tree) == {"params"}:
        tree = tree["params"]  # type: ignore[assignment]
    flat: dict[str, tuple[int, ...]] = {}

    def walk(node: Mapping[str, object], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}/")
            else:  # arrays, or shape-only leaves such as jax.ShapeDtypeStruct
                flat[f"{prefix}{key}"] = tuple(getattr(value, "shape", np.shape(value)))

    walk(tree, "")
    try:
        hidden = flat["encoder/Conv_0/kernel"][-1]
        levels = 1 + max(int(m.group(1)) for key in flat
                         if (m := re.match(r"encoder/DownsamplingBlock_(\d+)/", key)))
        res_blocks = 1 + max(int(m.group(1)) for key in flat
                             if (m := re.match(r"encoder/DownsamplingBlock_0/ResnetBlock_(\d+)/", key)))
        widths = [flat[f"encoder/DownsamplingBlock_{i}/ResnetBlock_0/Conv_0/kernel"][-1] for i in range(levels)]
        codes, dim = flat["quantize/embeddings"]
        z_channels = flat["encoder/Conv_1/kernel"][-1]
        in_channels = flat["encoder/Conv_0/kernel"][-2]
    except (KeyError, ValueError) as error:
        raise WeightMappingError(f"not an LWM VQGAN tree: {error} is missing") from None
    if any(width % hidden for width in widths):
        raise WeightMappingError(f"LWM VQGAN level widths {widths} are not multiples of {hidden}")
    return VQModelConfig(resolution=resolution, in_channels=int(in_channels), hidden_channels=int(hidden),
                         channel_mult=tuple(int(w // hidden) for w in widths), num_res_blocks=int(res_blocks),
                         z_channels=int(z_channels), codebook_size=int(codes), codebook_dim=int(dim),
                         mid_attention=False)


def load_lwm_vqgan(path: str | Path, config: VQModelConfig | None = None, *, resolution: int = 256) -> VQGAN:
    """Our VQGAN, with LWM's numerics, from LWM's `vqgan` file (a pickle of numpy or jax
    arrays, or a flax msgpack tree), read without executing code.

    `config` defaults to the shape read from the file; given, every array must fit it.
    """
    tree = load_param_file(path)
    if config is None:
        try:
            config = infer_lwm_vq_config(tree, resolution)
        except WeightMappingError as error:
            raise WeightMappingError(f"{path}: {error}") from None
    if config.mid_attention:
        raise WeightMappingError(f"{path}: LWM's VQGAN has no attention; set mid_attention: false")
    if config.encoder != "vqgan":
        raise WeightMappingError(f"{path}: LWM's VQGAN has the convolutional encoder; set encoder: vqgan")
    model = assign_weights(abstract_vqgan(config), lwm_tree_to_ours(tree, str(path)), str(path),
                           display=ours_name_to_lwm)
    return set_lwm_numerics(model)


_REVERSE_RESNET = {value: key for key, value in _RESNET_PARTS.items()}
_REVERSE: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"^encoder\.conv_in\.", "encoder/Conv_0/"),
    (r"^encoder\.conv_out\.", "encoder/Conv_1/"),
    (r"^encoder\.conv_norm_out\.", "encoder/GroupNorm_0/"),
    (r"^decoder\.conv_in\.", "decoder/Conv_0/"),
    (r"^decoder\.conv_out\.", "decoder/Conv_1/"),
    (r"^decoder\.conv_norm_out\.norm\.", "decoder/GroupNorm_0/"),
    (r"^encoder\.down_blocks\.(\d+)\.downsample\.", r"encoder/DownsamplingBlock_\1/Downsample_0/Conv_0/"),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder/DownsamplingBlock_\1/ResnetBlock_\2/@"),
    (r"^decoder\.up_blocks\.(\d+)\.upsample\.", r"decoder/UpsamplingBlock_\1/Upsample_0/Conv_0/"),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder/UpsamplingBlock_\1/ResnetBlock_\2/@"),
    (r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.", r"\1/MidBlock_0/ResnetBlock_\2/@"),
    (r"^quantize\.codebook$", "quantize/embeddings"),
    (r"^(quant_conv|post_quant_conv)\.(kernel|bias)$", r"\1/\2"),
))


def ours_name_to_lwm(name: str) -> str:
    """LWM's slash-separated key for one of our dotted names (the name itself if unknown)."""
    for pattern, replacement in _REVERSE:
        if pattern.search(name):
            converted = pattern.sub(replacement, name, count=1)
            if "@" in converted:
                head, tail = converted.split("@")
                part, leaf = tail.rsplit(".", 1)
                converted = f"{head}{_REVERSE_RESNET.get(part, part)}/{leaf}"
            return converted
    return name


def vqgan_to_lwm_tree(model: VQGAN) -> dict[str, object]:
    """The nested float32 numpy dict LWM's `VQGAN` class unpickles, for our model."""
    tree: dict[str, object] = {}
    for name, variable in variable_names(model).items():
        node = tree
        parts = ours_name_to_lwm(name).split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})  # type: ignore[assignment]
        node[parts[-1]] = np.asarray(variable[...], dtype=np.float32)  # type: ignore[index]
    return tree


def save_lwm_vqgan(model: VQGAN, path: str | Path) -> Path:
    """Writes `model` as LWM's `vqgan` file: `pickle.dump` of the nested numpy dict."""
    import pickle

    if model.config.mid_attention:
        raise WeightMappingError("LWM's VQGAN has no attention: a model with mid_attention cannot be written")
    if model.config.encoder != "vqgan":
        raise WeightMappingError("LWM's VQGAN has the convolutional encoder: a model with encoder: patch cannot be written")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(vqgan_to_lwm_tree(model), handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path
