"""`lwm train` in a subprocess, stopped for real: `kill -9` at random moments (including during
a save), SIGTERM once, SIGTERM twice in a row, then a truncated file in the newest checkpoint.
Every rerun resumes from the newest complete checkpoint and the loss curve ends exactly as an
uninterrupted run's (issue 19.1, 19.2)."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from train_helpers import cache_env, compilation_cache, losses_by_step, tiny_config, write_store

from lwm.config import TrainRunConfig, load_config, save_config
from lwm.train.loop import newest_step_on_disk, train

STEPS = 16
LAUNCH = "import sys; from lwm.cli import main; sys.exit(main(sys.argv[1:]))"
DEADLINE_S = 240


def start(config_file: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "train", "--config", str(config_file), "--logging.output_dir", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **cache_env(config_file.parent / "jax-cache")},
    )


def logged_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_for_progress(process: subprocess.Popen, run: Path, lines: int) -> None:
    """Waits until metrics.jsonl holds `lines` records (the run is past start-up and stepping)."""
    deadline = time.monotonic() + DEADLINE_S
    while logged_lines(run) < lines:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=DEADLINE_S)
    return process.returncode, out, err


def test_kills_and_signals_at_random_moments_lose_nothing_beyond_the_last_checkpoint(tmp_path):
    rng = random.Random(0)
    store = write_store(tmp_path / "store")
    config_file = tmp_path / "tiny.yaml"
    save_config(tiny_config(tmp_path / "unused", "--train.steps", str(STEPS), "--checkpoint.every_steps", "1",
                            "--data.store_path", str(store)), config_file)
    straight = tmp_path / "straight"
    with compilation_cache(tmp_path / "jax-cache"):  # the subprocesses load this compilation
        train(load_config(TrainRunConfig, str(config_file), ["--logging.output_dir", str(straight)]))
    expected = losses_by_step(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    run, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # kill -9 twice, at a random moment a little after stepping started (a save starts every
    # step and runs in the background, so a kill usually lands in one)
    for _ in range(2):
        process = start(config_file, run)
        wait_for_progress(process, run, logged_lines(run) + 1)
        time.sleep(rng.uniform(0.0, 0.05))
        process.kill()
        process.wait(timeout=60)
        assert process.returncode == -signal.SIGKILL
    resumed_from = newest_step_on_disk(checkpoints)

    # SIGTERM once: a checkpoint of the last finished step, exit code 0, one line saying so
    process = start(config_file, run)
    wait_for_progress(process, run, logged_lines(run) + 2)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    [line] = [line for line in out.splitlines() if line.strip()]
    assert "preempted (SIGTERM received)" in line and "resume by rerunning" in line
    stopped_at = int(line.split("step ")[1].split(",")[0])
    assert newest_step_on_disk(checkpoints) == stopped_at >= (resumed_from or 0)

    # SIGTERM twice in a row: the second stops at once (during the first one's save, or the
    # step before it); the checkpoints already there stay readable
    process = start(config_file, run)
    wait_for_progress(process, run, logged_lines(run) + 1)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    code, out, err = finish(process)
    assert code in (0, 128 + signal.SIGTERM), err[-3000:]

    # a truncated file in the newest complete checkpoint: reported in one line, set aside, and
    # the older one resumed; the run then finishes on the uninterrupted curve
    newest = newest_step_on_disk(checkpoints)
    assert newest is not None and newest < STEPS
    metadata = checkpoints / str(newest) / "state" / "_METADATA"
    metadata.write_bytes(metadata.read_bytes()[: metadata.stat().st_size // 2])
    process = start(config_file, run)
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    assert (checkpoints / f"{newest}.corrupt").is_dir()
    assert sum("incomplete or corrupt" in line for line in err.splitlines()) == 1
    assert "model in" in out
    assert losses_by_step(run) == expected
