"""Loading VQGAN weights: diffusers `VQModel` folders, LWM's released `vqgan` file, and this
project's own tokenizer checkpoints; `load_vq_tokenizer` picks the right one from a path.

Nothing here executes code from a weight file: safetensors and msgpack hold only arrays, and
pickles go through `SafeUnpickler`, which refuses every global except numpy's array
reconstruction.

LWM's `vqgan` file is a flax (linen) parameter tree written by `flax.serialization` (msgpack),
optionally under a top-level `params` key. Its names follow LWM's `lwm/vqgan.py`, a port of
taming-transformers. The mapping assumed here (ours on the right):

    encoder.conv_in                        encoder.conv_in
    encoder.down_{i}.block_{j}.norm1/conv1/norm2/conv2
                                           encoder.down_blocks.{i}.resnets.{j}.<same>
    ....block_{j}.nin_shortcut             ....resnets.{j}.conv_shortcut
    encoder.down_{i}.downsample.conv       encoder.down_blocks.{i}.downsample
    {encoder,decoder}.mid.block_1/block_2  ....mid_block.resnets.0/1
    {encoder,decoder}.mid.attn_1.norm/q/k/v/proj_out
                                           ....mid_block.attention.norm/to_q/to_k/to_v/to_out
    encoder.norm_out / conv_out            encoder.conv_norm_out / conv_out
    quant_conv, post_quant_conv            same
    quantize.embeddings                    quantize.codebook
    decoder.up_{L}.block_{j}               decoder.up_blocks.{n-1-L}.resnets.{j}
    decoder.up_{L}.upsample.conv           decoder.up_blocks.{n-1-L}.upsample
    decoder.norm_out / conv_out            decoder.conv_norm_out / conv_out

(taming numbers decoder levels by resolution, level 0 being the full-resolution output level,
while diffusers and this module number up blocks in the order they run). Convolution kernels are
already HWIO; the attention's 1x1-conv q/k/v/proj_out kernels become dense matrices. A file
whose names already follow this module's layout loads as is.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.config.vq import VQModelConfig
from lwm.errors import LwmError
from lwm.model.vqgan import VQGAN, abstract_vqgan, frames_to_pixels, pixels_to_frames

CHECKPOINT_CONFIG = "config.yaml"
CHECKPOINT_MODEL = "model"


class UnsafeFileError(LwmError, pickle.UnpicklingError):
    """A parameter file asked to load something other than plain arrays and dicts."""


class WeightMappingError(LwmError, ValueError):
    """A weight file's names or shapes do not fit the model built from its config."""


# ---------------------------------------------------------------------------------------------
# Safe reading of parameter files

_ALLOWED_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"),
})


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays, dicts, lists and scalars, and refuses every other
    global, so a pickle cannot run code (no `os.system`, no arbitrary constructors)."""

    def find_class(self, module: str, name: str) -> Any:
        """Returns the global only when it is on the numpy-array allow list."""
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"refusing to load global {module}.{name}: only numpy arrays and plain containers "
            f"are allowed in a parameter file"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids (torch's storage references, for example) are refused."""
        raise UnsafeFileError(f"refusing persistent id {pid!r}: not a plain array file")


def _check_plain_tree(tree: Any, path: str, where: str) -> Any:
    """Converts a loaded tree to nested dicts of numeric numpy arrays, refusing anything else."""
    if isinstance(tree, Mapping):
        return {str(key): _check_plain_tree(value, f"{path}{key}.", where) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(index): _check_plain_tree(value, f"{path}{index}.", where)
                for index, value in enumerate(tree)}
    if isinstance(tree, (np.ndarray, np.generic, int, float)) and not isinstance(tree, bool):
        array = np.asarray(tree)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number)):
            raise UnsafeFileError(f"{where}: {path.rstrip('.')} has dtype {array.dtype}, not numeric")
        return array
    raise UnsafeFileError(
        f"{where}: {path.rstrip('.') or 'the top level'} is a {type(tree).__name__}; "
        f"expected nested dicts of arrays"
    )


