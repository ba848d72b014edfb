"""What the trainer does around each step, one small hook per concern.

The trainer (`lwm.train.loop.Trainer`) runs `before_step` of every hook, then one step, then
`after_step` of every hook; `end` runs once when the loop stops without an error. Hooks read
and steer the trainer through its attributes (`step`, `state`, `metrics`, `stop_reason`) and
`save()`.

- `MetricsHook` fetches a logged step's metrics ONE STEP LATE (after the next step is
  dispatched, as nanodo does), so the host never waits for the device on a log step; before a
  checkpoint it fetches the current step at once. Every fetched record goes to its consumers:
  `FiniteCheck` (stops on NaN/Inf), the `MetricsWriter`, the progress bar.
- `CheckpointHook` saves every `checkpoint.every_steps` and, at the end, the last finished
  step if it is not saved yet (a finished stage, a preemption, `stop_after_steps`).
- `StopHook` stops the loop when a signal came (`SignalWatch`), when the processes of a
  multi-process job agreed on a preemption step, or after `stop_after_steps`. It looks
  before every step, so a signal that arrives at any moment (during a step, a metrics fetch, a
  checkpoint write, the compilation) is seen before more work starts, and the checkpoint of the
  last finished step is then written by `CheckpointHook.end`.
- `ExportHook` writes the model directory when the stage finished.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from etils import epath
from flax import nnx

from lwm.errors import LwmError
from lwm.model.params_io import save_model
from lwm.train import distributed
from lwm.train.metrics import MetricsWriter

if TYPE_CHECKING:
    from lwm.train.loop import Trainer

FINITE_KEYS = ("loss", "grad_norm", "param_norm")


class NonFiniteLossError(LwmError, RuntimeError):
    """The loss became NaN or Inf; checkpoints already written are left as they were."""


def to_host(tree: Any) -> Any:
    """Copies a tree of device arrays to the host, waiting for them (the one blocking fetch)."""
    return jax.device_get(tree)


def note(message: str) -> None:
    """Prints one line about the run on stderr (process 0 only)."""
    if distributed.is_main_process():
        print(f"lwm train: {message}", file=sys.stderr, flush=True)


class Hook:
    """A trainer hook; every method is optional."""

    def before_step(self, trainer: Trainer) -> None:
        """Runs before each step (the trainer's `step` is the last finished one)."""

    def after_step(self, trainer: Trainer) -> None:
        """Runs after each step is dispatched (its results may still be computing)."""

    def end(self, trainer: Trainer) -> None:
        """Runs once when the loop stops without an error."""


class SignalWatch:
    """Turns SIGTERM and SIGINT into a stop request for the trainer (a context manager).

    The first signal only sets `requested`: the trainer finishes the step it is in, saves it
    and returns (exit code 0). A second signal stops the process at once, as a kill would: a
    checkpoint being written then is left as an unfinished temporary folder that is never
    read, and the previous checkpoint stays the newest.

    In a multi-process job nothing is installed: the processes must stop at the same step, so
    SIGTERM is left to JAX's preemption service, which picks a step every process reaches
    (`distributed.preemption_agreed`); SIGINT there ends the process as a kill would (the
    checkpoints stay as they were). Outside the main thread nothing is installed either
    (Python delivers signals to the main thread alone).
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        if jax.process_count() > 1:
            return self
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is None:
            self.requested = signum
            return
        name = signal.Signals(signum).name
        print(f"lwm train: second {name}: stopping now without saving; the newest complete "
              f"checkpoint is kept", file=sys.stderr, flush=True)
        os._exit(128 + signum)


class StopHook(Hook):
    """Stops the loop on a signal, an agreed multi-process preemption, or `stop_after_steps`."""

    def __init__(self, watch: SignalWatch | None, stop_after_steps: int | None = None) -> None:
        self.watch = watch
        self.stop_after_steps = stop_after_steps

    def before_step(self, trainer: Trainer) -> None:
        if self.watch is not None and self.watch.requested is not None:
            trainer.stop_reason = f"{signal.Signals(self.watch.requested).name} received"
        elif distributed.preemption_agreed(trainer.step):
            trainer.stop_reason = "preempted (SIGTERM)"
        elif self.stop_after_steps is not None and trainer.step - trainer.start_step >= self.stop_after_steps:
            trainer.stop_reason = f"stopped after {self.stop_after_steps} steps"


class FiniteCheck:
    """Raises `NonFiniteLossError` when a fetched record holds a NaN or Inf loss or norm.

    The new parameters must be finite too (`param_norm`), or the checkpoint about to be
    written would be poisoned even though this step's loss (of the old parameters) was fine.
    """

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def __call__(self, step: int, record: dict[str, float]) -> None:
        bad = [key for key in FINITE_KEYS if key in record and not math.isfinite(record[key])]
        if not bad:
            return
        trainer = self.trainer
        checkpointer = trainer.checkpointer
        saved = checkpointer.last_saved_step
        if saved is None:
            kept = (f"no checkpoint was written yet ({checkpointer.directory} holds none): lower "
                    f"train.lr or check the data, then rerun")
        else:
            kept = (f"the last good checkpoint in {checkpointer.directory} (step {saved}) is intact: "
                    f"lower train.lr or check the data, then resume")
        raise NonFiniteLossError(
            f"{', '.join(f'{key} is {record[key]}' for key in bad)} at step {step} "
            f"(stage {trainer.stage_name or 'main'}); {kept}"
        )


class MetricsHook(Hook):
    """Fetches logged metrics one step late and hands each record to its consumers."""

    def __init__(self, log_every: int, *, learning_rate: Callable[[int], float], flops_per_token: float,
                 peak_flops: float, consumers: list[Callable[[int, dict[str, float]], None]]) -> None:
        self.log_every = log_every
        self.learning_rate = learning_rate
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.consumers = consumers
        self.last: dict[str, float] = {}
        self._pending: list[tuple[int, Any, dict[str, float]]] = []
        self._fetched_step: int | None = None
        self._tokens = 0
        self._steps = 0
        self._since = time.perf_counter()
        self._started = False

    def before_step(self, trainer: Trainer) -> None:
        if not self._started:
            self._started = True
            self._since = time.perf_counter()  # compiling and restoring are not step time

    def after_step(self, trainer: Trainer) -> None:
        self._tokens += trainer.batch_tokens
        self._steps += 1
        # The previous log step's metrics: ready by now, or as soon as the device gets to them,
        # while the step just dispatched keeps it busy.
        self._fetch()
        if trainer.step % self.log_every == 0:
            self._queue(trainer)

    def flush(self, trainer: Trainer) -> None:
        """Fetches every pending record and the current step's (a checkpoint needs them checked)."""
        queued = {step for step, _, _ in self._pending}
        if trainer.step != self._fetched_step and trainer.step not in queued and trainer.metrics is not None:
            self._queue(trainer)
        self._fetch()

    def end(self, trainer: Trainer) -> None:
        self.flush(trainer)

    def _queue(self, trainer: Trainer) -> None:
        elapsed = time.perf_counter() - self._since
        tokens_per_second = self._tokens * jax.process_count() / max(elapsed, 1e-9)
        timing = {
            "lr": float(self.learning_rate(trainer.step)),
            "tokens_per_second": tokens_per_second,
            "step_time": elapsed / max(self._steps, 1),
            "mfu": tokens_per_second * self.flops_per_token / self.peak_flops,
        }
        self._pending.append((trainer.step, trainer.metrics, timing))
        self._tokens, self._steps, self._since = 0, 0, time.perf_counter()

    def _fetch(self) -> None:
        pending, self._pending = self._pending, []
        for step, metrics, timing in pending:
            record = {key: float(value) for key, value in to_host(metrics).items()}
            record.update(timing)
            self._fetched_step = step
            self.last = record
            for consumer in self.consumers:
                consumer(step, record)


class ProgressHook(Hook):
    """A tqdm bar of the stage's steps with the latest fetched loss (process 0)."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    def after_step(self, trainer: Trainer) -> None:
        self.bar.update(1)

    def show(self, step: int, record: dict[str, float]) -> None:
        """A metrics consumer: shows the loss."""
        self.bar.set_postfix(loss=f"{record['loss']:.3f}")

    def close(self) -> None:
        """Closes the bar."""
        self.bar.close()


class CheckpointHook(Hook):
    """Saves every `every_steps`, and the last finished step when the loop stops."""

    def __init__(self, every_steps: int) -> None:
        self.every_steps = every_steps

    def after_step(self, trainer: Trainer) -> None:
        if trainer.step % self.every_steps == 0:
            trainer.save()

    def end(self, trainer: Trainer) -> None:
        saved = trainer.checkpointer.last_saved_step
        if trainer.step > trainer.start_step and saved != trainer.step:
            trainer.save()


class ExportHook(Hook):
    """Writes the stage's model directory (`model.yaml` + `params/`) when the stage finished.

    A directory from an earlier, shorter run of the stage is replaced only once the new one is
    completely written.
    """

    def __init__(self, model_dir: epath.Path) -> None:
        self.model_dir = model_dir

    def end(self, trainer: Trainer) -> None:
        if trainer.stop_reason is not None:
            return
        model = nnx.merge(trainer.setup.graphdef, trainer.state["params"])
        target = self.model_dir
        if (target / "params").exists():
            fresh = target.parent / f"{target.name}.step-{trainer.step}.tmp"
            if distributed.is_main_process() and fresh.exists():
                fresh.rmtree()
            distributed.barrier(f"lwm-export-clean-{trainer.stage_name}-{trainer.step}")
            save_model(model, fresh)
            distributed.barrier(f"lwm-export-written-{trainer.stage_name}-{trainer.step}")
            if distributed.is_main_process():
                old = target.parent / f"{target.name}.replaced.tmp"
                if old.exists():
                    old.rmtree()
                target.rename(old)
                fresh.rename(target)
                old.rmtree()
            distributed.barrier(f"lwm-export-swapped-{trainer.stage_name}-{trainer.step}")
        else:
            save_model(model, target)


def metrics_consumers(trainer: Trainer, writer: MetricsWriter,
                      progress: ProgressHook | None) -> list[Callable[[int, dict[str, float]], None]]:
    """The consumers of every fetched record: the writer first (so the log shows a NaN), then
    the NaN check, then the progress bar."""
    consumers: list[Callable[[int, dict[str, float]], None]] = [writer.write, FiniteCheck(trainer)]
    if progress is not None:
        consumers.append(progress.show)
    return consumers


def count_tokens(batch: dict[str, np.ndarray]) -> int:
    """Real (non-padding) tokens of a local batch."""
    return int(np.count_nonzero(batch["segment_ids"]))
