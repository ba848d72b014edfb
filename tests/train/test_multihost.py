"""Two processes on localhost (CPU, gloo) train, checkpoint, stop and resume as one job."""

import os
import socket
import subprocess
import sys
from pathlib import Path

from lwm.train.metrics import read_metrics

WORKER = Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_job(output_dir: Path, stop_after: int) -> list[str]:
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(index), str(output_dir), str(stop_after)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for index in range(2)
    ]
    outputs = []
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        outputs.append(output)
    return outputs


def test_two_processes_train_checkpoint_and_resume_exactly(tmp_path):
    run_job(tmp_path / "straight", stop_after=0)
    first = run_job(tmp_path / "resumed", stop_after=2)
    assert all("step 2 preempted True" in output for output in first)
    second = run_job(tmp_path / "resumed", stop_after=0)
    assert all("step 4 preempted False" in output for output in second)
    # one checkpoint directory written collectively, metrics written by process 0 only
    steps = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == ["2", "4"]
    straight = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")}
    resumed = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")}
    assert sorted(straight) == [1, 2, 3, 4]
    assert resumed == straight
