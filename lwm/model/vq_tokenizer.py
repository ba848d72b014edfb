"""The VQ tokenizer at run time: frames to codes and back, and `lwm train-vq` checkpoints.

`load_vq_tokenizer(path)` (also `lwm.load_vq`) picks the reader from what `path` is:

- a directory written by `lwm train-vq` (a run directory or one `step_*` directory);
- a diffusers `VQModel` folder (config.json + safetensors): `lwm.model.formats.diffusers_vq`;
- a file: LWM's released `vqgan` pickle (`lwm.model.formats.lwm_vqgan`), with LWM's numerics.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.config import from_dict, read_yaml, to_dict
from lwm.config.vq import VQModelConfig
from lwm.errors import LwmError
from lwm.model.formats.diffusers_vq import load_diffusers_vqgan
from lwm.model.formats.lwm_vqgan import load_lwm_vqgan
from lwm.model.vqgan import VQGAN, abstract_vqgan, frames_to_pixels, pixels_to_frames

CHECKPOINT_CONFIG = "config.yaml"
CHECKPOINT_MODEL = "model"


class VQFileError(LwmError, FileNotFoundError):
    """A VQ tokenizer path does not exist or is not a tokenizer."""

# ---------------------------------------------------------------------------------------------
# This project's checkpoints and the tokenizer interface

def save_vq_checkpoint(directory: str | Path, model: VQGAN, run_config: Any | None = None) -> Path:
    """Writes `directory/model` (Orbax, `nnx.state(model)`) and `directory/config.yaml` (the run
    config, or just `{model: ...}`), so the tokenizer reloads from the directory alone."""
    import orbax.checkpoint as ocp
    import yaml


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


    directory = Path(directory).absolute()
    if not (directory / CHECKPOINT_CONFIG).is_file():
        latest = _latest_step_dir(directory)
        if latest is None:
            raise VQFileError(f"{directory}: no {CHECKPOINT_CONFIG} and no step_* checkpoints: not a VQ tokenizer")
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
            # Pad a short batch to the next power of two (at most batch_size): a few compiled
            # shapes serve every call, and a handful of frames is not computed as a full batch.
            target = min(self.batch_size, 1 << max(count - 1, 0).bit_length())
            if count < target:
                pad = np.zeros((target - count, *chunk.shape[1:]), chunk.dtype)
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


def load_vq_model(path: str | Path, config: VQModelConfig | None = None, *, resolution: int = 256) -> VQGAN:
    """The VQGAN stored at `path` (see the module docstring for the forms it may take).

    `config` is only used for an LWM `vqgan` file (whose shape is otherwise read from the
    arrays); the other forms carry their own config.
    """
    path = Path(path)
    if not path.exists():
        raise VQFileError(f"VQ tokenizer {path} does not exist")
    if path.is_file():
        return load_lwm_vqgan(path, config, resolution=config.resolution if config else resolution)
    if (path / "config.json").is_file():
        return load_diffusers_vqgan(path, resolution)
    return load_vq_checkpoint(path)


def load_vq_tokenizer(path: str | Path, *, batch_size: int = 32, resolution: int = 256) -> VQTokenizer:
    """The VQ tokenizer stored at `path`, whichever form it has (`decode` gives uint8 frames):

    - a directory written by `lwm train-vq` (run directory or one `step_*` directory);
    - a diffusers `VQModel` folder (config.json + safetensors; `resolution` sets the frame size);
    - a file: LWM's released `vqgan` pickle (shape read from the file, LWM's numerics).
    """
    return VQTokenizer(load_vq_model(path, resolution=resolution), batch_size)


class VQ(VQTokenizer):
    """The tokenizer `lwm.load_vq` returns: `encode(frames) -> int32 codes [N, h, w]` (frames
    uint8 `[N, H, W, 3]` or float in [-1, 1]) and `decode(codes) -> float32 frames in [-1, 1]`
    (clipped, as LWM's `decode` does); `decode_uint8` gives 8-bit frames."""

    def decode(self, codes_Nhw: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """float32 frames `[N, H, W, 3]` in [-1, 1] for codes `[N, h, w]`."""
        return np.clip(self.decode_pixels(codes_Nhw), -1.0, 1.0)

    def decode_uint8(self, codes_Nhw: np.ndarray) -> np.ndarray:
        """uint8 frames `[N, H, W, 3]` for codes `[N, h, w]` (rounded)."""
        return pixels_to_frames(self.decode_pixels(codes_Nhw))


def load_vq(path: str | Path, config: VQModelConfig | None = None, *, batch_size: int = 32) -> VQ:
    """The VQ tokenizer for an LWM `vqgan` file, a diffusers `VQModel` folder or a `lwm train-vq`
    directory; `config` overrides the shape of an LWM file (its `resolution` sets the frame size
    of a diffusers folder too)."""
    resolution = config.resolution if config is not None else 256
    return VQ(load_vq_model(path, config, resolution=resolution), batch_size)
