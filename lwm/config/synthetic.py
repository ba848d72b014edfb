"""Configuration of the procedurally generated world (`lwm.data.synthetic`).

The world has two parts, both deterministic for `seed`: short videos of coloured shapes that
move with constant velocity and bounce off the walls and off each other (with captions and
question/answer pairs read from the simulation), and long filler documents with hidden passkey
"needles" for retrieval. Sizes are in pixels, speeds in pixels per frame.
"""

from __future__ import annotations

import dataclasses
import math

from lwm.config.errors import ConfigError

# Names and RGB values of the colours a shape may have; `SyntheticWorldConfig.colours` picks
# from these. Far apart in RGB so that a tiny VQ tokenizer keeps them apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "cyan": (40, 215, 225),
    "magenta": (215, 50, 215),
    "white": (240, 240, 240),
    "orange": (245, 140, 30),
}
SHAPE_KINDS = ("square", "circle")
# The count question's answers are number words, so a video holds at most this many shapes.
MAX_SHAPES = 6
# Needles of one document name distinct cities; `lwm.data.synthetic.CITIES` has at least this many.
MAX_NEEDLES = 24


@dataclasses.dataclass(frozen=True)
class SyntheticWorldConfig:
    """Sizes of the synthetic world: videos of bouncing shapes and passkey documents.

    Video `i` and document `i` each draw from their own random stream (`seed`, kind, `i`), so
    changing `num_videos` or `num_documents` does not change the others. The last
    `round(held_out_fraction * n)` videos and documents form the held-out split.
    """

    seed: int = 0
    # Videos.
    num_videos: int = 64
    num_frames: int = 8
    frame_size: int = 32
    min_shapes: int = 1
    max_shapes: int = 3
    # Side of a square / diameter of a circle, inclusive range in pixels.
    shape_size: tuple[int, int] = (8, 12)
    # Speed along the main axis of motion, inclusive range in pixels per frame; the other axis
    # moves strictly slower, so every shape has one clear direction (left/right/up/down).
    speed: tuple[int, int] = (1, 3)
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta")
    kinds: tuple[str, ...] = SHAPE_KINDS
    # Wanted share of videos with two or more shapes in which shapes collide, so that the
    # yes/no collision question is balanced; initial states are redrawn until they match.
    collision_fraction: float = 0.5
    # Initial states tried per video before settling for the best one (misses are counted).
    max_attempts: int = 64
    # Documents.
    num_documents: int = 16
    document_sentences: int = 60
    # When set, documents are about this many characters long instead of `document_sentences`.
    document_chars: int | None = None
    # Needles per document: 1 gives single-passkey documents, more gives multi-needle ones.
    needles_per_document: int = 1
    held_out_fraction: float = 0.1

    def validate(self) -> None:
        """Raises `ConfigError` naming the first field that cannot make a working world."""
        if self.seed < 0:
            raise ConfigError(f"synthetic.seed={self.seed} must be zero or positive")
        for name in ("num_videos", "num_documents"):
            if getattr(self, name) < 0:
                raise ConfigError(f"synthetic.{name}={getattr(self, name)} must be zero or positive")
        if self.num_frames < 2:
            raise ConfigError(f"synthetic.num_frames={self.num_frames}: a video needs at least 2 "
                              f"frames to show motion")
        if self.frame_size < 8 or self.frame_size % 2:
            raise ConfigError(f"synthetic.frame_size={self.frame_size} must be an even number of "
                              f"pixels, at least 8 (video encoders need even sides)")
        if not 1 <= self.min_shapes <= self.max_shapes <= MAX_SHAPES:
            raise ConfigError(
                f"synthetic.min_shapes={self.min_shapes}, max_shapes={self.max_shapes}: need "
                f"1 <= min_shapes <= max_shapes <= {MAX_SHAPES}")
        self._validate_sizes()
        unknown = [colour for colour in self.colours if colour not in PALETTE]
        if unknown or len(set(self.colours)) != len(self.colours):
            raise ConfigError(f"synthetic.colours={list(self.colours)} must be distinct names from "
                              f"{sorted(PALETTE)}")
        if len(self.colours) < self.max_shapes:
            raise ConfigError(
                f"synthetic.colours has {len(self.colours)} colours but max_shapes="
                f"{self.max_shapes}: shapes of a video have distinct colours; add colours")
        if not self.kinds or len(set(self.kinds)) != len(self.kinds) or \
                any(kind not in SHAPE_KINDS for kind in self.kinds):
            raise ConfigError(f"synthetic.kinds={list(self.kinds)} must be distinct names from "
                              f"{list(SHAPE_KINDS)}")
        if not 0.0 <= self.collision_fraction <= 1.0:
            raise ConfigError(f"synthetic.collision_fraction={self.collision_fraction} must lie in "
                              f"[0, 1]")
        if self.max_attempts < 1:
            raise ConfigError(f"synthetic.max_attempts={self.max_attempts} must be positive")
        if self.document_sentences < 1:
            raise ConfigError(f"synthetic.document_sentences={self.document_sentences} must be "
                              f"positive")
        if self.document_chars is not None and self.document_chars < 1:
            raise ConfigError(f"synthetic.document_chars={self.document_chars} must be positive "
                              f"(or null: use document_sentences)")
        if not 1 <= self.needles_per_document <= MAX_NEEDLES:
            raise ConfigError(
                f"synthetic.needles_per_document={self.needles_per_document} must lie in "
                f"[1, {MAX_NEEDLES}]: each needle of a document names a distinct city")
        if not 0.0 <= self.held_out_fraction < 1.0:
            raise ConfigError(f"synthetic.held_out_fraction={self.held_out_fraction} must lie in "
                              f"[0, 1)")

    def _validate_sizes(self) -> None:
        low, high = self.shape_size
        size = self.frame_size
        if not 1 <= low <= high:
            raise ConfigError(f"synthetic.shape_size={list(self.shape_size)} must be [min, max] "
                              f"with 1 <= min <= max")
        visible = math.ceil(size / 8)
        if low < visible:
            raise ConfigError(
                f"synthetic.shape_size min {low} px is smaller than frame_size/8 = {visible} px: a "
                f"tokenizer with 8x8 codes per frame could not see the shape; raise shape_size")
        if high > size // 2:
            raise ConfigError(
                f"synthetic.frame_size={size} is too small for shape_size max {high} px: shapes "
                f"may be at most half the frame ({size // 2} px); raise frame_size or lower "
                f"shape_size")
        if 2 * self.max_shapes * high * high > size * size:
            raise ConfigError(
                f"synthetic.frame_size={size} is too small for {self.max_shapes} shapes of "
                f"{high} px: they would cover more than half the frame; raise frame_size or lower "
                f"shape_size / max_shapes")
        slow, fast = self.speed
        if not 1 <= slow <= fast:
            raise ConfigError(f"synthetic.speed={list(self.speed)} must be [min, max] pixels per "
                              f"frame with 1 <= min <= max")
        if fast >= low:
            raise ConfigError(
                f"synthetic.speed max {fast} px/frame must be below shape_size min {low} px: "
                f"faster shapes could pass through each other between frames")
        if fast > size - high:
            raise ConfigError(
                f"synthetic.speed max {fast} px/frame exceeds frame_size - shape_size max = "
                f"{size - high} px: a bounce could not keep the shape inside the frame")
