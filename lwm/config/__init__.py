"""Typed, frozen configs loaded from YAML with dotted command-line overrides."""

from lwm.config.loading import (
    ConfigError,
    from_dict,
    load_config,
    parse_overrides,
    read_yaml,
    save_config,
    to_dict,
)
from lwm.config.model import MeshConfig, ModelConfig

__all__ = [
    "ConfigError",
    "MeshConfig",
    "ModelConfig",
    "from_dict",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "to_dict",
]
