"""The demo end to end: a fast run at tiny sizes (CI) and the learning bars on the default (slow).

Both run in this process on the eight fake CPU devices of `tests/conftest.py`; the demo's mesh
(`dp=2, fsdp=-1, sp=2` with ring attention) then takes `fsdp=2`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
FULL_CONFIG = CONFIG.with_name("demo-full.yaml")

TINY = [
    "--train.steps", "4", "--train.warmup_steps", "1", "--logging.log_every", "2",
    "--demo_data.chat_steps", "2", "--demo_data.document_chars", "300",
    "--vq.train.steps", "4", "--vq.train.warmup_steps", "1", "--vq.train.batch_size", "8",
    "--synthetic.num_videos", "10", "--synthetic.num_documents", "10", "--synthetic.held_out_fraction", "0.2",
    "--evaluation.max_questions", "4", "--evaluation.continuation_videos", "2",
    "--demo_data.short_passkeys", "8", "--demo_data.recall_drills", "4", "--evaluation.needle_context_min", "128",
    "--evaluation.needle_context_max", "160", "--evaluation.needle_intervals", "1",
    "--evaluation.needle_depths", "2", "--evaluation.needle_rounds", "1", "--evaluation.max_new_tokens", "8",
]


def _run(tmp_path: Path, overrides: list[str], config_path: Path = CONFIG) -> tuple[dict, Path]:
    from lwm.config import load_config
    from lwm.demo import DemoConfig, run_demo

    output = tmp_path / "demo"
    config = load_config(DemoConfig, config_path, [*overrides, "--logging.output_dir", str(output)])
    return run_demo(config), output


def _is_fraction(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_demo_pipeline_end_to_end_at_tiny_sizes(tmp_path):
    numbers, output = _run(tmp_path, TINY)
    for name in ("report.md", "results.json", "loss_curves.png", "video_qa.png", "continuation.gif",
                 "continuation.png", "needle/heatmap.png", "pretrain/model", "chat/model"):
        assert (output / name).exists(), name
    for picture in ("loss_curves.png", "video_qa.png", "continuation.png", "needle/heatmap.png"):
        assert (output / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
    assert (output / "continuation.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    stored = json.loads((output / "results.json").read_text())
    assert stored["bars"].keys() == numbers["bars"].keys() == {
        "needle_accuracy_at_trained_length", "video_qa_uses_video", "video_qa_above_chance",
        "next_frame_beats_copy", "continuation_beats_copy_on_changed_codes", "vision_loss_not_forgotten"}
    for bar in stored["bars"].values():
        assert bar.keys() == {"value", "threshold", "met"} and isinstance(bar["met"], bool)
    bar = stored["bars"]["video_qa_uses_video"]
    assert bar["value"] == pytest.approx(stored["video_qa"]["accuracy"] - stored["video_qa"]["text_only_accuracy"])
    assert bar["met"] == (bar["value"] >= bar["threshold"] == 0.1)
    assert stored["seed"] == 0 and stored["processor"]
    qa, frame, needle = stored["video_qa"], stored["next_frame"], stored["needle"]
    assert qa["questions"] > 0 and 0 < qa["chance"] < 1
    assert _is_fraction(qa["accuracy"]) and _is_fraction(qa["text_only_accuracy"])
    assert frame["codes"] > 0 and _is_fraction(frame["accuracy"]) and _is_fraction(frame["copy_last_frame_accuracy"])
    assert _is_fraction(needle["accuracy"]) and _is_fraction(needle["accuracy_at_trained_length"])
    assert _is_fraction(needle["digits_right"])
    go_on = stored["continuation"]
    assert go_on["videos"] == 2 and _is_fraction(go_on["code_accuracy"]) and _is_fraction(go_on["balanced_accuracy"])
    assert go_on["balanced_accuracy"] == pytest.approx((go_on["changed_accuracy"] + go_on["unchanged_accuracy"]) / 2)
    by_frame = go_on["balanced_accuracy_by_frame"]
    assert len(by_frame) == go_on["generated_frames"] and all(_is_fraction(value) for value in by_frame)
    assert all(row["needs"] in ("one frame", "time") for row in qa["by_kind"].values())
    assert math.isfinite(frame["vision_loss"]) and math.isfinite(frame["pretrained_vision_loss"])
    losses = stored["losses"]
    assert all(math.isfinite(losses["final"][key]) for key in ("loss", "text_loss", "vision_loss"))
    # Both stages logged, and the model trained on both modalities from the token stores.
    metrics = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert np.count_nonzero(np.diff([m["step"] for m in metrics]) < 0) == 1
    # Each stage's store holds exactly the kinds of examples configs/demo.yaml names for it.
    kinds, stores = stored["data"]["examples"], stored["data"]["stores"]
    assert stores["pretrain"]["examples"] == kinds["text_to_video"] + kinds["video_to_text"] + \
        kinds["passkey_short"] + kinds["recall"] > 0
    assert kinds["passkey_short"] == 8 and kinds["recall"] == 4
    assert stores["chat"]["examples"] == kinds["video_qa"] + kinds["passkey"] + kinds["text_to_video"] + \
        kinds["video_to_text"] > 0
    report = (output / "report.md").read_text()
    for piece in ("Learning bars", "loss_curves.png", "video_qa.png", "continuation.gif", "needle/heatmap.png",
                  "chance", "one frame", "Met "):
        assert piece in report


def test_one_seed_sets_the_world_tokenizer_init_and_data_order():
    from lwm.config import load_config
    from lwm.demo import DemoConfig

    config = load_config(DemoConfig, CONFIG, ["--seed", "3"])
    assert (config.seed, config.synthetic.seed, config.vq.train.seed, config.train.seed, config.data.seed) == \
        (3, 3, 3, 3, 3)
    assert load_config(DemoConfig, CONFIG).synthetic.seed == 0


def test_demo_refuses_to_clear_a_folder_it_did_not_make(tmp_path):
    from lwm.config import ConfigError, load_config
    from lwm.demo import DemoConfig, run_demo

    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "precious.txt").write_text("keep me")
    config = load_config(DemoConfig, CONFIG, [*TINY, "--logging.output_dir", str(tmp_path / "demo")])
    with pytest.raises(ConfigError, match="not a demo output folder"):
        run_demo(config)
    assert (tmp_path / "demo" / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("config_path", [CONFIG, FULL_CONFIG], ids=["demo", "demo-full"])
def test_demo_meets_the_learning_bars(tmp_path, config_path):
    """`make demo` (10 minutes) and `make demo-full` (45 minutes), seed 0, every bar."""
    numbers, _ = _run(tmp_path, ["--seed", "0"], config_path)
    missed = {name: bar for name, bar in numbers["bars"].items() if not bar["met"]}
    assert not missed, f"learning bars not met: {missed}"
