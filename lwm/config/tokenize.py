"""Configuration of `lwm tokenize`: a video manifest into a token store."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.data import DataConfig
from lwm.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """A manifest (JSONL: a video path or frame folder per line, plus text fields) to tokenize.

    Videos are sampled (`num_frames` uniformly, or at `fps`), VQ-encoded into
    `data.vision_field` as flat codes, written as LWM-format JSONL to `codes_path`, then
    tokenized with `data` (its `fields` template says which fields carry loss) into
    `data.store_path`. Both phases resume where an interrupted run stopped.
    """

    data: DataConfig = dataclasses.field(
        default_factory=lambda: DataConfig(format="vision_text", fields="[vision],caption")
    )
    manifest: str = ""
    video_field: str = "video"
    vq_tokenizer: str = ""
    num_frames: int = 8
    fps: float = 0.0
    workers: int = 4
    vq_batch_size: int = 32
    # `both`: every video also gives the mirror of the template (caption->video beside
    # video->caption), so vision tokens carry loss; `fields`: the template alone.
    directions: Literal["both", "fields"] = "both"
    codes_path: str = ""
    overwrite: bool = False
    progress_bar: bool = True

    def validate(self) -> None:
        """Raises `ConfigError` naming the missing or impossible field."""
        if not self.manifest:
            raise ConfigError("manifest is empty: name the JSONL of videos and text fields to tokenize")
        if not self.vq_tokenizer:
            raise ConfigError("vq_tokenizer is empty: name a `lwm train-vq` run or a VQGAN folder")
        if not self.data.store_path:
            raise ConfigError("data.store_path is empty: name the directory for the token store")
        if self.data.format != "vision_text":
            raise ConfigError(f"data.format={self.data.format!r}: tokenizing videos needs vision_text")
        if self.num_frames <= 0 and self.fps <= 0:
            raise ConfigError("set num_frames (frames per video) or fps (frames per second) above 0")
        if self.workers <= 0 or self.vq_batch_size <= 0:
            raise ConfigError("workers and vq_batch_size must be positive")

    @property
    def resolved_codes_path(self) -> str:
        """Where the VQ-code JSONL goes (beside the store by default)."""
        return self.codes_path or self.data.store_path.rstrip("/") + ".codes.jsonl"
