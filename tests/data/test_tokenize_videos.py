"""`lwm tokenize`: real encoded videos through a trained VQ tokenizer into a token store."""

import json

import numpy as np
import pytest

from lwm.config import ConfigError, load_config
from lwm.config.tokenize import TokenizeConfig
from lwm.data.store import TokenStore
from lwm.data.video import write_video


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    from lwm.config.vq import VQTrainRunConfig
    from lwm.train.vq import train_vq

    run_dir = tmp_path_factory.mktemp("vq")
    config = load_config(VQTrainRunConfig, "configs/vq/tiny.yaml", [
        "--train.steps", "3", "--train.warmup_steps", "1", "--checkpoint.dir", str(run_dir),
    ])
    frames = np.random.default_rng(0).integers(0, 255, size=(16, 32, 32, 3), dtype=np.uint8)
    train_vq(config, frames=frames, progress=False)
    return run_dir


def make_manifest(folder):
    rng = np.random.default_rng(1)
    lines = []
    for index in range(3):
        path = folder / f"clip{index}.mp4"
        write_video(path, rng.integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8), fps=4)
        lines.append({"video": path.name, "caption": f"clip number {index}"})
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    lines.insert(1, {"video": "broken.mp4", "caption": "broken"})
    manifest = folder / "clips.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def config_for(tmp_path, vq_run, *extra):
    return load_config(TokenizeConfig, "configs/data/tokenize_videos.yaml", [
        "--manifest", str(make_manifest(tmp_path)), "--vq_tokenizer", str(vq_run),
        "--data.store_path", str(tmp_path / "store"), "--num_frames", "4", "--workers", "2",
        "--progress_bar", "false", *extra,
    ])


def test_videos_become_vision_spans_in_the_store(tmp_path, vq_run):
    from lwm.train.tokenize import tokenize_videos

    summary = tokenize_videos(config_for(tmp_path, vq_run))
    assert summary.encoded == 3 and len(summary.bad_files) == 1
    assert "broken.mp4" in summary.describe() and "line 2" in summary.describe()
    store = TokenStore(tmp_path / "store")
    assert len(store) == 3
    example = store[0]
    vision = example.tokens[example.is_vision]
    # 4 frames × 64 codes, each frame closed by <eof> (512), the last by <eov> (513)
    assert len(vision) == 4 * 65
    assert list(vision[64::65]) == [512, 512, 512, 513]
    assert vision[:64].max() < 512
    assert not example.loss_mask[example.is_vision].any()  # "[vision]": no loss on the video
    assert example.loss_mask[~example.is_vision].any()     # the caption carries loss


def test_encoding_resumes_after_a_crash(tmp_path, vq_run):
    from lwm.train.tokenize import encode_manifest
    from lwm.model.vqgan_convert import load_vq_tokenizer

    config = config_for(tmp_path, vq_run)
    vq = load_vq_tokenizer(config.vq_tokenizer)
    encode_manifest(config, vq)
    codes = tmp_path / "store.codes.jsonl"
    complete = codes.read_text().splitlines()
    # keep the first record and half of the second, as a crash mid-write would
    codes.write_text(complete[0] + "\n" + complete[1][: len(complete[1]) // 2])
    resumed = encode_manifest(config, vq)
    assert resumed.resumed_after_line == 1 and resumed.encoded == 2
    assert codes.read_text().splitlines() == complete


def test_bad_files_are_fatal_by_policy(tmp_path, vq_run):
    from lwm.data.video import VideoReadError
    from lwm.train.tokenize import tokenize_videos

    with pytest.raises(VideoReadError, match="broken.mp4"):
        tokenize_videos(config_for(tmp_path, vq_run, "--data.on_bad_record", "error"))
    with pytest.raises(ConfigError, match="vq_tokenizer is empty"):
        load_config(TokenizeConfig, None, ["--manifest", "x.jsonl", "--data.store_path", "s"])
