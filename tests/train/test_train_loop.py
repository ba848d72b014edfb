"""The training loop: exact resumption after SIGTERM, NaN handling, accumulation, stages, CLI."""

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lwm.config import TrainRunConfig, load_config
from lwm.data.toy import progression_examples
from lwm.train.loop import NonFiniteLossError, train
from lwm.train.metrics import read_metrics

SMALL = [
    "--model.vocab_size", "128", "--model.hidden_size", "64", "--model.intermediate_size", "128",
    "--model.num_layers", "2", "--model.num_heads", "4", "--model.num_kv_heads", "2",
    "--model.max_seq_len", "256", "--data.seq_len", "32", "--data.batch_size", "8",
    "--mesh.dp", "2", "--mesh.fsdp", "-1", "--train.warmup_steps", "2", "--train.lr", "3e-3",
    "--logging.log_every", "1", "--logging.progress_bar", "false", "--logging.peak_tflops_per_device", "1",
]


def small_config(tmp_path: Path, *extra: str) -> TrainRunConfig:
    return load_config(TrainRunConfig, None, [*SMALL, "--logging.output_dir", str(tmp_path), *extra])


def examples():
    return progression_examples(300, 128, min_length=8, max_length=40, seed=0)


def losses_by_step(path: Path) -> dict[int, float]:
    # later records win: after a resume, recomputed steps overwrite the ones logged before
    return {int(r["step"]): r["loss"] for r in read_metrics(path / "metrics.jsonl")}


def test_sigterm_then_resume_gives_the_uninterrupted_loss_curve(tmp_path):
    steps = ["--train.steps", "10", "--checkpoint.every_steps", "4"]
    train(small_config(tmp_path / "straight", *steps), source=examples())
    expected = losses_by_step(tmp_path / "straight")
    assert len(expected) == 10

    interrupted = small_config(tmp_path / "interrupted", *steps)
    metrics_file = tmp_path / "interrupted" / "metrics.jsonl"

    def preempt_after_step_3():
        while not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 3):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=preempt_after_step_3, daemon=True)
    watcher.start()
    first = train(interrupted, source=examples())
    watcher.join(timeout=60)
    assert first[-1].preempted and 3 <= first[-1].steps < 10
    assert not (tmp_path / "interrupted" / "model").exists()
    second = train(interrupted, source=examples())
    assert not second[-1].preempted and second[-1].steps == 10
    resumed = losses_by_step(tmp_path / "interrupted")
    assert resumed == expected  # bit for bit, every step


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = small_config(tmp_path, "--train.steps", "3", "--checkpoint.every_steps", "3")
    train(config, source=examples())
    (tmp_path / "model").rename(tmp_path / "first-model")
    exploding = small_config(
        tmp_path, "--train.steps", "6", "--checkpoint.every_steps", "1", "--train.lr", "1e35",
        "--train.warmup_steps", "0",
    )
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train(exploding, source=examples())
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(tmp_path / "checkpoints") as manager:
        assert manager.latest_step() == 3
        restored = manager.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree.leaves(restored["state"]["params"])
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in leaves)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    from lwm.data.loader import make_batch_iterator
    from lwm.model.params_io import create_model
    from lwm.train.optimizer import make_optimizer
    from lwm.train.step import init_train_state, make_train_step

    config = small_config(tmp_path)
    model = create_model(config.model)
    graphdef, params = nnx.split(model)
    batch = next(make_batch_iterator(config.data, examples()))
    results = []
    for accum in (1, 4):
        train_config = dataclasses.replace(config.train, grad_accum_steps=accum)
        optimizer = make_optimizer(train_config)
        step = jax.jit(make_train_step(graphdef, optimizer, train_config))
        state, metrics = step(init_train_state(params, optimizer), {k: jnp.asarray(v) for k, v in batch.items()})
        results.append((state, metrics))
    (state1, metrics1), (state4, metrics4) = results
    assert metrics1["loss"] == pytest.approx(float(metrics4["loss"]), rel=1e-6)
    assert metrics1["grad_norm"] == pytest.approx(float(metrics4["grad_norm"]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(state1["params"]), jax.tree.leaves(state4["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_stages_continue_from_previous_weights(tmp_path):
    stages = json.dumps([
        {"name": "short", "seq_len": 32, "steps": 3},
        {"name": "long", "seq_len": 64, "rope_theta": 100000.0, "steps": 2, "lr": 1e-30},
    ])
    config = small_config(tmp_path, "--stages", stages)
    results = train(config, source=examples())
    assert [r.name for r in results] == ["short", "long"]
    import lwm

    short, long = lwm.load_model(str(tmp_path / "short" / "model")), lwm.load_model(str(tmp_path / "long" / "model"))
    assert long.config.rope_theta == 100000.0 and short.config.rope_theta == 10000.0
    # with a negligible learning rate the second stage keeps the first stage's weights
    for a, b in zip(jax.tree.leaves(nnx.state(short, nnx.Param)), jax.tree.leaves(nnx.state(long, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # a rerun skips finished stages
    assert train(config, source=examples()) == []


def test_cli_trains_from_a_token_store_and_exports_hf(tmp_path, capsys):
    from lwm.cli import main
    from lwm.data.store import TokenStoreWriter

    store = tmp_path / "store"
    with TokenStoreWriter.create(store, tokenizer_name="toy", text_vocab_size=128) as writer:
        for example in examples():
            writer.append(example)
    code = main([
        "train", "--config", str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"),
        *SMALL, "--logging.output_dir", str(tmp_path / "run"), "--data.store_path", str(store),
        "--train.steps", "2", "--checkpoint.export_hf", "true",
    ])
    assert code == 0
    assert "model in" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["vocab_size"] == 128
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
