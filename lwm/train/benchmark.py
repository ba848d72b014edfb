"""Training benchmarks: throughput and MFU against this machine's matmul rate, and the longest
sequence a model trains on within a memory budget (ring attention against dense).

Each measurement takes the median of repeated steps and brackets them with timings of a
2048² float32 matmul, so a fraction of the matmul rate is reported beside raw numbers (CPU
speed drifts within seconds). Memory comes from XLA's compiled memory analysis of the real
sharded train step, per device, times the device count (fake CPU devices share host memory).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np

from lwm.config import TrainRunConfig
from lwm.data.batch import synthetic_batch
from lwm.train.metrics import measure_matmul_flops, train_flops_per_token
from lwm.train.plan import measured_train_step_bytes
from lwm.train.setup import train_setup


@dataclasses.dataclass(frozen=True)
class ThroughputResult:
    """Median step time, tokens/s, achieved FLOP/s and its fraction of the matmul rate."""

    name: str
    seq_len: int
    batch_size: int
    step_seconds: float
    tokens_per_second: float
    achieved_flops: float
    matmul_flops: float

    @property
    def mfu(self) -> float:
        """Achieved FLOP/s over the measured matmul FLOP/s of all devices' shared cores."""
        return self.achieved_flops / self.matmul_flops


def compile_train_step(config: TrainRunConfig) -> tuple[Any, Any, Any, Any]:
    """The compiled sharded train step, its initial state and a global synthetic batch."""
    setup = train_setup(config)
    state = setup.init_state(setup.create_params())
    batch = {key: jax.device_put(value, setup.batch_sharding) for key, value in synthetic_batch(config.data.batch_size, config.data.seq_len, config.model.vocab_size).items()}
    return setup.compile(), state, batch, setup.mesh


def measure_throughput(name: str, config: TrainRunConfig, repeats: int = 5) -> ThroughputResult:
    """Median time of `repeats` train steps after a warm-up step."""
    compiled, state, batch, mesh = compile_train_step(config)
    with jax.set_mesh(mesh):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        rate_before = measure_matmul_flops()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - start)
        rate_after = measure_matmul_flops()
    step_seconds = float(np.median(times))
    tokens = config.data.batch_size * config.data.seq_len
    achieved = tokens * train_flops_per_token(config.model, config.data.seq_len) / step_seconds
    return ThroughputResult(name, config.data.seq_len, config.data.batch_size, step_seconds,
                            tokens / step_seconds, achieved, (rate_before + rate_after) / 2)


def compiled_peak_bytes(config: TrainRunConfig) -> int:
    """Peak bytes of one train step summed over devices, from XLA's memory analysis."""
    return measured_train_step_bytes(config)["peak_bytes"] * jax.device_count()


def longest_trainable_sequence(
    base: TrainRunConfig, budget_bytes: int, start: int = 1024, limit: int = 1 << 22
) -> tuple[int, dict[int, int]]:
    """The longest power-of-two sequence whose train step fits `budget_bytes` in total."""
    seq_len, best, seen = start, 0, {}
    while seq_len <= limit:
        config = dataclasses.replace(
            base,
            data=dataclasses.replace(base.data, seq_len=seq_len),
            model=dataclasses.replace(base.model, max_seq_len=max(base.model.max_seq_len, seq_len)),
        )
        try:
            peak = compiled_peak_bytes(config)
        except Exception as error:  # XLA refuses buffers beyond addressable memory
            seen[seq_len] = -1
            print(f"  seq {seq_len}: does not compile ({type(error).__name__})", flush=True)
            break
        seen[seq_len] = peak
        print(f"  seq {seq_len}: {peak / 2**30:.2f} GiB", flush=True)
        if peak > budget_bytes:
            break
        best = seq_len
        seq_len *= 2
    return best, seen


__all__ = [
    "ThroughputResult", "compile_train_step", "compiled_peak_bytes",
    "longest_trainable_sequence", "measure_throughput",
]
