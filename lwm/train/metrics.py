"""Training metrics: FLOPs and MFU, and the writers (JSONL always, TensorBoard, W&B).

FLOPs per trained token (forward + backward = 3 × forward, a multiply-add = 2 FLOPs):

    6 · N  +  6 · L · S · E

where N is the number of parameters used per token (all matrices, the embedding lookup
excluded, the output head included), L the layer count, E the model width and S the packed row
length. The second term is attention's QKᵀ and AV products: 2 matmuls × 2 FLOPs × S·E per
query token per layer in the forward, halved because the mask is causal, times 3 for training.
MFU = achieved FLOPs per second / (peak FLOPs per second per device × devices).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from lwm.config import ModelConfig
from lwm.paths import as_path, is_url

# A URL's file cannot be appended to (object stores replace whole objects): it is rewritten
# with every record held so far, at most this often, and on close.
URL_FLUSH_SECONDS = 60.0


def matmul_parameters(config: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (embedding lookups excluded)."""
    E, F, L = config.hidden_size, config.intermediate_size, config.num_layers
    attention = E * config.num_heads * config.head_dim * 2 + E * config.kv_heads * config.head_dim * 2
    per_layer = attention + 3 * E * F
    head = E * config.vocab_size + (E * config.vision_vocab_size if config.has_vision else 0)
    return L * per_layer + head


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """FLOPs to train on one token: 6·N + 6·L·S·E (see the module docstring)."""
    return 6.0 * matmul_parameters(config) + 6.0 * config.num_layers * seq_len * config.hidden_size


def measure_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """One device's achieved float32 matmul FLOP/s: the peak used for MFU when none is configured.

    The operand is committed to one device, so that inside a mesh context the product is not
    replicated over every device (which would divide the apparent rate by the device count).
    """
    device = jax.local_devices()[0]
    with jax.set_mesh(jax.make_mesh((1,), ("one",), devices=[device])):
        a = jax.device_put(np.ones((size, size), np.float32), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a).block_until_ready()
            times.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.median(times))


def machine_peak_flops(peak_tflops_per_device: float) -> float:
    """Peak FLOP/s of all devices of the job, the denominator of MFU.

    With `peak_tflops_per_device` set (an accelerator's datasheet number) it is that times the
    device count. Otherwise the matmul rate is measured; fake CPU devices share the host's cores,
    so on CPU one device's measured rate already is the whole machine's.
    """
    if peak_tflops_per_device:
        return peak_tflops_per_device * 1e12 * jax.device_count()
    rate = measure_matmul_flops()
    return rate if jax.default_backend() == "cpu" else rate * jax.device_count()


class MetricsWriter:
    """Writes one record per logged step to `metrics.jsonl`, and to TensorBoard / W&B if enabled.

    `output_dir` may be a local path or a URL (`gs://bucket/run`).
    """

    def __init__(self, output_dir: str | os.PathLike, *, tensorboard: bool = False, wandb_project: str = "",
                 run_config: dict[str, Any] | None = None, enabled: bool = True):
        self.enabled = enabled
        self.path = as_path(output_dir) / "metrics.jsonl"
        self._tensorboard = None
        self._wandb = None
        self._url_lines: list[str] | None = None
        self._url_flushed = 0.0
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if is_url(self.path):
            self._url_lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))
        if wandb_project:
            try:
                import wandb
            except ImportError as error:
                raise RuntimeError(
                    "logging.wandb_project is set but the wandb package is not installed: "
                    "pip install wandb, or leave logging.wandb_project empty"
                ) from error
            self._wandb = wandb.init(project=wandb_project, config=run_config or {})

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Appends one record (process 0 only writes; others are disabled)."""
        if not self.enabled:
            return
        record = {"step": step, **{key: float(value) for key, value in metrics.items()}}
        line = json.dumps(record) + "\n"
        if self._url_lines is None:
            with self.path.open("a") as handle:
                handle.write(line)
        else:
            self._url_lines.append(line)
            if time.monotonic() - self._url_flushed >= URL_FLUSH_SECONDS:
                self._flush_url()
        if self._tensorboard is not None:
            for key, value in metrics.items():
                self._tensorboard.add_scalar(key, float(value), step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def _flush_url(self) -> None:
        self.path.write_text("".join(self._url_lines or []))
        self._url_flushed = time.monotonic()

    def close(self) -> None:
        """Flushes and closes the optional writers."""
        if self._url_lines is not None:
            self._flush_url()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """The records of a `metrics.jsonl` (a local path or a URL)."""
    return [json.loads(line) for line in as_path(path).read_text().splitlines() if line.strip()]
