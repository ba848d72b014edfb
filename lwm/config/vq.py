"""VQ video tokenizer configuration: the VQGAN's shape and a tokenizer training run.

`VQModelConfig` describes the aMUSEd / open-MUSE VQGAN family as diffusers' `VQModel` builds
it (the one LWM uses is `configs/vq/amused-f16.yaml`); `VQTrainRunConfig` is the root config of
`lwm train-vq`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.errors import ConfigError

NormType = Literal["group", "spatial"]
EncoderType = Literal["vqgan", "patch"]
ComputeDType = Literal["float32", "bfloat16"]


@dataclasses.dataclass(frozen=True)
class VQModelConfig:
    """Shape of a VQGAN: encoder, vector quantizer and decoder.

    Field names follow the taming-transformers / LWM naming; the diffusers `VQModel` names are:
    `hidden_channels * channel_mult` = `block_out_channels`, `num_res_blocks` =
    `layers_per_block`, `z_channels` = `latent_channels`, `codebook_size` =
    `num_vq_embeddings`, `codebook_dim` = `vq_embed_dim`, `mid_attention` =
    `mid_block_add_attention`.
    """

    resolution: int = 256
    in_channels: int = 3
    hidden_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 6)
    num_res_blocks: int = 2
    z_channels: int = 64
    codebook_size: int = 8192
    codebook_dim: int = 64
    norm_num_groups: int = 32
    # "group": GroupNorm everywhere (aMUSEd). "spatial": the decoder's norms are conditioned on
    # the quantized latents (MoVQ style); needs z_channels == codebook_dim.
    norm_type: NormType = "group"
    mid_attention: bool = False
    # "vqgan": the aMUSEd encoder (3x3 convs, frame-wide GroupNorm: a code depends on shapes far
    # from its patch). "patch": each code is a function of its own f x f pixel patch only (one
    # f-stride conv, then per-position residual MLPs with LayerNorm), so a code changes only where
    # its pixels do. The decoder is the same for both; only "vqgan" imports LWM/diffusers weights.
    encoder: EncoderType = "vqgan"
    # Compute dtype of the convolutions; parameters stay float32.
    dtype: ComputeDType = "float32"

    def validate(self) -> None:
        """Raises `ConfigError` naming the first field that cannot build a working VQGAN."""
        for name in ("resolution", "in_channels", "hidden_channels", "num_res_blocks",
                     "z_channels", "codebook_size", "codebook_dim", "norm_num_groups"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vq model.{name}={getattr(self, name)} must be positive")
        if self.encoder not in ("vqgan", "patch"):
            raise ConfigError(f"vq model.encoder={self.encoder!r} must be 'vqgan' or 'patch'")
        if not self.channel_mult or any(mult <= 0 for mult in self.channel_mult):
            raise ConfigError(
                f"vq model.channel_mult={list(self.channel_mult)} must be a non-empty list of "
                f"positive multipliers, one per resolution level (e.g. [1, 2, 2, 4, 6])"
            )
        if self.resolution % self.downsample_factor:
            raise ConfigError(
                f"vq model.resolution={self.resolution} is not divisible by the downsampling "
                f"factor 2**(len(channel_mult)-1)={self.downsample_factor}; use a multiple of "
                f"{self.downsample_factor}"
            )
        groups = self.norm_num_groups
        for level, mult in enumerate(self.channel_mult):
            channels = self.hidden_channels * mult
            if channels % groups:
                raise ConfigError(
                    f"vq model.hidden_channels*channel_mult[{level}]={channels} is not divisible by "
                    f"model.norm_num_groups={groups}: GroupNorm splits channels into equal groups"
                )
            if self.norm_type == "spatial" and channels % 32:
                raise ConfigError(
                    f"vq model.norm_type='spatial' uses GroupNorm with 32 groups (as diffusers "
                    f"hard-codes it) but level {level} has {channels} channels; use multiples of 32"
                )
        if self.norm_type == "spatial" and self.z_channels != self.codebook_dim:
            raise ConfigError(
                f"vq model.norm_type='spatial' conditions the decoder on the quantized latents, so "
                f"model.z_channels={self.z_channels} must equal model.codebook_dim={self.codebook_dim}"
            )

    @property
    def has_vision(self) -> bool:
        """Always False: this is the tokenizer, not a language model with LWM's vision vocabulary
        (the shared cross-section checks find sections by name and ask every `model` this)."""
        return False

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each side (16 for the f16 model)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def codes_per_side(self) -> int:
        """Height (= width) of one frame's code grid."""
        return self.resolution // self.downsample_factor

    @property
    def tokens_per_frame(self) -> int:
        """Number of codes per frame (256 for 256x256 frames with the f16 model)."""
        return self.codes_per_side**2


