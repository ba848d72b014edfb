"""Video input and output with PyAV: read mp4/webm/gif (anything FFmpeg decodes) and folders of
images, sample frames uniformly or at a frame rate, resize and center-crop to squares, and write
mp4, webm and gif.

Frames are uint8 arrays `[T, H, W, 3]` (RGB). Any failure to read a file raises
`VideoReadError`, which names the file and the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from lwm.errors import LwmError

VIDEO_EXTENSIONS = frozenset({".mp4", ".webm", ".gif", ".mkv", ".mov", ".avi", ".m4v", ".mpg",
                              ".mpeg", ".ogv"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


class VideoReadError(LwmError, RuntimeError):
    """A video (or image folder) could not be read; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before decoding it.

    `num_frames` comes from the container metadata when it has a count, otherwise from counting
    packets (WebM streams report 0 frames); `num_frames_source` says which.
    """

    path: Path
    num_frames: int
    fps: float | None
    duration: float | None
    width: int
    height: int
    num_frames_source: str


def is_image_folder(path: Path) -> bool:
    """True for a directory holding image files and no videos (one video, one image per frame)."""
    if not path.is_dir():
        return False
    suffixes = {child.suffix.lower() for child in path.iterdir() if child.is_file()}
    return bool(suffixes & IMAGE_EXTENSIONS) and not suffixes & VIDEO_EXTENSIONS


def list_videos(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expands video files, folders of videos (searched recursively) and image folders into a
    sorted list of videos; an image folder counts as one video. Raises `FileNotFoundError`
    naming a path that does not exist."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    videos: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if not path.exists():
            raise FileNotFoundError(f"video path {path} does not exist")
        if path.is_file():
            videos.append(path)
        elif is_image_folder(path):
            videos.append(path)
        else:
            found = sorted(child for child in path.rglob("*")
                           if child.is_file() and child.suffix.lower() in VIDEO_EXTENSIONS)
            folders = sorted(child for child in path.rglob("*") if is_image_folder(child))
            videos.extend(found + folders)
    return videos


def _image_files(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir()
                  if child.is_file() and child.suffix.lower() in IMAGE_EXTENSIONS)


def _open(path: Path):
    import av

    if not path.is_file():
        raise VideoReadError(path, "no such file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(path, f"not a readable video ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "the file has no video stream")
    return container


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, rate, duration and size of a video file or image folder, without decoding."""
    path = Path(path)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise VideoReadError(path, "folder holds no png/jpg/bmp/webp images")
        width, height = _load_image(files[0]).shape[1::-1]
        return VideoInfo(path, len(files), None, None, width, height, "images")
    import av

    container = _open(path)
    try:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = None
        count, source = int(stream.frames or 0), "metadata"
        if count <= 0:
            count = sum(1 for packet in container.demux(stream) if packet.size > 0)
            source = "packets"
        return VideoInfo(path, count, fps, duration, stream.width, stream.height, source)
    except av.FFmpegError as error:
        raise VideoReadError(path, f"cannot demux ({error})") from error
    finally:
        container.close()


def sample_indices(total: int, num_frames: int) -> np.ndarray:
    """`num_frames` indices spread uniformly over `range(total)` (first and last included), or
    every index when the video is shorter (LWM's rule: frames are never repeated)."""
    if total <= num_frames:
        return np.arange(total)
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64)


def resize_and_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Resizes `[T, H, W, 3]` (or one `[H, W, 3]`) frames so the short side is `size`, then
    crops the centre `size` x `size` square (bicubic, antialiased when shrinking)."""
    from PIL import Image

    single = frames.ndim == 3
    batch = frames[None] if single else frames
    height, width = batch.shape[1:3]
    if (height, width) == (size, size):
        return frames
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    out = np.empty((len(batch), size, size, batch.shape[3]), np.uint8)
    for index, frame in enumerate(batch):
        image = Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC)
        out[index] = np.asarray(image)[top:top + size, left:left + size]
    return out[0] if single else out


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise VideoReadError(path, f"not a readable image ({error})") from error


def _decoded_frames(container, path: Path) -> Iterator[tuple[float | None, object]]:
    import av

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    try:
        for frame in container.decode(stream):
            yield frame.time, frame
    except av.FFmpegError as error:
        raise VideoReadError(path, f"decoding failed ({error})") from error


def _to_rgb(frame, size: int | None) -> np.ndarray:
    array = frame.to_ndarray(format="rgb24")
    return resize_and_center_crop(array, size) if size else array


def _select_by_index(path: Path, wanted: np.ndarray | None, size: int | None,
                     limit: int | None = None) -> tuple[list[np.ndarray], int]:
    """Decodes once, keeping the frames at `wanted` (every frame when None, at most `limit`);
    returns them in order and the number of frames decoded."""
    container = _open(path)
    wanted_set = None if wanted is None else {int(index) for index in wanted}
    kept: dict[int, np.ndarray] = {}
    count = 0
    try:
        for index, (_, frame) in enumerate(_decoded_frames(container, path)):
            count = index + 1
            if wanted_set is None or index in wanted_set:
                kept[index] = _to_rgb(frame, size)
            if limit is not None and len(kept) >= limit:
                break
            if wanted_set is not None and len(kept) == len(wanted_set):
                break
    finally:
        container.close()
    order = sorted(kept) if wanted is None else [int(index) for index in wanted if int(index) in kept]
    return [kept[index] for index in order], count


def _select_by_time(path: Path, fps: float, size: int | None, max_frames: int | None) -> list[np.ndarray]:
    """Frames nearest to the times 0, 1/fps, 2/fps, ... (from the first frame) until the video or
    `max_frames` ends; a frame repeats when `fps` exceeds the video's own rate."""
    container = _open(path)
    stream = container.streams.video[0]
    native = float(stream.average_rate) if stream.average_rate else None
    picked: list[np.ndarray] = []
    previous = None  # (time, frame)
    start = None
    step = 0
    try:
        for index, (time, frame) in enumerate(_decoded_frames(container, path)):
            if time is None:
                time = index / native if native else float(index)
            if start is None:
                start = time
            while max_frames is None or len(picked) < max_frames:
                target = start + step / fps
                if time < target:
                    break
                nearest = frame
                if previous is not None and target - previous[0] < time - target:
                    nearest = previous[1]
                picked.append(_to_rgb(nearest, size))
                step += 1
            if max_frames is not None and len(picked) >= max_frames:
                break
            previous = (time, frame)
        if previous is not None and (max_frames is None or len(picked) < max_frames):
            # Targets within the last frame's display time still belong to it.
            last_time, last_frame = previous
            if getattr(last_frame, "duration", None) and last_frame.time_base is not None:
                frame_duration = float(last_frame.duration * last_frame.time_base)
            else:
                frame_duration = 1.0 / native if native else 0.0
            while (max_frames is None or len(picked) < max_frames) and \
                    start + step / fps < last_time + frame_duration - 1e-6:
                picked.append(_to_rgb(last_frame, size))
                step += 1
    finally:
        container.close()
    return picked


