"""Shared helpers for the video tests: synthetic moving-square frames, a PyAV video writer that
is independent of `lwm.data.video.write_video`, and the `square_videos` fixture."""

from fractions import Fraction

import numpy as np
import pytest

BACKGROUND = (20, 30, 40)
SQUARE = (240, 40, 40)


def moving_square(num_frames: int, height: int = 48, width: int = 64, side: int = 12,
                  step: int = 2) -> np.ndarray:
    """uint8 frames: a red square moving right by `step` pixels per frame on a dark background;
    frame t has the square's left edge at x = 4 + step * t."""
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[:] = BACKGROUND
    top = (height - side) // 2
    for index in range(num_frames):
        left = 4 + step * index
        frames[index, top:top + side, left:left + side] = SQUARE
    return frames


def square_center_x(frame: np.ndarray) -> float:
    """Horizontal centre of the red pixels in a frame."""
    red = (frame[..., 0] > 150) & (frame[..., 1] < 100)
    assert red.any(), "no red square found in the frame"
    return float(np.nonzero(red)[1].mean())


def encode_with_pyav(path, frames: np.ndarray, fps: int, codec: str, pix_fmt: str = "yuv420p",
                     options: dict | None = None) -> None:
    """Writes frames with PyAV directly (the test's own encoder, not the library's writer)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options=options or {})
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.fixture
def square_videos(tmp_path):
    """An mp4 (H.264), a webm (VP9) and a gif (PyAV's GIF encoder) of 30 moving-square frames
    at 10 fps, plus the frames themselves."""
    frames = moving_square(30)
    paths = {
        "mp4": tmp_path / "square.mp4",
        "webm": tmp_path / "square.webm",
        "gif": tmp_path / "square.gif",
    }
    encode_with_pyav(paths["mp4"], frames, 10, "libx264", options={"crf": "10"})
    encode_with_pyav(paths["webm"], frames, 10, "libvpx-vp9",
                     options={"crf": "10", "b:v": "0", "deadline": "realtime", "cpu-used": "8"})
    encode_with_pyav(paths["gif"], frames, 10, "gif", pix_fmt="rgb8")
    return frames, paths