@dataclasses.dataclass(frozen=True)
class VQDataConfig:
    """Where training frames come from: the user's own videos, sampled with `lwm.data.video`.

    `paths` lists video files (mp4, webm, gif, ...), folders of videos, or folders of images (one
    folder of png/jpg frames = one video). Frames are resized on the short side and center
    cropped to `model.resolution`.
    """

    paths: tuple[str, ...] = ()
    frames_per_video: int = 16
    # When set, frames are sampled at this rate (capped at frames_per_video) instead of uniformly.
    fps: float | None = None
    max_videos: int | None = None
    horizontal_flip: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` for empty or non-positive sampling settings."""
        if self.frames_per_video <= 0:
            raise ConfigError(f"vq data.frames_per_video={self.frames_per_video} must be positive")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"vq data.fps={self.fps} must be positive (or null: uniform sampling)")
        if self.max_videos is not None and self.max_videos <= 0:
            raise ConfigError(f"vq data.max_videos={self.max_videos} must be positive or null")


@dataclasses.dataclass(frozen=True)
class VQTrainConfig:
    """Optimisation of the tokenizer.

    The codebook is learned by exponential moving averages of the encoder outputs assigned to
    each code (VQ-VAE-2 style), not by gradients; the encoder gets the straight-through gradient
    plus `commitment_cost * ||z - sg(e)||^2`. Codes unused for `restart_every` steps are
    re-seeded from recent encoder outputs.
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    commitment_cost: float = 0.25
    ema_decay: float = 0.95
    restart_every: int = 50
    seed: int = 0
    log_every: int = 10

    def validate(self) -> None:
        """Raises `ConfigError` naming the first out-of-range training setting."""
        for name in ("steps", "batch_size", "restart_every", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vq train.{name}={getattr(self, name)} must be positive")
        if self.lr <= 0:
            raise ConfigError(f"vq train.lr={self.lr} must be positive")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "l1_weight", "l2_weight",
                     "commitment_cost"):
            if getattr(self, name) < 0:
                raise ConfigError(f"vq train.{name}={getattr(self, name)} must not be negative")
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise ConfigError("vq train.l1_weight and train.l2_weight are both 0: no reconstruction loss")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"vq train.ema_decay={self.ema_decay} must lie strictly between 0 and 1")


@dataclasses.dataclass(frozen=True)
class VQCheckpointConfig:
    """Where and how often the tokenizer is saved (Orbax, with the config beside as YAML)."""

    dir: str = "runs/vq"
    every: int = 500
    keep: int = 2
    # Continue from the latest step_* in `dir` when there is one.
    resume: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` for a missing directory or non-positive intervals."""
        if not self.dir:
            raise ConfigError("vq checkpoint.dir is empty: name the run directory")
        if self.every <= 0 or self.keep <= 0:
            raise ConfigError(
                f"vq checkpoint.every={self.every} and checkpoint.keep={self.keep} must be positive"
            )


@dataclasses.dataclass(frozen=True)
class VQTrainRunConfig:
    """Root config of `lwm train-vq`."""

    model: VQModelConfig = dataclasses.field(default_factory=VQModelConfig)
    data: VQDataConfig = dataclasses.field(default_factory=VQDataConfig)
    train: VQTrainConfig = dataclasses.field(default_factory=VQTrainConfig)
    checkpoint: VQCheckpointConfig = dataclasses.field(default_factory=VQCheckpointConfig)

