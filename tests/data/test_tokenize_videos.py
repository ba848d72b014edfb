"""`lwm tokenize`: real encoded videos through a trained VQ tokenizer into a token store."""

import dataclasses
import json

import numpy as np
import pytest

from lwm.config import ConfigError, load_config
from lwm.config.tokenize import TokenizeConfig
from lwm.data.store import TokenStore
from lwm.data.video import write_video


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    """A VQ tokenizer directory as `lwm train-vq` writes it (the tiny preset's architecture, its
    initial weights: what the codes mean does not matter here, only their shape and range)."""
    from lwm.config.vq import VQTrainRunConfig
    from lwm.model.vq_tokenizer import save_vq_checkpoint
    from lwm.model.vqgan import init_vqgan

    run_dir = tmp_path_factory.mktemp("vq")
    config = load_config(VQTrainRunConfig, "configs/vq/tiny.yaml", ["--checkpoint.dir", str(run_dir)])
    save_vq_checkpoint(run_dir / "step_00000000", init_vqgan(config.model, seed=0), config)
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


@pytest.fixture(scope="module")
def vq(vq_run):
    from lwm.model.vq_tokenizer import load_vq_tokenizer

    return load_vq_tokenizer(str(vq_run))


def test_videos_become_vision_spans_in_both_directions(tmp_path, vq_run, vq):
    from lwm.data.text_tokenizer import load_text_tokenizer
    from lwm.data.tokenize_job import tokenize_videos

    summary = tokenize_videos(config_for(tmp_path, vq_run), vq)
    assert summary.encoded == 3 and len(summary.bad_files) == 1
    assert "broken.mp4" in summary.describe() and "line 2" in summary.describe()
    assert summary.templates == ["[vision],caption", "[caption],vision"]
    store = TokenStore(tmp_path / "store")
    assert len(store) == 6  # two examples per video
    text = load_text_tokenizer(None)
    caption_ids = text.encode("clip number 0")
    to_caption, to_video = store[0], store[1]
    for example in (to_caption, to_video):
        vision = example.tokens[example.is_vision]
        # 4 frames × 64 codes, each frame closed by <eof> (512), the last by <eov> (513)
        assert len(vision) == 4 * 65
        assert list(vision[64::65]) == [512, 512, 512, 513]
        assert vision[:64].max() < 512
    np.testing.assert_array_equal(to_caption.tokens[to_caption.is_vision],
                                  to_video.tokens[to_video.is_vision])
    # video→caption: the video is given (no loss), the caption is learned.
    assert not to_caption.loss_mask[to_caption.is_vision].any()
    assert to_caption.tokens[-1 - len(caption_ids):-1].tolist() == caption_ids
    assert to_caption.loss_mask[-1 - len(caption_ids):].all()
    # caption→video: the caption comes first without loss, every vision token is a target.
    assert to_video.tokens[1:1 + len(caption_ids)].tolist() == caption_ids
    assert not to_video.loss_mask[1:1 + len(caption_ids)].any()
    assert to_video.loss_mask[to_video.is_vision].all()
    assert store.metadata["num_loss_tokens"] > 3 * 4 * 65  # vision tokens carry loss


def test_directions_fields_keeps_the_template_alone(tmp_path, vq_run):
    from lwm.data.tokenize_job import segment_sets_of

    config = config_for(tmp_path, vq_run)
    assert len(segment_sets_of(config)) == 2
    from lwm.data.records import render_template

    both = dataclasses.replace(config, data=dataclasses.replace(config.data, fields="vision,caption"))
    assert [render_template(s) for s in segment_sets_of(both)] == ["vision,caption", "caption,vision"]
    object.__setattr__(config, "directions", "fields")
    assert len(segment_sets_of(config)) == 1


def test_encoding_resumes_after_a_crash(tmp_path, vq_run, vq):
    from lwm.data.tokenize_job import encode_manifest

    config = config_for(tmp_path, vq_run)
    encode_manifest(config, vq)
    codes = tmp_path / "store.codes.jsonl"
    complete = codes.read_text().splitlines()
    # keep the first record and half of the second, as a crash mid-write would
    codes.write_text(complete[0] + "\n" + complete[1][: len(complete[1]) // 2])
    resumed = encode_manifest(config, vq)
    assert resumed.resumed_after_line == 1 and resumed.encoded == 2
    assert codes.read_text().splitlines() == complete


def test_bad_files_are_fatal_by_policy(tmp_path, vq_run, vq):
    from lwm.data.tokenize_job import tokenize_videos
    from lwm.data.video import VideoReadError

    with pytest.raises(VideoReadError, match="broken.mp4"):
        tokenize_videos(config_for(tmp_path, vq_run, "--data.on_bad_record", "error"), vq)
    with pytest.raises(ConfigError, match="vq_tokenizer is empty"):
        load_config(TokenizeConfig, None, ["--manifest", "x.jsonl", "--data.store_path", "s"])


def test_bad_manifest_lines_are_skipped_and_listed_or_fatal(tmp_path, vq_run, vq):
    from lwm.data.records import BadRecordError
    from lwm.data.tokenize_job import tokenize_videos

    config = config_for(tmp_path, vq_run)
    manifest = tmp_path / "clips.jsonl"
    lines = manifest.read_text().splitlines()
    lines[2:2] = ['{"video": "clip1.mp4", "caption": ', '["a list"]']
    manifest.write_text("\n".join(lines) + "\n")
    summary = tokenize_videos(config, vq)
    assert summary.encoded == 3 and len(summary.bad_files) == 3
    described = summary.describe()
    assert f"{manifest} (manifest line 3): not valid JSON" in described
    assert "(manifest line 4): expected a JSON object, got list" in described
    bad_log = (tmp_path / "store.codes.bad.jsonl").read_text().splitlines()
    assert [json.loads(line)["line"] for line in bad_log] == [3, 4, 2]
    (tmp_path / "second").mkdir()
    with pytest.raises(BadRecordError, match=r"clips.jsonl:3: not valid JSON"):
        tokenize_videos(config_for(tmp_path / "second", vq_run, "--data.on_bad_record", "error",
                                   "--manifest", str(manifest), "--overwrite", "true"),
                        vq)


def test_output_paths_are_checked_before_any_work(tmp_path):
    from lwm.data.store import StoreError
    from lwm.data.tokenize_job import tokenize_videos

    vq = object()  # never reached: the outputs are refused first
    vq_run = tmp_path / "no-vq"

    (tmp_path / "store").write_text("precious")
    config = config_for(tmp_path, vq_run)
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="is an existing file"):
            tokenize_videos(dataclasses.replace(config, overwrite=overwrite), vq)
    assert (tmp_path / "store").read_text() == "precious"
    assert not (tmp_path / "store.codes.jsonl").exists()