def load_param_file(path: str | Path) -> dict[str, Any]:
    """Reads a nested dict of arrays from a flax msgpack file or a pickle, without running code.

    The format is recognised from the first byte (pickles start with 0x80). Raises
    `UnsafeFileError` for pickles that reference anything but numpy arrays, and `ValueError`
    naming the file when it is neither format.
    """
    path = Path(path)
    data = path.read_bytes()
    if data[:1] == b"\x80":
        try:
            tree = SafeUnpickler(io.BytesIO(data)).load()
        except UnsafeFileError as error:
            raise UnsafeFileError(f"{path}: {error}") from None
        except Exception as error:  # truncated or corrupt pickles raise many types
            raise ValueError(f"{path}: not a readable pickle: {error}") from error
    else:
        from flax import serialization

        try:
            tree = serialization.msgpack_restore(data)
        except Exception as error:
            raise ValueError(
                f"{path}: neither a pickle nor a flax msgpack file ({error})"
            ) from error
    return _check_plain_tree(tree, "", str(path))


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts to `{"a.b.c": array}`."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, name + "."))
        else:
            flat[name] = np.asarray(value)
    return flat


# ---------------------------------------------------------------------------------------------
# Assigning named arrays to the NNX model

def _iter_variables(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Variable]]:
    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.Variable):
            yield path, value


def assign_weights(model: VQGAN, weights: Mapping[str, np.ndarray], source: str) -> VQGAN:
    """Copies `{our dotted name: array}` into the model (which may be abstract, as from
    `abstract_vqgan`), checking that every variable is given
    exactly once with its shape; raises `WeightMappingError` listing what is missing or extra."""
    variables = {".".join(str(part) for part in path): variable
                 for path, variable in _iter_variables(model)}
    missing = sorted(set(variables) - set(weights))
    extra = sorted(set(weights) - set(variables))
    if missing or extra:
        raise WeightMappingError(
            f"{source}: weights do not match the model built from its config; "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}"
        )
    for name, variable in variables.items():
        array = np.asarray(weights[name])
        if array.shape != variable.shape:
            raise WeightMappingError(
                f"{source}: {name} has shape {array.shape}, the model expects {variable.shape}"
            )
        variable.set_value(jnp.asarray(array, dtype=variable.dtype))
    return model


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


# ---------------------------------------------------------------------------------------------
# LWM's released vqgan parameter file

def lwm_params_to_ours(flat: Mapping[str, np.ndarray], config: VQModelConfig) -> dict[str, np.ndarray]:
    """Renames LWM / taming-style flax parameter names to ours (see the module docstring)."""
    levels = len(config.channel_mult)
    converted: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        name = key[len("params."):] if key.startswith("params.") else key
        name = re.sub(r"^encoder\.down_(\d+)\.block_(\d+)\.", r"encoder.down_blocks.\1.resnets.\2.", name)
        name = re.sub(r"^encoder\.down_(\d+)\.downsample\.conv\.", r"encoder.down_blocks.\1.downsample.", name)
        name = re.sub(r"^decoder\.up_(\d+)\.",
                      lambda match: f"decoder.up_blocks.{levels - 1 - int(match.group(1))}.", name)
        name = re.sub(r"\.mid\.block_1\.", ".mid_block.resnets.0.", name)
        name = re.sub(r"\.mid\.block_2\.", ".mid_block.resnets.1.", name)
        name = re.sub(r"\.block_(\d+)\.", r".resnets.\1.", name)
        name = re.sub(r"\.upsample\.conv\.", ".upsample.", name)
        name = re.sub(r"\.mid\.attn_1\.", ".mid_block.attention.", name)
        name = re.sub(r"\.nin_shortcut\.", ".conv_shortcut.", name)
        name = re.sub(r"\.attention\.q\.", ".attention.to_q.", name)
        name = re.sub(r"\.attention\.k\.", ".attention.to_k.", name)
        name = re.sub(r"\.attention\.v\.", ".attention.to_v.", name)
        name = re.sub(r"\.attention\.proj_out\.", ".attention.to_out.", name)
        name = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", name)
        name = re.sub(r"^quantize\.embeddings?$", "quantize.codebook", name)
        name = re.sub(r"\.(norm1|norm2)\.(scale|bias)$", r".\1.norm.\2", name)
        name = re.sub(r"\.attention\.norm\.(scale|bias)$", r".attention.norm.norm.\1", name)
        name = re.sub(r"^decoder\.conv_norm_out\.(scale|bias)$", r"decoder.conv_norm_out.norm.\1", name)
        value = np.asarray(value, dtype=np.float32)
        if ".attention.to_" in name and name.endswith(".kernel") and value.ndim == 4:
            value = value.reshape(value.shape[-2], value.shape[-1])
        converted[name] = value
    return converted


