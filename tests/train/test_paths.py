"""Run, checkpoint, stage and model directories named by URL stay URLs (issue 18.5).

`gs://` is served by an in-memory fsspec filesystem registered for the `gs`/`gcs` protocols,
which is what epath's fsspec backend opens for `gs://` (gcsfs in real use). Orbax's own GCS
client (google.cloud.storage) cannot be pointed at it, so in the end-to-end run Orbax's
`CheckpointManager` is replaced by a recorder that notes the directory it was given and
marks each saved step in the bucket.
"""

import os
from pathlib import Path

import orbax.checkpoint as ocp
import pytest
from etils import epath
from train_helpers import examples, install_fake_bucket, tiny_config

from lwm.paths import PathError, as_path, ensure_dir, exists, is_url
from lwm.train import hooks
from lwm.train.loop import train
from lwm.train.metrics import MetricsWriter, read_metrics


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    assert str(as_path("gs://bucket/run")) == "gs://bucket/run"
    assert str(as_path("gs://bucket/run") / "checkpoints" / "main") == "gs://bucket/run/checkpoints/main"
    assert str(as_path(epath.Path("s3://b/x"))) == "s3://b/x"
    # pathlib loses the URL: the bug this layer exists for
    assert str(Path("gs://bucket/run").absolute()).endswith("gs:/bucket/run")
    monkeypatch.chdir(tmp_path)
    assert str(as_path("runs/a")) == os.path.join(str(tmp_path), "runs", "a")
    assert is_url("gs://b/x") and is_url("hf://org/model") and not is_url("/tmp/gs:/x") and not is_url("runs/a")
    with pytest.raises(PathError, match="memory:// is not supported"):
        as_path("memory://bucket/run")


def test_fake_bucket_reads_and_writes_through_epath():
    bucket = install_fake_bucket()
    directory = ensure_dir("gs://bucket/some/dir")
    (directory / "a.txt").write_text("x")
    assert exists("gs://bucket/some/dir/a.txt") and not exists("gs://bucket/other")
    assert "/bucket/some/dir/a.txt" in bucket.store
    assert not Path("gs:").exists()  # nothing went to a local folder named like the URL
    writer = MetricsWriter("gs://bucket/some/run")
    writer.write(1, {"loss": 2.5})
    writer.write(2, {"loss": 1.5})
    writer.close()
    resumed = MetricsWriter("gs://bucket/some/run")  # a resumed run keeps the earlier records
    resumed.write(3, {"loss": 1.0})
    resumed.close()
    assert [r["loss"] for r in read_metrics("gs://bucket/some/run/metrics.jsonl")] == [2.5, 1.5, 1.0]


class RecordingManager:
    """Stands in for Orbax's CheckpointManager on the fake bucket (see the module docstring)."""

    directories: list[str] = []

    def __init__(self, directory, options=None, item_names=None):
        self.directory = epath.Path(directory)
        RecordingManager.directories.append(os.fspath(directory))
        self.steps = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit()) \
            if self.directory.exists() else []

    def all_steps(self):
        return list(self.steps)

    def latest_step(self):
        return self.steps[-1] if self.steps else None

    def save(self, step, args=None, force=False):
        (self.directory / str(step)).mkdir(parents=True, exist_ok=True)
        self.steps.append(step)

    def wait_until_finished(self):
        pass

    def close(self):
        pass

    def reload(self):
        pass


def test_train_keeps_gs_urls_for_every_directory(tmp_path, monkeypatch):
    bucket = install_fake_bucket()
    RecordingManager.directories = []
    monkeypatch.setattr(ocp, "CheckpointManager", RecordingManager)
    exported: list[str] = []

    def fake_save_model(model, directory):
        exported.append(os.fspath(directory))
        (epath.Path(directory) / "params").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(hooks, "save_model", fake_save_model)
    monkeypatch.chdir(tmp_path)  # a URL mistaken for a local path would land here
    config = tiny_config("gs://bucket/run", "--train.steps", "2", "--checkpoint.every_steps", "1")
    results = train(config, source=examples())
    assert results[-1].steps == 2 and not results[-1].preempted
    assert RecordingManager.directories == ["gs://bucket/run/checkpoints"]
    assert exported == ["gs://bucket/run/model"] and str(results[-1].model_dir) == "gs://bucket/run/model"
    assert {"/bucket/run/config.yaml", "/bucket/run/metrics.jsonl"} <= set(bucket.store)
    assert [r["step"] for r in read_metrics("gs://bucket/run/metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in epath.Path("gs://bucket/run/checkpoints").iterdir()) == ["1", "2"]
    assert not any(tmp_path.iterdir())
    # the rerun finds the finished stage in the bucket and skips it
    assert train(config, source=examples()) == []
    # a separate checkpoint.directory URL gets the stage's sub-folder
    RecordingManager.directories = []
    train(tiny_config("gs://bucket/run2", "--train.steps", "1", "--checkpoint.directory", "gs://bucket/ckpt"),
          source=examples())
    assert RecordingManager.directories == ["gs://bucket/ckpt/main"]
