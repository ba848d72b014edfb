"""LWM's vision vocabulary: the one description that models, data and decoding share.

A VQ tokenizer with `codebook_size` codes turns a frame into `tokens_per_frame` codes. In the
vision vocabulary the codes are `0 .. codebook_size-1`, then `<eof>` = `codebook_size` ends a
frame and `<eov>` = `codebook_size + 1` ends the vision span (LWM: 8192 codes, 256 per frame,
8192 / 8193, with a table of 8448 rows that leaves spare ids).
"""

from __future__ import annotations

import dataclasses
import math

from lwm.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class VisionVocab:
    """Codebook size and codes per frame of the VQ tokenizer whose codes a model reads."""

    codebook_size: int = 8192
    tokens_per_frame: int = 256

    def validate(self) -> None:
        """Raises `ConfigError` for a non-positive size."""
        for name in ("codebook_size", "tokens_per_frame"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vision.{name}={getattr(self, name)} must be positive")

    @property
    def eof_token(self) -> int:
        """Vision id that ends a frame."""
        return self.codebook_size

    @property
    def eov_token(self) -> int:
        """Vision id that ends a vision span."""
        return self.codebook_size + 1

    @property
    def min_vocab_size(self) -> int:
        """Smallest vision vocabulary holding the codes plus `<eof>` and `<eov>`."""
        return self.codebook_size + 2

    @property
    def grid_side(self) -> int:
        """Codes per side of a frame's square code grid (16 for LWM's 256)."""
        side = math.isqrt(self.tokens_per_frame)
        if side * side != self.tokens_per_frame:
            raise ConfigError(f"vision.tokens_per_frame={self.tokens_per_frame} is not a square grid of codes")
        return side


class ReadsVisionVocab:
    """Shortcuts for a config section holding a `vision: VisionVocab` field (model, data)."""

    vision: VisionVocab

    @property
    def codebook_size(self) -> int:
        """VQ codes in the vision vocabulary (`vision.codebook_size`)."""
        return self.vision.codebook_size

    @property
    def tokens_per_frame(self) -> int:
        """VQ codes per frame (`vision.tokens_per_frame`)."""
        return self.vision.tokens_per_frame

    @property
    def eof_token(self) -> int:
        """Vision-vocabulary id that ends a frame."""
        return self.vision.eof_token

    @property
    def eov_token(self) -> int:
        """Vision-vocabulary id that ends a vision span."""
        return self.vision.eov_token
