"""`lwm plan`: the memory plan against XLA's compiled memory of the real train step."""

from pathlib import Path

import pytest

from lwm.config import TrainRunConfig, load_config
from lwm.train.plan import GIB, measured_train_step_bytes, plan_memory

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.mark.parametrize("overrides", [
    [],
    ["--model.remat", "full"],
    ["--model.attention", "blockwise", "--data.seq_len", "512"],
    ["--mesh.dp", "4", "--mesh.fsdp", "2"],
])
def test_plan_tracks_measured_peak_for_tiny(overrides):
    config = load_config(TrainRunConfig, TINY, overrides)
    planned = plan_memory(config, 8).training_bytes
    measured = measured_train_step_bytes(config)["peak_bytes"]
    assert 0.6 <= planned / measured <= 1.6, (planned, measured)


def test_plan_counts_sharding_and_cache_exactly():
    config = load_config(TrainRunConfig, TINY, ["--mesh.fsdp", "-1"])
    one = plan_memory(config, 1, 4096)
    eight = plan_memory(config, 8, 4096)
    assert one.parameters == eight.parameters
    assert one.parameter_bytes == one.parameters * 4
    assert eight.parameter_bytes < one.parameter_bytes / 4  # fsdp=8 splits every matrix
    m = config.model
    assert one.kv_cache_bytes == 2 * m.num_layers * m.kv_heads * m.head_dim * 4096 * 4


def test_report_says_whether_7b_fits(capsys):
    from lwm.cli import main

    config = Path(__file__).resolve().parents[2] / "configs" / "llama2-7b.yaml"
    assert main(["plan", "--config", str(config), "--devices", "8", "--device-memory-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "fits in 80 GiB" in out
    plan = plan_memory(load_config(TrainRunConfig, config), 1)
    assert plan.training_bytes > 16 * GIB
    assert "does NOT fit" in plan.report(16)
