"""Typed, frozen configs loaded from YAML with dotted command-line overrides."""

from lwm.config.data import DataConfig, QAConfig
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
from lwm.config.train import (
    CheckpointConfig,
    DistributedConfig,
    LoggingConfig,
    StageConfig,
    TrainConfig,
    TrainRunConfig,
)

__all__ = [
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "LoggingConfig",
    "QAConfig",
    "StageConfig",
    "TrainConfig",
    "TrainRunConfig",
    "MeshConfig",
    "ModelConfig",
    "from_dict",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "save_config",
    "to_dict",
]
