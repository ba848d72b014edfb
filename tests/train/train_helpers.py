"""Shared pieces of the trainer tests (imported as `train_helpers`): a tiny config, toy data,
loss curves, a fake bucket."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import fsspec
import jax
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem

from lwm.config import TrainRunConfig, load_config
from lwm.data.store import TokenStoreWriter
from lwm.data.toy import progression_examples
from lwm.train.metrics import read_metrics

VOCAB = 64
TINY = [
    "--model.vocab_size", str(VOCAB), "--model.hidden_size", "32", "--model.intermediate_size", "64",
    "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "1",
    "--model.max_seq_len", "64", "--data.seq_len", "16", "--data.batch_size", "8",
    "--mesh.dp", "2", "--mesh.fsdp", "-1", "--train.warmup_steps", "1", "--train.lr", "3e-3",
    "--logging.log_every", "1", "--logging.progress_bar", "false", "--logging.peak_tflops_per_device", "1",
]


def tiny_config(output_dir: str | os.PathLike, *extra: str) -> TrainRunConfig:
    """The tiny model's run config writing into `output_dir`, with `extra` overrides."""
    return load_config(TrainRunConfig, None, [*TINY, "--logging.output_dir", str(output_dir), *extra])


def examples(count: int = 200):
    """Toy arithmetic progressions in the tiny model's vocabulary."""
    return progression_examples(count, VOCAB, min_length=6, max_length=30, seed=0)


def write_store(path: Path, *, text_vocab_size: int = VOCAB, **kwargs) -> Path:
    """A token store of `examples()` at `path`."""
    with TokenStoreWriter.create(path, tokenizer_name="toy", text_vocab_size=text_vocab_size, **kwargs) as writer:
        for example in examples():
            writer.append(example)
    return path


def losses_by_step(run_dir: str | os.PathLike) -> dict[int, float]:
    """Step → loss of a run's metrics.jsonl; later records win (a resumed run recomputes steps)."""
    return {int(r["step"]): r["loss"] for r in read_metrics(epath.Path(run_dir) / "metrics.jsonl")}


class FakeBucket(MemoryFileSystem):
    """An in-memory stand-in for Google Cloud Storage: `gs://bucket/x` lives in this process."""

    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs: list = [""]

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        path = path.lstrip("/").rstrip("/")
        return "/" + path if path else ""


def install_fake_bucket() -> type[FakeBucket]:
    """Routes epath's (fsspec) `gs://` to a fresh `FakeBucket`; returns the class (its `store`)."""
    FakeBucket.store = {}
    FakeBucket.pseudo_dirs = [""]
    fsspec.register_implementation("gcs", FakeBucket, clobber=True)
    fsspec.register_implementation("gs", FakeBucket, clobber=True)
    from etils.epath import backend

    backend.fsspec_backend._get_filesystem.cache_clear()
    return FakeBucket


CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                 "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def compilation_cache(directory: os.PathLike):
    """JAX's persistent compilation cache in `directory` (every train() compiles the same step;
    later ones, and subprocesses given `cache_env(directory)`, then load it instead)."""
    before = [getattr(jax.config, name) for name in CACHE_OPTIONS]
    for name, value in zip(CACHE_OPTIONS, (str(directory), 0, 0)):
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in zip(CACHE_OPTIONS, before):
            jax.config.update(name, value)


def cache_env(directory: os.PathLike) -> dict[str, str]:
    """Environment variables giving a subprocess the same compilation cache."""
    return {"JAX_COMPILATION_CACHE_DIR": str(directory), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
