"""The trainer: stages, restore-or-init into the sharded state, the step loop and its hooks.

`train(config)` runs every stage of a `TrainRunConfig` (one implicit stage when `stages` is
empty). Each stage starts from the previous stage's weights (LWM grew its context this way:
32K → 128K → 256K → 512K → 1M), with a fresh optimizer and its own checkpoint directory.

A stage's state comes straight onto its shardings: restored from the newest complete
checkpoint into the abstract state, or (first run) the parameters of `checkpoint.init_from`
(or the previous stage) read into the abstract sharded parameters, or freshly initialised;
never a random state that is then overwritten. Then `Trainer.run` loops over steps with the
hooks of `lwm.train.hooks` (metrics one step late, NaN checks, checkpoints, stopping on
signals, export). A run that is interrupted (a signal, a crash, a kill) resumes from its
newest checkpoint with the parameters, optimizer state, step and data-iterator state, and so
continues with exactly the loss curve it would have had.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import yaml
from etils import epath
from flax import nnx

from lwm.config import StageConfig, TrainRunConfig, to_dict
from lwm.data.batch import BATCH_KEYS
from lwm.data.loader import make_batch_iterator
from lwm.model.convert import lwm_to_hf
from lwm.model.params_io import load_params_tree
from lwm.paths import as_path
from lwm.train import distributed
from lwm.train.checkpoint import Checkpointer
from lwm.train.compat import check_store_fits_model, store_metadata
from lwm.train.hooks import (
    CheckpointHook,
    ExportHook,
    Hook,
    MetricsHook,
    NonFiniteLossError,
    ProgressHook,
    SignalWatch,
    StopHook,
    count_tokens,
    metrics_consumers,
    note,
)
from lwm.train.metrics import MetricsWriter, machine_peak_flops, train_flops_per_token
from lwm.train.optimizer import learning_rate_schedule
from lwm.train.setup import TrainSetup, train_setup

__all__ = ["NonFiniteLossError", "StageResult", "Trainer", "apply_stage", "stage_configs", "train"]


@dataclasses.dataclass
class StageResult:
    """What one stage left behind.

    `preempted` says the stage stopped early (a signal, `stop_after_steps`); `checkpoint_step`
    is its newest checkpoint's step (None if it has none); `stop_note` says in one line why it
    stopped and where it resumes; `notes` are other one-line reports (a damaged checkpoint
    skipped, a finished stage continued).
    """

    name: str
    steps: int
    final_metrics: dict[str, float]
    model_dir: epath.Path
    preempted: bool = False
    checkpoint_step: int | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    stop_note: str = ""


def stage_configs(config: TrainRunConfig) -> list[tuple[str, TrainRunConfig]]:
    """One `TrainRunConfig` per stage, with the stage's sequence length, theta, steps and data."""
    if not config.stages:
        return [("", config)]
    result = []
    for index, stage in enumerate(config.stages):
        name = stage.name or f"stage-{index}"
        result.append((name, apply_stage(config, stage)))
    return result


def apply_stage(config: TrainRunConfig, stage: StageConfig) -> TrainRunConfig:
    """The run's config with a stage's non-zero fields applied."""
    seq_len = stage.seq_len or config.data.seq_len
    model = dataclasses.replace(
        config.model,
        rope_theta=stage.rope_theta or config.model.rope_theta,
        max_seq_len=max(config.model.max_seq_len, seq_len),
    )
    data = dataclasses.replace(
        config.data,
        seq_len=seq_len,
        batch_size=stage.batch_size or config.data.batch_size,
        store_path=stage.store_path or config.data.store_path,
    )
    train = dataclasses.replace(
        config.train,
        steps=stage.steps,
        lr=stage.lr or config.train.lr,
        warmup_steps=min(config.train.warmup_steps, stage.steps),
    )
    return dataclasses.replace(config, model=model, data=data, train=train, stages=())


def checkpoint_directory(config: TrainRunConfig, stage_dir: epath.Path, stage_name: str) -> epath.Path:
    """Where a stage's checkpoints go: `checkpoint.directory/<stage or main>`, else `<stage dir>/checkpoints`."""
    if config.checkpoint.directory:
        return as_path(config.checkpoint.directory) / (stage_name or "main")
    return stage_dir / "checkpoints"


def newest_step_on_disk(directory: epath.Path) -> int | None:
    """The highest finished checkpoint step in `directory` (by name; nothing is read)."""
    if not directory.exists():
        return None
    steps = [int(path.name) for path in directory.iterdir() if path.name.isdigit()]
    return max(steps) if steps else None


