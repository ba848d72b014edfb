"""Checks that span config sections, as plain functions of typed sections.

Each section checks its own fields in its `validate()`; a root config whose sections must agree
(the training run, the demo) calls these from its own `validate()`, which `load_config` runs
after the sections'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from lwm.config.data import DataConfig
from lwm.config.errors import ConfigError
from lwm.config.model import MeshConfig, ModelConfig
from lwm.config.vision import VisionVocab


def check_sequence(model: ModelConfig, mesh: MeshConfig, seq_len: int) -> None:
    """The sequence fits the model and divides evenly over `sp` and the ring's chunks."""
    if seq_len > model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model.max_seq_len={model.max_seq_len}: "
            f"raise model.max_seq_len or lower data.seq_len"
        )
    if mesh.sp <= 0:
        return
    if seq_len % mesh.sp:
        raise ConfigError(
            f"data.seq_len={seq_len} is not divisible by mesh.sp={mesh.sp}: each sequence-parallel "
            f"device holds seq_len/sp tokens; use a seq_len that is a multiple of {mesh.sp}"
        )
    if model.attention == "ring":
        local = seq_len // mesh.sp
        for name in ("query_chunk_size", "key_chunk_size"):
            chunk = getattr(model, name)
            if local >= chunk and local % chunk:
                raise ConfigError(
                    f"model.{name}={chunk} does not divide the per-device length "
                    f"data.seq_len/mesh.sp={local}: pick a chunk size that divides {local}"
                )


def check_batch_divides(batch_size: int, batch_shards: int) -> None:
    """The global batch splits evenly over the mesh's batch axes (`dp`·`fsdp` devices)."""
    if batch_size % batch_shards:
        raise ConfigError(
            f"data.batch_size={batch_size} does not divide over the {batch_shards} devices of the mesh's "
            f"batch axes (mesh.dp x mesh.fsdp): use a multiple of {batch_shards}, or move devices to "
            f"mesh.sp or mesh.tp"
        )


def check_tensor_parallel(model: ModelConfig, mesh: MeshConfig) -> None:
    """Tensor parallelism splits heads, so `tp` must divide both head counts."""
    if mesh.tp <= 0:
        return
    for name, value in (("num_heads", model.num_heads), ("num_kv_heads", model.kv_heads)):
        if value % mesh.tp:
            raise ConfigError(
                f"model.{name}={value} is not divisible by mesh.tp={mesh.tp}: tensor parallelism "
                f"splits heads; use a tp that divides {value}"
            )


def check_stage_lengths(stage_lengths: Sequence[tuple[str, int]], mesh: MeshConfig) -> None:
    """Every stage's sequence length divides over `sp`."""
    for name, seq_len in stage_lengths:
        if seq_len and mesh.sp > 0 and seq_len % mesh.sp:
            raise ConfigError(
                f"stage {name or '?'}: seq_len={seq_len} is not divisible by mesh.sp={mesh.sp}; "
                f"use a multiple of {mesh.sp}"
            )


def data_with_model_vision(model: ModelConfig, data: DataConfig) -> DataConfig:
    """The data section with the model's vision vocabulary: a run states it once, in the model.

    A data section that names a different vocabulary than the model's is refused, since the
    tokens would come from another VQ tokenizer than the one the model reads.
    """
    if data.vision == model.vision:
        return data
    if data.vision != VisionVocab():
        raise ConfigError(
            f"data.vision ({data.codebook_size} codes, {data.tokens_per_frame} per frame) differs from "
            f"model.vision ({model.codebook_size} codes, {model.tokens_per_frame} per frame): a training "
            f"run states the vision vocabulary once, as model.vision; drop data.vision"
        )
    return dataclasses.replace(data, vision=model.vision)
