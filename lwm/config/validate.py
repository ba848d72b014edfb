"""Checks that span config sections (each section checks its own fields in `validate()`)."""

from __future__ import annotations

from typing import Any

from lwm.config.loading import ConfigError


def validate_cross_section(config: Any) -> None:
    """Checks a root config whose sections must agree with each other.

    Sections are found by name (`model`, `mesh`, `data`, `train`), so every root config that
    has them gets the same checks.
    """
    from lwm.config.data import DataConfig
    from lwm.config.model import MeshConfig, ModelConfig

    # Sections are matched by type as well as name: other roots (the VQ tokenizer's) reuse
    # the names `model` and `data` for different sections.
    model = getattr(config, "model", None)
    model = model if isinstance(model, ModelConfig) else None
    mesh = getattr(config, "mesh", None)
    mesh = mesh if isinstance(mesh, MeshConfig) else None
    data = getattr(config, "data", None)
    data = data if isinstance(data, DataConfig) else None
    seq_len = getattr(data, "seq_len", None)
    if model is not None and seq_len is not None and seq_len > model.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} exceeds model.max_seq_len={model.max_seq_len}: "
            f"raise model.max_seq_len or lower data.seq_len"
        )
    if mesh is not None and seq_len is not None and mesh.sp > 0:
        if seq_len % mesh.sp:
            raise ConfigError(
                f"data.seq_len={seq_len} is not divisible by mesh.sp={mesh.sp}: each sequence-parallel "
                f"device holds seq_len/sp tokens; use a seq_len that is a multiple of {mesh.sp}"
            )
        if model is not None and model.attention == "ring":
            local = seq_len // mesh.sp
            for name in ("query_chunk_size", "key_chunk_size"):
                chunk = getattr(model, name)
                if local >= chunk and local % chunk:
                    raise ConfigError(
                        f"model.{name}={chunk} does not divide the per-device length "
                        f"data.seq_len/mesh.sp={local}: pick a chunk size that divides {local}"
                    )
    if model is not None and data is not None and model.has_vision:
        for name in ("codebook_size", "tokens_per_frame"):
            if getattr(model, name) != getattr(data, name):
                raise ConfigError(
                    f"model.{name}={getattr(model, name)} differs from data.{name}="
                    f"{getattr(data, name)}: the vision tokens must come from the same VQ tokenizer"
                )
    for stage in getattr(config, "stages", ()) or ():
        if mesh is not None and stage.seq_len and mesh.sp > 0 and stage.seq_len % mesh.sp:
            raise ConfigError(
                f"stage {stage.name or '?'}: seq_len={stage.seq_len} is not divisible by "
                f"mesh.sp={mesh.sp}; use a multiple of {mesh.sp}"
            )
    if model is not None and mesh is not None and mesh.tp > 0:
        for name, value in (("num_heads", model.num_heads), ("num_kv_heads", model.kv_heads)):
            if value % mesh.tp:
                raise ConfigError(
                    f"model.{name}={value} is not divisible by mesh.tp={mesh.tp}: tensor parallelism "
                    f"splits heads; use a tp that divides {value}"
                )
