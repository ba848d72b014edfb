"""Multi-host start-up through `jax.distributed` (never a home-made launcher), host barriers and
the agreed preemption step.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils
from orbax.checkpoint import multihost

from lwm.config import DistributedConfig

_initialized = False


def initialize(config: DistributedConfig) -> None:
    """Joins the job's processes when `distributed.enabled`; a no-op otherwise or if done.

    With `auto`, JAX reads the cluster from the environment (SLURM, TPU pods, Kubernetes...);
    otherwise the coordinator address, process count and id come from the config. On CPU the
    collectives use gloo.
    """
    global _initialized
    if not config.enabled or _initialized:
        return
    if config.auto:
        jax.distributed.initialize()
    else:
        if config.local_device_count:
            jax.config.update("jax_num_cpu_devices", config.local_device_count)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    _initialized = True


def shutdown() -> None:
    """Leaves the job (a no-op unless `initialize` joined one).

    Call it when a process's work is done. Left to the interpreter's exit, the shutdown
    barrier runs after other libraries' exit handlers, and a process slowed there (a loaded
    machine, a background writer still closing) can miss the barrier's deadline.
    """
    global _initialized
    if _initialized:
        jax.distributed.shutdown()
        _initialized = False


def is_main_process() -> bool:
    """Whether this is process 0 (the one that prints and writes logs)."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Waits until every process of the job reaches the barrier `name` (a no-op alone).

    The barrier runs through the coordination service (host only: it does not queue behind
    device work). `name` must be unique per use and the same on every process.
    """
    if jax.process_count() > 1:
        multihost.sync_global_processes(name, timeout=timeout_s)


def preemption_agreed(step: int) -> bool:
    """Whether every process has agreed to stop and save at `step` after a preemption notice.

    Multi-process jobs only (JAX's preemption service, which listens for SIGTERM on every
    process and picks one step all of them reach); call it at every step with the same step
    numbers on every process. Single-process jobs watch signals themselves (`lwm.train.hooks`).
    """
    return jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step)
