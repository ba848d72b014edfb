"""Video I/O against real encoded files: H.264 mp4, VP9 webm and GIF written with PyAV."""

import numpy as np
import pytest
from video_helpers import BACKGROUND, moving_square, square_center_x

from lwm.data.video import (
    VideoReadError,
    list_videos,
    probe_video,
    read_video,
    resize_and_center_crop,
    sample_indices,
    write_video,
)


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif"])
def test_reads_every_frame_with_content(square_videos, kind):
    frames, paths = square_videos
    video = read_video(paths[kind])
    assert video.shape == frames.shape and video.dtype == np.uint8
    for decoded, original in zip(video, frames):
        assert abs(square_center_x(decoded) - square_center_x(original)) < 1.0
    if kind != "gif":  # PyAV's GIF encoder quantises colours to 3-3-2 bits
        assert np.abs(video.astype(int) - frames).mean() < 3.0


def test_webm_reports_no_frame_count_and_is_counted(square_videos):
    _, paths = square_videos
    import av

    with av.open(str(paths["webm"])) as container:
        assert container.streams.video[0].frames == 0  # the reason counting is needed
    info = probe_video(paths["webm"])
    assert info.num_frames == 30 and info.num_frames_source == "packets"
    assert info.fps == pytest.approx(10.0)
    assert probe_video(paths["mp4"]).num_frames_source == "metadata"


@pytest.mark.parametrize("kind", ["mp4", "webm", "gif"])
def test_uniform_sampling_picks_the_right_frames(square_videos, kind):
    frames, paths = square_videos
    video = read_video(paths[kind], num_frames=7)
    expected = sample_indices(30, 7)
    assert expected.tolist() == [0, 5, 10, 14, 19, 24, 29]
    assert len(video) == 7
    for decoded, index in zip(video, expected):
        assert abs(square_center_x(decoded) - square_center_x(frames[index])) < 1.0


def test_sampling_at_a_frame_rate(square_videos):
    frames, paths = square_videos
    video = read_video(paths["webm"], fps=2.5)  # every 4th frame of a 10 fps, 3 s video
    assert len(video) == 8
    for decoded, index in zip(video, range(0, 30, 4)):
        assert abs(square_center_x(decoded) - square_center_x(frames[index])) < 1.0
    assert len(read_video(paths["mp4"], fps=20)) == 60  # faster than the video repeats frames
    assert len(read_video(paths["mp4"], fps=5, max_frames=4)) == 4


def test_short_video_gives_all_frames(square_videos):
    _, paths = square_videos
    assert len(read_video(paths["mp4"], num_frames=100)) == 30


def test_resize_and_center_crop(square_videos):
    frames, paths = square_videos
    video = read_video(paths["mp4"], num_frames=3, size=24)
    assert video.shape == (3, 24, 24, 3)
    # 48x64 -> 24x32, then the centre 24 columns: x' = x/2 - 4.
    for decoded, index in zip(video, sample_indices(30, 3)):
        expected = square_center_x(frames[index]) / 2 - 4
        if 2 < expected < 22:
            assert abs(square_center_x(decoded) - expected) < 1.0
    halves = np.zeros((40, 80, 3), np.uint8)
    halves[:, :40] = (255, 0, 0)
    halves[:, 40:] = (0, 0, 255)
    crop = resize_and_center_crop(halves, 20)
    assert crop.shape == (20, 20, 3)
    assert crop[10, 2, 0] > 200 and crop[10, 17, 2] > 200  # red left, blue right of the centre


def test_corrupt_and_missing_files_name_the_file(tmp_path, square_videos):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 50)
    with pytest.raises(VideoReadError) as error:
        read_video(garbage)
    assert "garbage.mp4" in str(error.value) and error.value.path == garbage
    _, paths = square_videos
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(paths["mp4"].read_bytes()[: paths["mp4"].stat().st_size // 3])
    with pytest.raises(VideoReadError, match="truncated.mp4"):
        read_video(truncated, num_frames=4)
    with pytest.raises(VideoReadError, match="missing.webm"):
        read_video(tmp_path / "missing.webm")
    with pytest.raises(VideoReadError, match="garbage.mp4"):
        probe_video(garbage)


def test_image_folder_is_a_video(tmp_path):
    from PIL import Image

    frames = moving_square(6)
    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(frames):
        suffix = "png" if index % 2 else "jpg"
        Image.fromarray(frame).save(folder / f"frame_{index:03d}.{suffix}", quality=95)
    video = read_video(folder)
    assert video.shape == frames.shape
    assert [round(square_center_x(frame)) for frame in video] == \
        [round(square_center_x(frame)) for frame in frames]
    assert read_video(folder, num_frames=3, size=32).shape == (3, 32, 32, 3)
    assert probe_video(folder).num_frames == 6
    assert list_videos([tmp_path]) == [folder]


def test_write_then_read_mp4_webm_gif(tmp_path):
    frames = moving_square(12, height=32, width=48)
    for suffix in ("mp4", "webm", "gif"):
        path = write_video(tmp_path / f"out.{suffix}", frames, fps=4)
        video = read_video(path)
        assert video.shape == frames.shape, suffix
        assert np.abs(video.astype(int) - frames).mean() < 4.0, suffix
        assert probe_video(path).fps == pytest.approx(4.0, rel=0.05)
    # A GIF merges identical frames; reading at the written rate restores the timeline.
    still = np.repeat(frames[:1], 4, axis=0)
    path = write_video(tmp_path / "still.gif", np.concatenate([still, frames[1:3]]), fps=4)
    assert len(read_video(path, fps=4)) == 6
    assert tuple(read_video(path)[0, 0, 0]) == BACKGROUND
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 31, 32, 3), np.uint8))


def test_list_videos_expands_folders(tmp_path, square_videos):
    _, paths = square_videos
    found = list_videos([tmp_path])
    assert set(paths.values()) <= set(found)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_videos([tmp_path / "nowhere"])
