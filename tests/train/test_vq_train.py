"""VQ tokenizer training end to end: mp4 videos of moving squares -> `train-vq` -> checkpoint
directory -> `load_vq_tokenizer` -> encode/decode reconstructs held-out frames."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from video_helpers import encode_with_pyav

from lwm.config import ConfigError, load_config
from lwm.config.vq import VQModelConfig, VQTrainRunConfig

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vq" / "tiny.yaml"
# A smaller model than tiny.yaml so that the test trains in well under a minute of CPU time.
TEST_OVERRIDES = [
    "--model.resolution", "32", "--model.hidden_channels", "16", "--model.channel_mult", "[1, 2]",
    "--model.num_res_blocks", "1", "--model.z_channels", "16", "--model.codebook_size", "128",
    "--model.codebook_dim", "16", "--model.norm_num_groups", "8",
    "--train.batch_size", "8", "--train.steps", "160", "--train.lr", "2e-3",
    "--train.warmup_steps", "20", "--train.restart_every", "40", "--train.log_every", "20",
    "--data.frames_per_video", "24",
]
COLORS = [(230, 40, 40), (40, 200, 60), (50, 80, 240), (240, 210, 40)]


def squares_video(rng: np.random.Generator, num_frames: int = 24, size: int = 32) -> np.ndarray:
    """Two coloured squares bouncing inside a plain dark frame."""
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    background = (16, 16, 24)
    shapes = []
    for _ in range(2):
        side = int(rng.integers(6, 12))
        shapes.append([rng.uniform(0, size - side, 2), rng.uniform(-2.5, 2.5, 2), side,
                       COLORS[rng.integers(len(COLORS))]])
    for index in range(num_frames):
        frames[index] = background
        for shape in shapes:
            position, velocity, side, color = shape
            top, left = np.round(position).astype(int)
            frames[index, top:top + side, left:left + side] = color
            position += velocity
            for axis in range(2):  # bounce off the walls
                if not 0 <= position[axis] <= size - side:
                    velocity[axis] = -velocity[axis]
                    position[axis] = np.clip(position[axis], 0, size - side)
    return frames


def _run_train_vq(argv):
    from lwm.cli.vq import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args, rest = parser.parse_known_args(argv)
    assert args.accepts_overrides
    return args.func(args, rest)


def test_train_vq_reconstructs_held_out_frames(tmp_path, capsys):
    rng = np.random.default_rng(0)
    videos = tmp_path / "videos"
    videos.mkdir()
    for index in range(6):
        encode_with_pyav(videos / f"clip{index}.mp4", squares_video(rng), 8, "libx264",
                         options={"crf": "12"})
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 10)
    run_dir = tmp_path / "run"
    assert _run_train_vq(["train-vq", "--config", str(TINY_CONFIG), "--data.paths", f"[{videos}]",
                          "--checkpoint.dir", str(run_dir), *TEST_OVERRIDES]) == 0
    output = capsys.readouterr()
    assert "skipped 1 of 7 videos" in output.err and "broken.mp4" in output.err
    assert "144 frames from 6 videos" in output.out

    from lwm.model.vqgan_convert import load_vq_tokenizer

    step_dir = run_dir / "step_00000160"
    assert (step_dir / "config.yaml").is_file() and (step_dir / "model").is_dir()
    tokenizer = load_vq_tokenizer(run_dir)  # the directory alone: config.yaml + Orbax state
    assert tokenizer.config.resolution == 32 and tokenizer.codebook_size == 128

    held_out = np.concatenate([squares_video(np.random.default_rng(seed)) for seed in (100, 101)])
    codes = tokenizer.encode(held_out)
    assert codes.shape == (48, 16, 16) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 128
    frames = tokenizer.decode(codes)
    assert frames.shape == held_out.shape and frames.dtype == np.uint8

    pixels = held_out / 127.5 - 1.0
    mse = float(np.mean((frames / 127.5 - 1.0 - pixels) ** 2))
    baseline = float(np.mean((pixels - pixels.mean(axis=0)) ** 2))
    print(f"held-out reconstruction MSE {mse:.4f}, mean-frame baseline {baseline:.4f}")
    assert mse < 0.35 * baseline, (mse, baseline)
    assert mse < 0.05, mse

    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 160
    assert log[-1]["codebook_usage"] > 0.3 and log[-1]["perplexity"] > 10
    assert log[-1]["loss"] < log[0]["loss"]


def test_dead_codes_are_reseeded_from_encoder_outputs():
    import jax
    import jax.numpy as jnp

    from lwm.model.vqgan import init_vqgan
    from lwm.train.vq import CodebookEMA, _restart_dead_codes

    config = VQModelConfig(resolution=8, hidden_channels=8, channel_mult=(1,), num_res_blocks=1,
                           z_channels=4, codebook_size=6, codebook_dim=4, norm_num_groups=4)
    model = init_vqgan(config)
    ema = CodebookEMA(6, 4)
    ema.usage[...] = jnp.array([3.0, 0, 1, 0, 0, 2])
    before = np.asarray(model.quantize.codebook[...])
    latents = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 4)) * 5, jnp.float32)
    restarted, used = _restart_dead_codes(model, ema, latents, jax.random.key(0), jnp.asarray(True))
    assert int(restarted) == 3 and float(used) == pytest.approx(0.5)
    after = np.asarray(model.quantize.codebook[...])
    np.testing.assert_array_equal(after[[0, 2, 5]], before[[0, 2, 5]])
    flat = np.asarray(latents).reshape(-1, 4)
    for code in (1, 3, 4):  # each dead code now sits next to one of the encoder outputs
        assert np.min(np.linalg.norm(flat - after[code], axis=1)) < 0.5
    assert np.all(np.asarray(ema.usage[...]) == 0)
    # Without the restart flag nothing changes.
    ema.usage[...] = jnp.zeros(6)
    _restart_dead_codes(model, ema, latents, jax.random.key(1), jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(model.quantize.codebook[...]), after)


def test_vq_config_validation_names_the_field():
    config = load_config(VQTrainRunConfig, TINY_CONFIG)
    assert config.model.tokens_per_frame == config.model.codes_per_side**2
    with pytest.raises(ConfigError, match="model.norm_num_groups"):
        load_config(VQTrainRunConfig, TINY_CONFIG, ["--model.norm_num_groups", "7"])
    with pytest.raises(ConfigError, match="resolution=30"):
        load_config(VQTrainRunConfig, TINY_CONFIG, ["--model.resolution", "30"])
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(VQTrainRunConfig, TINY_CONFIG, ["--train.ema_decay", "1.5"])
    with pytest.raises(ConfigError, match="z_channels"):
        VQModelConfig(hidden_channels=32, norm_type="spatial", z_channels=8,
                      codebook_dim=16).validate()
    amused = load_config(VQTrainRunConfig, TINY_CONFIG.parent / "amused-f16.yaml").model
    assert (amused.tokens_per_frame, amused.codebook_size, amused.codebook_dim) == (256, 8192, 64)
    assert amused.channel_mult == (1, 2, 2, 4, 6) and not amused.mid_attention


def test_train_vq_without_videos_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.paths is empty"):
        _run_train_vq(["train-vq", "--config", str(TINY_CONFIG), "--checkpoint.dir",
                       str(tmp_path / "run")])
    with pytest.raises(ConfigError, match="does not exist"):
        _run_train_vq(["train-vq", "--config", str(TINY_CONFIG), "--data.paths",
                       f"[{tmp_path / 'missing'}]"])
