"""Inference configuration: `lwm chat`, `lwm generate` and `lwm needle`.

Sections shared by the three commands: `load` (model directory, tokenizers, dtype), `mesh`
(the device mesh; the KV cache is split over `sp`), `cache` (KV cache size and chunking) and
`sampling`. Each command adds its own section (`chat`, `generate`, `needle`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.data import ChatTemplateConfig
from lwm.config.errors import ConfigError
from lwm.config.model import MeshConfig

OptionalDType = Literal["", "float32", "bfloat16", "float16"]
GenerateMode = Literal["vision", "text"]


def _inference_mesh() -> MeshConfig:
    # Inference spends its memory on the KV cache: all devices split it along positions.
    return MeshConfig(dp=1, fsdp=1, tp=1, sp=-1)


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    """What to load: the model directory, the text and VQ tokenizers, the compute dtype."""

    model: str = ""  # an lwm model directory (training output, save_model, lwm convert hf2lwm)
    tokenizer: str = ""  # SentencePiece .model file; empty: lwm/assets/tokenizer.model
    vq: str = ""  # VQ tokenizer: lwm train-vq directory, diffusers VQModel folder or LWM vqgan file
    vq_resolution: int = 256  # frame size for diffusers / LWM VQ weights
    dtype: OptionalDType = ""  # compute dtype override; empty keeps the model's

    def validate(self) -> None:
        """Raises `ConfigError` for a non-positive VQ resolution."""
        if self.vq_resolution <= 0:
            raise ConfigError(f"load.vq_resolution={self.vq_resolution} must be positive (e.g. 256)")


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """The KV cache: positions per row, prefill chunk and attention key chunk."""

    max_len: int = 0  # positions per row; 0 sizes it for the prompt plus max_new_tokens
    prefill_chunk: int = 512  # prompt tokens run per prefill step
    key_chunk: int = 512  # cache positions per attention chunk (per device)
    dtype: OptionalDType = ""  # cache dtype; empty: the compute dtype

    def validate(self) -> None:
        """Raises `ConfigError` for negative sizes or non-positive chunks."""
        if self.max_len < 0:
            raise ConfigError(f"cache.max_len={self.max_len} must be >= 0 (0 sizes the cache automatically)")
        for name in ("prefill_chunk", "key_chunk"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cache.{name}={getattr(self, name)} must be positive (e.g. 512)")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Token sampling for text answers."""

    temperature: float = 0.0  # 0 is greedy
    top_k: int = 0  # 0 keeps every token
    top_p: float = 1.0  # 1 keeps every token
    max_new_tokens: int = 256
    stop_tokens: tuple[int, ...] = ()  # extra stop ids; EOS always stops
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the sampling field that is out of range."""
        if self.temperature < 0:
            raise ConfigError(f"sampling.temperature={self.temperature} must be >= 0 (0 is greedy)")
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k={self.top_k} must be >= 0 (0 keeps every token)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"sampling.top_p={self.top_p} must be in (0, 1] (1 keeps every token)")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"sampling.max_new_tokens={self.max_new_tokens} must be positive")


def _require_model(load: LoadConfig, command: str) -> None:
    if not load.model:
        raise ConfigError(
            f"load.model is empty: lwm {command} needs a model directory; pass --model DIR "
            f"(or --load.model DIR)"
        )


def _check_cpu_devices(value: int) -> None:
    if value < 0:
        raise ConfigError(f"cpu_devices={value} must be >= 0 (0 leaves the device count alone)")


@dataclasses.dataclass(frozen=True)
class ChatSection:
    """The conversation: a question, an optional video, interactive follow-ups."""

    question: str = ""
    video: str = ""  # a video file or image folder to ask about
    max_frames: int = 8  # frames sampled uniformly from the video
    interactive: bool = False  # keep asking follow-ups read from stdin
    template: ChatTemplateConfig = dataclasses.field(default_factory=ChatTemplateConfig)

    def validate(self) -> None:
        """Raises `ConfigError` for a non-positive frame count."""
        if self.max_frames <= 0:
            raise ConfigError(f"chat.max_frames={self.max_frames} must be positive (LWM uses 8)")


@dataclasses.dataclass(frozen=True)
class ChatRunConfig:
    """Root config of `lwm chat`."""

    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=_inference_mesh)
    cache: CacheConfig = dataclasses.field(default_factory=lambda: CacheConfig(max_len=4096))
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    chat: ChatSection = dataclasses.field(default_factory=ChatSection)
    cpu_devices: int = 0  # fake CPU devices to shard over on a CPU-only machine; 0: as is

    def validate(self) -> None:
        """Raises `ConfigError` when the model, the question or the VQ tokenizer is missing."""
        _require_model(self.load, "chat")
        _check_cpu_devices(self.cpu_devices)
        if not self.chat.question and not self.chat.interactive:
            raise ConfigError(
                "chat.question is empty and chat.interactive is false: pass --question TEXT or --interactive"
            )
        if self.chat.video and not self.load.vq:
            raise ConfigError(
                f"chat.video={self.chat.video!r} needs a VQ tokenizer: pass --load.vq PATH "
                f"(an lwm train-vq directory, a diffusers VQModel folder or LWM's vqgan file)"
            )
        if self.cache.max_len and self.cache.max_len <= self.sampling.max_new_tokens:
            raise ConfigError(
                f"cache.max_len={self.cache.max_len} leaves no room for a prompt next to "
                f"sampling.max_new_tokens={self.sampling.max_new_tokens}: raise cache.max_len"
            )


@dataclasses.dataclass(frozen=True)
class VisionStageConfig:
    """Guidance and sampling of one vision stage (the image, or a video's later frames)."""

    cfg_scale: float = 5.0
    temperature: float = 1.0
    top_k: int = 0  # 0 keeps every code
    top_p: float = 1.0

    def validate(self) -> None:
        """Raises `ConfigError` for out-of-range guidance or sampling settings."""
        if self.cfg_scale < 0:
            raise ConfigError(f"generate cfg_scale={self.cfg_scale} must be >= 0 (1 is no guidance)")
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError(
                f"generate stage sampling temperature={self.temperature}, top_k={self.top_k}, "
                f"top_p={self.top_p}: need temperature >= 0, top_k >= 0 and 0 < top_p <= 1"
            )


@dataclasses.dataclass(frozen=True)
class GenerateSection:
    """What to generate: images or video from text (`vision`), or a text continuation."""

    prompt: str = ""
    mode: GenerateMode = "vision"
    num_frames: int = 1
    output: str = "generated.png"  # .png (one file per frame), .gif or .mp4
    fps: float = 4.0
    image: VisionStageConfig = dataclasses.field(default_factory=VisionStageConfig)
    video: VisionStageConfig = dataclasses.field(default_factory=lambda: VisionStageConfig(top_k=100))

    def validate(self) -> None:
        """Raises `ConfigError` for an empty prompt, a bad frame count or output suffix."""
        if not self.prompt:
            raise ConfigError("generate.prompt is empty: pass --prompt TEXT")
        if self.num_frames <= 0:
            raise ConfigError(f"generate.num_frames={self.num_frames} must be positive")
        if self.fps <= 0:
            raise ConfigError(f"generate.fps={self.fps} must be positive (LWM writes 4)")
        suffix = self.output.rsplit(".", 1)[-1].lower() if "." in self.output else ""
        if self.mode == "vision" and suffix not in ("png", "jpg", "jpeg", "gif", "mp4", "webm"):
            raise ConfigError(
                f"generate.output={self.output!r}: use a .png (one file per frame), .gif or .mp4 path"
            )


@dataclasses.dataclass(frozen=True)
class GenerateRunConfig:
    """Root config of `lwm generate`."""

    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=_inference_mesh)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    generate: GenerateSection = dataclasses.field(default_factory=GenerateSection)
    cpu_devices: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` when vision generation lacks a VQ tokenizer."""
        _require_model(self.load, "generate")
        _check_cpu_devices(self.cpu_devices)
        if self.generate.mode == "vision" and not self.load.vq:
            raise ConfigError(
                "generate.mode=vision decodes codes to frames and needs a VQ tokenizer: pass "
                "--load.vq PATH (or --generate.mode text for a text continuation)"
            )


@dataclasses.dataclass(frozen=True)
class NeedleConfig:
    """The needle-in-a-haystack grid (LWM's procedure)."""

    haystack: str = ""  # any UTF-8 text file (a long book); repeated if shorter than the context
    context_min: int = 1000  # prompt tokens (template, haystack, needles and question)
    context_max: int = 4000
    context_intervals: int = 3  # context lengths: linspace(min, max, intervals)
    depth_intervals: int = 3  # needle depths: linspace(0, 100, intervals) percent
    rounds: int = 2  # repetitions per cell, each with its own city and number
    num_needles: int = 1  # needles per context; above 1: multi-needle
    retrieve: int = 1  # needles asked for (multi-needle)
    max_new_tokens: int = 32
    seed: int = 1234
    output_dir: str = "runs/needle"

    def validate(self) -> None:
        """Raises `ConfigError` naming the grid field that cannot work."""
        if not self.haystack:
            raise ConfigError("needle.haystack is empty: pass --needle.haystack FILE (any UTF-8 text)")
        for name in ("context_min", "context_intervals", "depth_intervals", "rounds", "num_needles",
                     "retrieve", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"needle.{name}={getattr(self, name)} must be positive")
        if self.context_max < self.context_min:
            raise ConfigError(
                f"needle.context_max={self.context_max} is below needle.context_min={self.context_min}"
            )
        if self.retrieve > self.num_needles:
            raise ConfigError(
                f"needle.retrieve={self.retrieve} exceeds needle.num_needles={self.num_needles}: "
                f"the question can only ask for needles that were inserted"
            )
        if self.num_needles > 1 and self.num_needles > self.depth_intervals:
            raise ConfigError(
                f"needle.num_needles={self.num_needles} needs as many distinct depths but "
                f"needle.depth_intervals={self.depth_intervals}: raise depth_intervals"
            )


@dataclasses.dataclass(frozen=True)
class NeedleRunConfig:
    """Root config of `lwm needle`."""

    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=_inference_mesh)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    needle: NeedleConfig = dataclasses.field(default_factory=NeedleConfig)
    cpu_devices: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` when the cache cannot hold the longest context."""
        _require_model(self.load, "needle")
        _check_cpu_devices(self.cpu_devices)
        needed = self.needle.context_max + self.needle.max_new_tokens
        if self.cache.max_len and self.cache.max_len < needed:
            raise ConfigError(
                f"cache.max_len={self.cache.max_len} cannot hold needle.context_max="
                f"{self.needle.context_max} plus needle.max_new_tokens={self.needle.max_new_tokens}; "
                f"set cache.max_len to at least {needed} or 0 (automatic)"
            )
