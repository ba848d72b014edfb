"""Configuration of `lwm serve`, the OpenAI-compatible server.

Sections: `load`, `mesh` and `cache` as for the other inference commands (`cache.max_len` is
the context of one slot: prompt plus answer), `chat` (the chat template), and `serve` (address,
key, limits, slots and queue).
"""

from __future__ import annotations

import dataclasses

from lwm.config.data import ChatTemplateConfig
from lwm.config.infer import CacheConfig, LoadConfig
from lwm.config.loading import ConfigError
from lwm.config.model import MeshConfig


def _serving_mesh() -> MeshConfig:
    # The KV cache is what grows: every device splits the slots' positions.
    return MeshConfig(dp=1, fsdp=1, tp=1, sp=-1)


@dataclasses.dataclass(frozen=True)
class ServerSection:
    """Address, access, limits and batching of the server."""

    host: str = "127.0.0.1"  # only this machine by default; 0.0.0.0 exposes the server
    port: int = 8000
    model_name: str = "lwm"  # the model id clients name (GET /v1/models)
    api_key: str = ""  # required as `Authorization: Bearer KEY` when set
    api_key_env: str = "LWM_API_KEY"  # or read the key from this environment variable
    media_root: str = ""  # image/video paths must lie under it; empty: data: URLs only
    max_body_bytes: int = 64 * 1024 * 1024  # larger request bodies get 413
    max_frames: int = 16  # frames per request over all its images and videos (413 above)
    video_frames: int = 8  # frames sampled uniformly from each video (LWM uses 8)
    slots: int = 8  # requests decoded together (rows of the KV cache)
    queue_size: int = 64  # requests that may wait for a slot (429 above)
    default_max_tokens: int = 16  # /v1/completions without max_tokens (OpenAI's default)
    log_level: str = "warning"

    def validate(self) -> None:
        """Raises `ConfigError` naming the field that is out of range."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"serve.port={self.port} must be in 1..65535")
        for name in ("max_body_bytes", "max_frames", "video_frames", "slots", "queue_size", "default_max_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serve.{name}={getattr(self, name)} must be positive")
        if self.video_frames > self.max_frames:
            raise ConfigError(
                f"serve.video_frames={self.video_frames} exceeds serve.max_frames={self.max_frames}: "
                f"no video would fit in a request"
            )
        if not self.model_name:
            raise ConfigError("serve.model_name is empty: name the model clients ask for (e.g. lwm)")


@dataclasses.dataclass(frozen=True)
class ServeRunConfig:
    """Root config of `lwm serve`."""

    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=_serving_mesh)
    cache: CacheConfig = dataclasses.field(default_factory=lambda: CacheConfig(max_len=4096))
    chat: ChatTemplateConfig = dataclasses.field(default_factory=ChatTemplateConfig)
    serve: ServerSection = dataclasses.field(default_factory=ServerSection)
    cpu_devices: int = 0  # fake CPU devices to shard over on a CPU-only machine; 0: as is

    def validate(self) -> None:
        """Raises `ConfigError` when the model is missing or the context is unset."""
        if not self.load.model:
            raise ConfigError("load.model is empty: lwm serve needs a model directory; pass --model DIR")
        if self.cache.max_len <= 0:
            raise ConfigError(
                f"cache.max_len={self.cache.max_len}: lwm serve needs the context of one slot "
                f"(prompt plus answer), e.g. 4096"
            )
        if self.cpu_devices < 0:
            raise ConfigError(f"cpu_devices={self.cpu_devices} must be >= 0 (0 leaves the device count alone)")
