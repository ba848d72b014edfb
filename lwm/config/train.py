"""Training-run configuration: optimizer and schedule, checkpoints, logging, stages, hosts."""

from __future__ import annotations

import dataclasses
from typing import Literal

from lwm.config.checks import (
    check_batch_divides,
    check_sequence,
    check_stage_lengths,
    check_tensor_parallel,
    data_with_model_vision,
)
from lwm.config.data import DataConfig
from lwm.config.errors import ConfigError
from lwm.config.model import MeshConfig, ModelConfig

Schedule = Literal["cosine", "linear", "constant"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer (AdamW), learning-rate schedule, clipping and accumulation.

    The schedule warms up linearly for `warmup_steps`, then decays (cosine or linear) to
    `lr * final_lr_ratio` at `steps`. Weight decay skips norms and embeddings unless
    `decay_norms_and_embeddings`.
    """

    steps: int = 1000
    lr: float = 3e-4
    final_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: Schedule = "cosine"
    weight_decay: float = 0.1
    decay_norms_and_embeddings: bool = False
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 1.0
    grad_accum_steps: int = 1
    seed: int = 0
    # Loss weights per target modality (see lwm/train/loss.py for the formula).
    text_loss_weight: float = 1.0
    vision_loss_weight: float = 1.0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        for name in ("steps", "lr", "grad_accum_steps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be positive")
        for name in ("text_loss_weight", "vision_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must not be negative")
        if self.text_loss_weight == 0 and self.vision_loss_weight == 0:
            raise ConfigError(
                "train.text_loss_weight and train.vision_loss_weight are both 0: nothing would be "
                "trained; give at least one modality a positive weight"
            )
        if not 0 <= self.warmup_steps <= self.steps:
            raise ConfigError(
                f"train.warmup_steps={self.warmup_steps} must lie between 0 and train.steps={self.steps}"
            )
        if not 0 <= self.final_lr_ratio <= 1:
            raise ConfigError(f"train.final_lr_ratio={self.final_lr_ratio} must lie in [0, 1]")
        if self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise ConfigError("train.weight_decay and train.grad_clip_norm must not be negative")
        for name in ("adam_b1", "adam_b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must lie in [0, 1)")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints of the full training state (parameters, optimizer, step, data iterator).

    `init_from` loads parameters only (a model directory, e.g. from `lwm convert hf2lwm`) to
    finetune; `resume` continues from the newest checkpoint in `directory` with everything.
    """

    directory: str = ""
    every_steps: int = 500
    keep: int = 3
    async_save: bool = True
    resume: bool = True
    init_from: str = ""
    export_hf: bool = False

    def validate(self) -> None:
        """Raises `ConfigError` for non-positive intervals or counts."""
        if self.every_steps <= 0 or self.keep <= 0:
            raise ConfigError(
                f"checkpoint.every_steps={self.every_steps} and checkpoint.keep={self.keep} must be positive"
            )


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    """Where metrics go: JSONL always, TensorBoard and Weights & Biases when asked."""

    output_dir: str = "runs/default"
    log_every: int = 10
    tensorboard: bool = False
    wandb_project: str = ""
    progress_bar: bool = True
    # Peak FLOP/s per device for MFU; 0 measures this device's float32 matmul rate at start-up.
    peak_tflops_per_device: float = 0.0

    def validate(self) -> None:
        """Raises `ConfigError` for a non-positive interval."""
        if self.log_every <= 0:
            raise ConfigError(f"logging.log_every={self.log_every} must be positive")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host set-up for `jax.distributed.initialize`.

    `auto` lets JAX detect SLURM, TPU pods and similar clusters from the environment; otherwise
    a coordinator address with the process count and this process's id are required.
    """

    enabled: bool = False
    auto: bool = True
    coordinator_address: str = ""
    num_processes: int = 1
    process_id: int = 0
    local_device_count: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` when a manual set-up is incomplete."""
        if self.enabled and not self.auto:
            if not self.coordinator_address:
                raise ConfigError(
                    "distributed.coordinator_address is empty with distributed.auto=false: give "
                    "HOST:PORT of process 0"
                )
            if not 0 <= self.process_id < self.num_processes:
                raise ConfigError(
                    f"distributed.process_id={self.process_id} must lie in [0, "
                    f"distributed.num_processes={self.num_processes})"
                )


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """One context-length stage: it starts from the previous stage's weights.

    Zero or empty fields keep the run's own value (`data.seq_len`, `model.rope_theta`, ...).
    """

    name: str = ""
    seq_len: int = 0
    rope_theta: float = 0.0
    steps: int = 0
    batch_size: int = 0
    store_path: str = ""
    lr: float = 0.0

    def validate(self) -> None:
        """Raises `ConfigError` for a stage without steps."""
        if self.steps <= 0:
            raise ConfigError(f"stage {self.name or '?'}: steps={self.steps} must be positive")
        if self.seq_len < 0 or self.rope_theta < 0 or self.batch_size < 0 or self.lr < 0:
            raise ConfigError(f"stage {self.name or '?'}: sizes and rates must not be negative")


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    """Everything `lwm train` needs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
    stages: tuple[StageConfig, ...] = ()

    def __post_init__(self) -> None:
        # The model states the vision vocabulary; the data section reads the same one.
        object.__setattr__(self, "data", data_with_model_vision(self.model, self.data))

    def validate(self) -> None:
        """Raises `ConfigError` when the sections disagree (each has checked its own fields)."""
        check_sequence(self.model, self.mesh, self.data.seq_len)
        check_stage_lengths([(stage.name, stage.seq_len) for stage in self.stages], self.mesh)
        check_tensor_parallel(self.model, self.mesh)
        if self.mesh.dp > 0 and self.mesh.fsdp > 0:
            check_batch_divides(self.data.batch_size, self.mesh.dp * self.mesh.fsdp)