def load_lwm_vqgan(path: str | Path, config: VQModelConfig | None = None) -> VQGAN:
    """Builds our VQGAN from LWM's released `vqgan` parameter file (flax msgpack or a pickle of
    arrays), read through the safe loader. `config` defaults to the aMUSEd f16 architecture."""
    config = config or VQModelConfig()
    flat = flatten_tree(load_param_file(path))
    return assign_weights(abstract_vqgan(config), lwm_params_to_ours(flat, config), str(path))


# ---------------------------------------------------------------------------------------------
# This project's checkpoints and the tokenizer interface

def save_vq_checkpoint(directory: str | Path, model: VQGAN, run_config: Any | None = None) -> Path:
    """Writes `directory/model` (Orbax, `nnx.state(model)`) and `directory/config.yaml` (the run
    config, or just `{model: ...}`), so the tokenizer reloads from the directory alone."""
    import orbax.checkpoint as ocp
    import yaml

    from lwm.config import to_dict

    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / CHECKPOINT_MODEL, nnx.state(model), force=True)
    checkpointer.wait_until_finished()
    # The config is written last: a step directory with a config.yaml is complete.
    config_data = to_dict(run_config) if run_config is not None else {"model": to_dict(model.config)}
    (directory / CHECKPOINT_CONFIG).write_text(yaml.safe_dump(config_data, sort_keys=False))
    return directory


def _latest_step_dir(run_dir: Path) -> Path | None:
    steps = [child for child in run_dir.glob("step_*") if (child / CHECKPOINT_CONFIG).is_file()]
    return max(steps, key=lambda child: int(child.name.split("_")[-1])) if steps else None


def load_vq_checkpoint(directory: str | Path) -> VQGAN:
    """Restores a VQGAN saved by `save_vq_checkpoint` (a step directory, or a run directory whose
    latest `step_*` is taken)."""
    import orbax.checkpoint as ocp

    from lwm.config import from_dict, read_yaml

    directory = Path(directory).absolute()
    if not (directory / CHECKPOINT_CONFIG).is_file():
        latest = _latest_step_dir(directory)
        if latest is None:
            raise FileNotFoundError(f"{directory}: no {CHECKPOINT_CONFIG} and no step_* checkpoints")
        directory = latest
    config_file = directory / CHECKPOINT_CONFIG
    data = read_yaml(config_file)
    if "model" not in data:
        raise ValueError(f"{config_file}: no 'model' section describing the VQGAN")
    config = from_dict(VQModelConfig, data["model"], f"{config_file} (model)")
    graphdef, abstract_state = nnx.split(abstract_vqgan(config))
    state = ocp.StandardCheckpointer().restore(directory / CHECKPOINT_MODEL, abstract_state)
    return nnx.merge(graphdef, state)


