"""Model configuration: the LLaMA decoder and its optional vision vocabulary."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.errors import ConfigError
from lwm.config.vision import ReadsVisionVocab, VisionVocab

DType = Literal["float32", "bfloat16", "float16"]
RematPolicy = Literal["none", "full", "save_dots"]
AttentionKernel = Literal["dense", "blockwise", "ring"]
RingLayout = Literal["contiguous", "zigzag", "striped"]


@dataclasses.dataclass(frozen=True)
class ModelConfig(ReadsVisionVocab):
    """Shape and numerics of a LLaMA-architecture decoder.

    `num_kv_heads` below `num_heads` gives grouped-query attention. A `vision_vocab_size` above
    zero adds LWM's second vocabulary (VQ codes, then `<eof>` and `<eov>`) with its own embedding
    table and output head.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 4096
    tie_embeddings: bool = False
    initializer_range: float = 0.02
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    scan_layers: bool = True
    remat: RematPolicy = "none"
    attention: AttentionKernel = "dense"
    query_chunk_size: int = 512
    key_chunk_size: int = 512
    ring_layout: RingLayout = "contiguous"
    # Vision vocabulary (LWM): `vision_vocab_size` rows (0: a text-only model) holding the
    # codebook's codes, then <eof> and <eov>; `vision` says which VQ tokenizer's codes they are.
    vision_vocab_size: int = 0
    vision: VisionVocab = dataclasses.field(default_factory=VisionVocab)

    @staticmethod
    def upgrade_legacy(data: dict) -> dict:
        """A stored `model.yaml` written before the vision vocabulary had its own section
        (`codebook_size` / `tokens_per_frame` at the top) in today's form, so old model
        directories still load."""
        legacy = {name: data[name] for name in ("codebook_size", "tokens_per_frame") if name in data}
        if not legacy:
            return data
        rest = {key: value for key, value in data.items() if key not in legacy}
        return {**rest, "vision": {**legacy, **(rest.get("vision") or {})}}

    def validate(self) -> None:
        """Raises `ConfigError` naming the first inconsistent field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "max_seq_len", "query_chunk_size", "key_chunk_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be positive")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} is not divisible by model.num_heads="
                f"{self.num_heads}: the head width would not be whole; pick num_heads dividing "
                f"{self.hidden_size}"
            )
        if self.head_dim % 2:
            raise ConfigError(
                f"model head width hidden_size/num_heads={self.head_dim} is odd: rotary embeddings "
                f"rotate pairs of channels; choose an even head width"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads
        ):
            raise ConfigError(
                f"model.num_kv_heads={self.num_kv_heads} must divide model.num_heads="
                f"{self.num_heads} (grouped-query attention shares each key/value head "
                f"between num_heads/num_kv_heads query heads)"
            )
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta} must be positive")
        if self.has_vision and self.vision_vocab_size < self.vision.min_vocab_size:
            raise ConfigError(
                f"model.vision_vocab_size={self.vision_vocab_size} cannot hold model.vision.codebook_size="
                f"{self.codebook_size} codes plus <eof> and <eov>; use at least "
                f"{self.vision.min_vocab_size}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Number of key/value heads (equal to `num_heads` without grouped-query attention)."""
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def has_vision(self) -> bool:
        """Whether the model carries LWM's vision vocabulary and head."""
        return self.vision_vocab_size > 0



@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh `(dp, fsdp, tp, sp)`; at most one axis may be -1 (all remaining devices)."""

    dp: int = 1
    fsdp: int = -1
    tp: int = 1
    sp: int = 1

    def validate(self) -> None:
        """Raises `ConfigError` when an axis size is neither positive nor a single -1."""
        sizes = self.sizes()
        for name, size in sizes.items():
            if size == 0 or size < -1:
                raise ConfigError(f"mesh.{name}={size}: use a positive size, or -1 for the rest")
        wildcards = [name for name, size in sizes.items() if size == -1]
        if len(wildcards) > 1:
            raise ConfigError(
                f"mesh axes {', '.join(wildcards)} are all -1: at most one axis may take the "
                f"remaining devices; give the others explicit sizes"
            )

    def sizes(self) -> dict[str, int]:
        """The axis sizes as written in the config, -1 included."""
        return {"dp": self.dp, "fsdp": self.fsdp, "tp": self.tp, "sp": self.sp}
