"""The training loop: stages, sharded state, checkpoints, signals, metrics.

`train(config)` runs every stage of a `TrainRunConfig` (one implicit stage when `stages` is
empty). Each stage starts from the previous stage's weights (LWM grew its context this way:
32K → 128K → 256K → 512K → 1M), with a fresh optimizer and its own checkpoint directory. A run
that is interrupted (SIGTERM, a crash, a kill) resumes from its newest checkpoint with the
parameters, optimizer state, step and data-iterator state, and so continues with exactly the
loss curve it would have had.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from lwm.config import StageConfig, TrainRunConfig, save_config, to_dict
from lwm.data.loader import make_batch_iterator
from lwm.errors import LwmError
from lwm.model.params_io import load_params_tree, save_model
from lwm.train import distributed
from lwm.train.checkpoint import Checkpointer, abstract_like
from lwm.train.metrics import MetricsWriter, machine_peak_flops, train_flops_per_token
from lwm.train.setup import train_setup
from lwm.train.step import BATCH_KEYS


class NonFiniteLossError(LwmError, RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class StageResult:
    """What one stage left behind."""

    name: str
    steps: int
    final_metrics: dict[str, float]
    model_dir: Path
    preempted: bool = False


@dataclasses.dataclass
class _Preemption:
    requested: bool = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


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


def _to_global(batch: dict[str, np.ndarray], sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    return {key: jax.make_array_from_process_local_data(sharding, batch[key]) for key in BATCH_KEYS}


def train_stage(
    config: TrainRunConfig,
    *,
    stage_dir: Path,
    init_params_from: Path | None,
    source: Any = None,
    stage_name: str = "",
    stop_after_steps: int | None = None,
) -> StageResult:
    """Trains one stage to `config.train.steps`, resuming from its checkpoints if any.

    `stop_after_steps` ends the process's work early after that many steps in this call, the
    way a preemption would (used to test resumption).
    """
    main = distributed.is_main_process()
    setup = train_setup(config)
    mesh, graphdef, batch_sharding = setup.mesh, setup.graphdef, setup.batch_sharding
    stage_dir.mkdir(parents=True, exist_ok=True)
    if main:
        save_config(config, stage_dir / "config.yaml")
    params = setup.create_params()
    if init_params_from is not None:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                              nnx.to_pure_dict(params))
        nnx.replace_by_pure_dict(params, load_params_tree(init_params_from, target))
    state = setup.init_state(params)

    iterator = make_batch_iterator(
        config.data, source, process_index=jax.process_index(), process_count=jax.process_count()
    )
    checkpoint_dir = Path(config.checkpoint.directory) / (stage_name or "main") if config.checkpoint.directory else stage_dir / "checkpoints"
    checkpointer = Checkpointer(checkpoint_dir, config.checkpoint)
    start_step = 0
    latest = checkpointer.latest_step() if config.checkpoint.resume else None
    if latest is not None:
        state, data_state, _ = checkpointer.restore(latest, abstract_like(state))
        iterator.set_state(data_state)
        start_step = latest

    # Compile before the first collective, then line the processes up: a process that
    # compiles much later than its peers would otherwise time out in the collectives' set-up.
    compiled_step = setup.compile(abstract_like(state))
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp

        ocp.multihost.sync_global_processes(f"lwm-compiled-{stage_name or 'main'}-{start_step}", timeout=3600)
    flops_per_token = train_flops_per_token(config.model, config.data.seq_len)
    peak = machine_peak_flops(config.logging.peak_tflops_per_device)
    writer = MetricsWriter(
        config.logging.output_dir, tensorboard=config.logging.tensorboard,
        wandb_project=config.logging.wandb_project, run_config=to_dict(config), enabled=main,
    )
    preemption = _Preemption()
    previous_handler = signal.signal(signal.SIGTERM, preemption)
    progress = None
    if main and config.logging.progress_bar:
        from tqdm import tqdm

        progress = tqdm(total=config.train.steps, initial=start_step, desc=stage_name or "train", unit="step")
    metrics_host: dict[str, float] = {}
    step = start_step
    tokens_since, steps_since, time_since = 0, 0, time.perf_counter()
    preempted = False
    try:
        while step < config.train.steps:
            batch = next(iterator)
            tokens_since += int(np.count_nonzero(batch["segment_ids"]))
            with jax.set_mesh(mesh):
                state, metrics = compiled_step(state, _to_global(batch, batch_sharding))
            step += 1
            steps_since += 1
            is_last = step == config.train.steps
            save_now = step % config.checkpoint.every_steps == 0 or is_last or preemption.requested
            stop_now = stop_after_steps is not None and step - start_step >= stop_after_steps
            if step % config.logging.log_every == 0 or save_now or stop_now:
                metrics_host = {key: float(value) for key, value in jax.device_get(metrics).items()}
                # The new parameters must be finite too, or the checkpoint about to be written
                # would be poisoned even though this step's loss (of the old parameters) was fine.
                bad = [key for key in ("loss", "grad_norm", "param_norm") if not math.isfinite(metrics_host[key])]
                if bad:
                    raise NonFiniteLossError(
                        f"{', '.join(f'{key} is {metrics_host[key]}' for key in bad)} at step {step} "
                        f"(stage {stage_name or 'main'}); "
                        f"the last good checkpoint in {checkpoint_dir} is intact: lower train.lr or "
                        f"check the data, then resume"
                    )
                elapsed = time.perf_counter() - time_since
                tokens_per_second = tokens_since * jax.process_count() / max(elapsed, 1e-9)
                metrics_host.update(
                    lr=float(_learning_rate(config, step)),
                    tokens_per_second=tokens_per_second,
                    step_time=elapsed / steps_since,
                    mfu=tokens_per_second * flops_per_token / peak,
                )
                writer.write(step, metrics_host)
                tokens_since, steps_since, time_since = 0, 0, time.perf_counter()
                if progress is not None:
                    progress.set_postfix(loss=f"{metrics_host['loss']:.3f}")
            if progress is not None:
                progress.update(1)
            if save_now or stop_now:
                checkpointer.save(step, state, iterator.get_state(), {"stage": stage_name, "step": step})
            if preemption.requested or stop_now:
                preempted = True
                break
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        checkpointer.close()
        if jax.process_count() > 1:
            import orbax.checkpoint as ocp

            # Nobody leaves the stage until every process's checkpoint writes are committed.
            ocp.multihost.sync_global_processes(f"lwm-stage-end-{stage_name or 'main'}-{step}", timeout=3600)
        writer.close()
        if progress is not None:
            progress.close()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    model_dir = stage_dir / "model"
    if not preempted:
        model = nnx.merge(graphdef, state["params"])
        save_model(model, model_dir)
    return StageResult(stage_name, step, metrics_host, model_dir, preempted)


def _learning_rate(config: TrainRunConfig, step: int) -> float:
    from lwm.train.optimizer import learning_rate_schedule

    return learning_rate_schedule(config.train)(step)


def train(config: TrainRunConfig, *, source: Any = None, stop_after_steps: int | None = None) -> list[StageResult]:
    """Runs every stage of `config`; returns what each stage left (a preempted run stops early).

    `source` overrides `data.store_path` (a token store path, a `TokenStore`, or a list of
    `TokenExample`s). Finished stages are skipped on a rerun.
    """
    distributed.initialize(config.distributed)
    output_dir = Path(config.logging.output_dir)
    results: list[StageResult] = []
    previous_model: Path | None = Path(config.checkpoint.init_from) if config.checkpoint.init_from else None
    stages = stage_configs(config)
    for index, (name, stage_config) in enumerate(stages):
        stage_dir = output_dir / name if name else output_dir
        if (stage_dir / "model" / "params").exists():
            previous_model = stage_dir / "model"
            continue
        result = train_stage(
            stage_config, stage_dir=stage_dir, init_params_from=previous_model, source=source,
            stage_name=name, stop_after_steps=stop_after_steps,
        )
        results.append(result)
        if result.preempted:
            return results
        previous_model = result.model_dir
    if config.checkpoint.export_hf and previous_model is not None and not config.model.has_vision:
        from lwm.model.convert import lwm_to_hf

        if distributed.is_main_process():
            lwm_to_hf(previous_model, output_dir / "hf")
        if jax.process_count() > 1:
            import orbax.checkpoint as ocp

            # The others wait here for the export rather than in JAX's shutdown barrier, whose
            # deadline (5 minutes) a large model's export could overrun.
            ocp.multihost.sync_global_processes("lwm-export-hf", timeout=3600)
    return results