class Trainer:
    """Trains one stage to `config.train.steps`, resuming from its checkpoints if any.

    Attributes the hooks use: `step` (the last finished step), `start_step`, `state` (the
    sharded training state), `metrics` (the last step's metrics, on device), `batch_tokens`,
    `stop_reason` (set to stop the loop), `checkpointer`, `setup`, `stage_name`.
    """

    def __init__(self, config: TrainRunConfig, *, stage_dir: epath.Path, init_params_from: epath.Path | None,
                 source: Any = None, stage_name: str = "", stop_after_steps: int | None = None,
                 watch: SignalWatch | None = None) -> None:
        self.config = config
        self.stage_dir = stage_dir
        self.init_params_from = init_params_from
        self.source = source
        self.stage_name = stage_name
        self.stop_after_steps = stop_after_steps
        self.watch = watch
        self.step = 0
        self.start_step = 0
        self.state: Any = None
        self.metrics: Any = None
        self.batch_tokens = 0
        self.stop_reason: str | None = None
        self.notes: list[str] = []
        self.setup: TrainSetup = None  # type: ignore[assignment]
        self.checkpointer: Checkpointer = None  # type: ignore[assignment]
        self.iterator: Any = None

    # -- building ---------------------------------------------------------------------------

    def _restore_or_init(self) -> None:
        """The state of the newest complete checkpoint, else the initial one, on its shardings."""
        setup, config = self.setup, self.config
        abstract = setup.abstract_state()
        restored = self.checkpointer.restore_latest(abstract) if config.checkpoint.resume else None
        self.notes.extend(self.checkpointer.notes)
        if restored is not None:
            self.state = restored.state
            self.iterator.set_state(restored.data_state)
            self.step = self.start_step = restored.step
            return
        if self.init_params_from is not None:
            # The parameters are read straight into the abstract sharded parameters.
            params = abstract["params"]
            nnx.replace_by_pure_dict(params, load_params_tree(self.init_params_from, nnx.to_pure_dict(params)))
        else:
            params = setup.create_params()
        self.state = setup.init_state(params)

    def _hooks(self, writer: MetricsWriter, progress: ProgressHook | None) -> tuple[list[Hook], MetricsHook]:
        config = self.config
        schedule = learning_rate_schedule(config.train)
        metrics = MetricsHook(
            config.logging.log_every, learning_rate=lambda step: float(schedule(step)),
            flops_per_token=train_flops_per_token(config.model, config.data.seq_len),
            peak_flops=machine_peak_flops(config.logging.peak_tflops_per_device),
            consumers=metrics_consumers(self, writer, progress),
        )
        # Order matters: stop before a step; metrics are fetched before a save checks them.
        hooks: list[Hook] = [StopHook(self.watch, self.stop_after_steps), metrics]
        if progress is not None:
            hooks.append(progress)
        hooks += [CheckpointHook(config.checkpoint.every_steps), ExportHook(self.stage_dir / "model")]
        return hooks, metrics

    # -- steering (used by hooks) ------------------------------------------------------------

    def save(self) -> None:
        """Checks the current step's metrics (NaN) and starts saving its checkpoint; collective."""
        self._metrics_hook.flush(self)
        self.checkpointer.save(self.step, self.state, self.iterator.get_state(),
                               {"stage": self.stage_name, "step": self.step})

    # -- running -----------------------------------------------------------------------------

    def run(self) -> StageResult:
        """Builds the stage, runs the loop with its hooks, and returns what it left."""
        config, main = self.config, distributed.is_main_process()
        name = self.stage_name or "main"
        found = store_metadata(self.source, config.data.store_path)
        if found is not None:
            check_store_fits_model(*found, config.model)
        self.setup = setup = train_setup(config)
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        if main:
            (self.stage_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        self.iterator = make_batch_iterator(
            config.data, self.source, process_index=jax.process_index(), process_count=jax.process_count()
        )
        self.checkpointer = Checkpointer(checkpoint_directory(config, self.stage_dir, self.stage_name),
                                         config.checkpoint)
        writer = progress = None
        try:
            self._restore_or_init()
            total = config.train.steps
            if self.step > total:
                self._note(f"stage {name}: its checkpoint is at step {self.step}, past train.steps={total}: "
                           f"nothing to train (raise train.steps to continue)")
            # Compile before the first collective, then line the processes up: a process that
            # compiles much later than its peers would otherwise time out in the collectives' set-up.
            compiled_step = setup.compile(setup.abstract_state())
            distributed.barrier(f"lwm-compiled-{name}-{self.start_step}")
            writer = MetricsWriter(
                config.logging.output_dir, tensorboard=config.logging.tensorboard,
                wandb_project=config.logging.wandb_project, run_config=to_dict(config), enabled=main,
            )
            if main and config.logging.progress_bar:
                progress = ProgressHook(total, min(self.step, total), self.stage_name or "train")
            hooks, self._metrics_hook = self._hooks(writer, progress)
            while self.step < total:
                for hook in hooks:
                    hook.before_step(self)
                if self.stop_reason is not None:
                    break
                batch = next(self.iterator)
                self.batch_tokens = count_tokens(batch)
                with jax.set_mesh(setup.mesh):
                    self.state, self.metrics = compiled_step(self.state, _to_global(batch, setup.batch_sharding))
                self.step += 1
                for hook in hooks:
                    hook.after_step(self)
            for hook in hooks:
                hook.end(self)
        finally:
            self._close(writer, progress)
        stop_note = ""
        if self.stop_reason is not None:
            saved = self.checkpointer.last_saved_step
            where = f"checkpoint of step {saved} in {self.checkpointer.directory}" if saved is not None \
                else "no checkpoint yet"
            stop_note = f"preempted ({self.stop_reason}), {where}, resume by rerunning"
        return StageResult(self.stage_name, self.step, self._metrics_hook.last, self.stage_dir / "model",
                           preempted=self.stop_reason is not None,
                           checkpoint_step=self.checkpointer.last_saved_step, notes=self.notes,
                           stop_note=stop_note)

    def _note(self, message: str) -> None:
        note(message)
        self.notes.append(message)

    def _close(self, writer: MetricsWriter | None, progress: ProgressHook | None) -> None:
        # Pending saves finish here (also after an error: a good checkpoint being written
        # completes); nobody leaves the stage until every process's writes are committed.
        self.checkpointer.close()
        distributed.barrier(f"lwm-stage-end-{self.stage_name or 'main'}-{self.step}")
        if writer is not None:
            writer.close()
        if progress is not None:
            progress.close()
        close = getattr(self.iterator, "close", None)
        if close is not None:
            close()


def _to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    return {key: jax.make_array_from_process_local_data(sharding, batch[key]) for key in BATCH_KEYS}


def train(config: TrainRunConfig, *, source: Any = None, stop_after_steps: int | None = None) -> list[StageResult]:
    """Runs every stage of `config`; returns what each stage left (a preempted run stops early).

    `source` overrides `data.store_path` (a token store path, a `TokenStore`, or a list of
    `TokenExample`s). A finished stage is skipped on a rerun, unless `train.steps` has grown
    past its newest checkpoint: then it continues to the new count. `stop_after_steps` ends
    the work early after that many steps of a stage, the way a preemption would (tests use it).
    SIGTERM and SIGINT stop the run after saving the last finished step.
    """
    distributed.initialize(config.distributed)
    output_dir = as_path(config.logging.output_dir)
    results: list[StageResult] = []
    previous_model = as_path(config.checkpoint.init_from) if config.checkpoint.init_from else None
    with SignalWatch() as watch:
        for name, stage_config in stage_configs(config):
            stage_dir = output_dir / name if name else output_dir
            model_dir = stage_dir / "model"
            if (model_dir / "params").exists():
                newest = newest_step_on_disk(checkpoint_directory(stage_config, stage_dir, name))
                if newest is None or newest >= stage_config.train.steps:
                    previous_model = model_dir
                    continue
                note(f"stage {name or 'main'} finished at step {newest}; continuing to "
                     f"train.steps={stage_config.train.steps}")
            if watch.requested is not None:
                results.append(StageResult(name, 0, {}, model_dir, preempted=True,
                                           stop_note="preempted before the stage started, resume by rerunning"))
                return results
            result = Trainer(
                stage_config, stage_dir=stage_dir, init_params_from=previous_model, source=source,
                stage_name=name, stop_after_steps=stop_after_steps, watch=watch,
            ).run()
            results.append(result)
            if result.preempted:
                return results
            previous_model = result.model_dir
        if config.checkpoint.export_hf and previous_model is not None and not config.model.has_vision:
            if distributed.is_main_process():
                lwm_to_hf(previous_model, output_dir / "hf")
            # The others wait here for the export rather than in JAX's shutdown barrier, whose
            # deadline (5 minutes) a large model's export could overrun.
            distributed.barrier("lwm-export-hf")
    return results