def read_video(path: str | Path, *, num_frames: int | None = None, fps: float | None = None,
               size: int | None = None, max_frames: int | None = None,
               image_folder_fps: float = 30.0) -> np.ndarray:
    """Reads frames as uint8 `[T, H, W, 3]`.

    - `num_frames`: that many frames spread uniformly over the video (all frames if it is
      shorter); `fps`: frames at that rate (nearest frame to each time). Neither: every frame.
    - `size`: resize the short side to `size` and center-crop to `size` x `size`.
    - `max_frames`: an upper bound on the number of frames returned.
    - A folder of images is one video, frames in file-name order, timed at `image_folder_fps`.

    Raises `VideoReadError` naming the file when it cannot be opened or decoded or holds no
    frames.
    """
    path = Path(path)
    if num_frames is not None and fps is not None:
        raise ValueError("read_video: give num_frames or fps, not both")
    if num_frames is not None and num_frames <= 0:
        raise ValueError(f"read_video: num_frames={num_frames} must be positive")
    if fps is not None and fps <= 0:
        raise ValueError(f"read_video: fps={fps} must be positive")
    if path.is_dir():
        frames = _read_image_folder(path, num_frames, fps, size, max_frames, image_folder_fps)
    elif fps is not None:
        frames = _select_by_time(path, fps, size, max_frames)
    elif num_frames is None:
        frames, _ = _select_by_index(path, None, size, max_frames)
    else:
        wanted = sample_indices(probe_video(path).num_frames, num_frames)
        frames, decoded = _select_by_index(path, wanted, size)
        if len(frames) < len(wanted) and decoded > 0:
            # The metadata or packet count overstated the frames; resample from the true count.
            frames, _ = _select_by_index(path, sample_indices(decoded, num_frames), size)
        frames = frames[:max_frames] if max_frames is not None else frames
    if not frames:
        raise VideoReadError(path, "no frames could be decoded")
    return np.stack(frames)


def _read_image_folder(folder: Path, num_frames: int | None, fps: float | None, size: int | None,
                       max_frames: int | None, folder_fps: float) -> list[np.ndarray]:
    files = _image_files(folder)
    if not files:
        raise VideoReadError(folder, "folder holds no png/jpg/bmp/webp images")
    if num_frames is not None:
        chosen = [files[index] for index in sample_indices(len(files), num_frames)]
    elif fps is not None:
        times = np.arange(0.0, len(files) / folder_fps - 1e-9, 1.0 / fps)
        chosen = [files[min(len(files) - 1, int(round(time * folder_fps)))] for time in times]
    else:
        chosen = files
    if max_frames is not None:
        chosen = chosen[:max_frames]
    frames = []
    for file in chosen:
        image = _load_image(file)
        frames.append(resize_and_center_crop(image, size) if size else image)
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise VideoReadError(folder, f"images differ in size {sorted(shapes)}; pass size= to crop them")
    return frames


def write_video(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float = 4.0,
                *, crf: int | None = None) -> Path:
    """Writes uint8 RGB frames `[T, H, W, 3]` to `path`; the format follows the suffix.

    - `.mp4`/`.mkv`/`.mov`: H.264 (libx264, yuv420p; `crf` default 17, near lossless).
    - `.webm`: VP9 (libvpx-vp9, yuv420p; `crf` default 20).
    - `.gif`: Pillow, palette per frame. GIF writers merge identical consecutive frames into one
      longer frame, so read GIFs back with `fps=` to recover the timeline.

    H.264/VP9 in yuv420p need even width and height; an odd size raises `ValueError`.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video({path}): expected uint8 frames [T, H, W, 3], "
                         f"got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError(f"write_video({path}): no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(frame) for frame in frames]
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=max(10, round(1000 / fps)), loop=0)
        return path
    codecs = {".mp4": ("libx264", 17), ".mkv": ("libx264", 17), ".mov": ("libx264", 17),
              ".webm": ("libvpx-vp9", 20)}
    if suffix not in codecs:
        raise ValueError(f"write_video({path}): unsupported suffix {suffix!r}; use .mp4, .webm or .gif")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"write_video({path}): {width}x{height} frames; yuv420p needs even sides")
    import av

    codec, default_crf = codecs[suffix]
    options = {"crf": str(default_crf if crf is None else crf)}
    if codec == "libvpx-vp9":
        options.update({"b:v": "0", "deadline": "realtime", "cpu-used": "8"})
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001),
                                      options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