class VQTokenizer:
    """Frames to VQ codes and back, batched and compiled once per batch size.

    `encode(frames)` takes `[N, H, W, 3]` uint8 (or float in [-1, 1]) frames whose sides are
    multiples of the downsampling factor (normally `resolution` x `resolution`) and returns
    int32 codes `[N, h, w]`; `decode(codes)` returns uint8 frames.
    """

    def __init__(self, model: VQGAN, batch_size: int = 32):
        self.model = model
        self.config: VQModelConfig = model.config
        self.batch_size = batch_size
        graphdef, state = nnx.split(model)
        self._state = state
        self._encode = jax.jit(lambda state, pixels: nnx.merge(graphdef, state).encode(pixels))
        self._decode = jax.jit(lambda state, codes: nnx.merge(graphdef, state).decode(codes))

    @property
    def resolution(self) -> int:
        """Frame side length the model was configured for."""
        return self.config.resolution

    @property
    def codebook_size(self) -> int:
        """Number of distinct codes."""
        return self.config.codebook_size

    @property
    def codes_per_side(self) -> int:
        """Side of one frame's code grid at `resolution`."""
        return self.config.codes_per_side

    @property
    def tokens_per_frame(self) -> int:
        """Codes per frame at `resolution`."""
        return self.config.tokens_per_frame

    def _batched(self, inputs: np.ndarray, run: Callable[[Any, jax.Array], jax.Array]) -> np.ndarray:
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            count = len(chunk)
            if count < self.batch_size:  # pad so one compiled shape serves every batch
                pad = np.zeros((self.batch_size - count, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            outputs.append(np.asarray(run(self._state, jnp.asarray(chunk)))[:count])
        return np.concatenate(outputs)

    def encode(self, frames_NHWC: np.ndarray) -> np.ndarray:
        """Codes `[N, h, w]` int32 for uint8 frames `[N, H, W, 3]` (or float in [-1, 1])."""
        frames = np.asarray(frames_NHWC)
        if frames.ndim != 4 or frames.shape[-1] != self.config.in_channels:
            raise ValueError(
                f"encode expects frames [N, H, W, {self.config.in_channels}], got {frames.shape}"
            )
        factor = self.config.downsample_factor
        if frames.shape[1] % factor or frames.shape[2] % factor:
            raise ValueError(
                f"frame size {frames.shape[1]}x{frames.shape[2]} is not a multiple of the "
                f"downsampling factor {factor}; resize to {self.resolution}x{self.resolution}"
            )
        if len(frames) == 0:
            side_h, side_w = frames.shape[1] // factor, frames.shape[2] // factor
            return np.zeros((0, side_h, side_w), np.int32)
        pixels = np.asarray(frames_to_pixels(frames))
        return self._batched(pixels, self._encode).astype(np.int32)

    def decode(self, codes_Nhw: np.ndarray) -> np.ndarray:
        """uint8 frames `[N, H, W, 3]` for codes `[N, h, w]`."""
        return pixels_to_frames(self.decode_pixels(codes_Nhw))

    def decode_pixels(self, codes_Nhw: np.ndarray) -> np.ndarray:
        """float32 pixels (about [-1, 1], unclipped) `[N, H, W, 3]` for codes `[N, h, w]`."""
        codes = np.asarray(codes_Nhw)
        if codes.ndim != 3:
            raise ValueError(f"decode expects codes [N, h, w], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}); got [{codes.min()}, {codes.max()}]"
            )
        if len(codes) == 0:
            side_h, side_w = (side * self.config.downsample_factor for side in codes.shape[1:])
            return np.zeros((0, side_h, side_w, self.config.in_channels), np.float32)
        return self._batched(codes.astype(np.int32), self._decode)


def load_vq_tokenizer(path: str | Path, *, batch_size: int = 32, resolution: int = 256) -> VQTokenizer:
    """The VQ tokenizer stored at `path`, whichever form it has:

    - a directory written by `lwm train-vq` (run directory or one `step_*` directory);
    - a diffusers `VQModel` folder (config.json + safetensors; `resolution` sets the frame size);
    - a file: LWM's released `vqgan` parameters (aMUSEd f16 architecture, 256x256 frames).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"VQ tokenizer {path} does not exist")
    if path.is_file():
        model = load_lwm_vqgan(path, VQModelConfig(resolution=resolution))
    elif (path / "config.json").is_file():
        model = load_diffusers_vqgan(path, resolution)
    else:
        model = load_vq_checkpoint(path)
    return VQTokenizer(model, batch_size)
