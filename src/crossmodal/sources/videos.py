"""Video files as moments: frames sampled with PyAV (FFmpeg in its wheel), each with the span it stands for.

Cost is bounded whatever the video: at most ``MAX_MOMENTS`` moments, one every ``STEP`` seconds (longer
steps for long videos) plus scene changes. A short video (up to ``LOOP_SECONDS``) is decoded in one pass
that keeps one frame at a time, and a scene change is a jump in a tiny grayscale thumbnail; a longer one
is sampled by seeking to each moment's time (scene changes are then not looked for), so its cost is the
number of moments, not its length. Frames are handed out downscaled to at most ``FRAME_SIDE`` pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .images import ImageError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
STEP = 2.0  # seconds between sampled moments in a short video
MAX_MOMENTS = 64  # moments per video, at most: a long video gets longer steps
LOOP_SECONDS = 128.0  # videos up to this long are decoded in one pass (scene changes found); longer ones seek
SCENE_GAP = 0.5  # a scene change makes a moment only this long after the previous one
SCENE_DIFF = 24.0  # mean absolute change (0-255) of the grayscale thumbnail that counts as a scene change
PROBE = (16, 12)  # the grayscale thumbnail scene changes are measured on
FRAME_SIDE = 640  # frames are handed out at most this large (the model reads far fewer pixels)
MAX_DECODED = 2000  # frames decoded at most to find one frame after a seek (thumbnails)


class VideoError(ImageError):
    """A video that cannot be used (truncated, not a video, no video stream); reported like a bad photo."""


@dataclass
class Moment:
    """One sampled frame of a video and the span of the video it stands for, in seconds."""

    t: float
    start: float
    end: float
    image: Image.Image


def is_video_path(path: str | Path) -> bool:
    """Whether a file name has a video suffix (what folder walks and the sync treat as a video)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def split_videos(paths: Iterable[str | Path]) -> tuple[list[str | Path], list[str | Path]]:
    """(photos, videos) among file paths, by suffix, each in the given order."""
    photos, videos = [], []
    for path in paths:
        (videos if is_video_path(path) else photos).append(path)
    return photos, videos


def _av() -> Any:
    """PyAV, imported on first use (a photo-only run never loads FFmpeg)."""
    import av

    av.logging.set_level(av.logging.PANIC)  # failures are raised and reported once, not logged per packet
    return av


def _open(path: str | BinaryIO) -> tuple[Any, Any]:
    """The container and its first video stream (of a path or an open file); a VideoError when it is not a
    readable video."""
    av = _av()
    try:
        container = av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoError(f"not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoError("not a readable video: it holds no video stream")
    return container, container.streams.video[0]


def _reason(error: Exception) -> str:
    """FFmpeg's one-line reason, without the path and error number it repeats."""
    return getattr(error, "strerror", None) or str(error)


def duration(container: Any, stream: Any) -> float | None:
    """The video's length in seconds from its header (None when the header does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _image(frame: Any) -> Image.Image:
    """A decoded frame as an RGB photo of at most ``FRAME_SIDE`` pixels a side."""
    scale = min(1.0, FRAME_SIDE / max(frame.width, frame.height, 1))
    width, height = max(2, round(frame.width * scale)), max(2, round(frame.height * scale))
    return frame.to_image(width=width, height=height)


def _time(frame: Any, index: int, rate: float) -> float:
    """A frame's time in seconds (its index over the frame rate when it carries no timestamp)."""
    return float(frame.time) if frame.time is not None else index / rate


def sample(path: str, step: float = STEP, cap: int = MAX_MOMENTS) -> list[Moment]:
    """The moments of the video at ``path``: one every ``step`` seconds (more for a long video, at most ``cap``)
    plus scene changes; a VideoError when it cannot be decoded (truncated, not a video)."""
    container, stream = _open(path)
    av = _av()
    try:
        length = duration(container, stream)
        step = max(step, (length or 0.0) / cap)
        if length is not None and length > LOOP_SECONDS:
            times = [(i + 0.5) * step for i in range(min(cap, int(length // step)))]
            found = list(_seek_each(container, stream, times))
        else:
            found = list(_one_pass(container, stream, step, cap))
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode the video (truncated or damaged?): {_reason(e)}") from None
    finally:
        container.close()
    if not found:
        raise VideoError("cannot decode the video: no frame could be read (truncated or damaged?)")
    end = max(length or 0.0, found[-1][0])
    return [Moment(t, t, found[i + 1][0] if i + 1 < len(found) else end, image)
            for i, (t, image) in enumerate(found)]


def _one_pass(container: Any, stream: Any, step: float, cap: int) -> Iterator[tuple[float, Image.Image]]:
    """(time, frame) of each moment of a short video, decoding it once, one frame held at a time."""
    rate = float(stream.average_rate or 25)
    last_t, last_probe, probe_t = None, None, None
    kept = 0
    for index, frame in enumerate(container.decode(stream)):
        t = _time(frame, index, rate)
        scene = False
        if probe_t is None or t - probe_t >= 0.25:
            probe = frame.to_ndarray(format="gray", width=PROBE[0], height=PROBE[1]).astype(np.float32)
            scene = last_probe is not None and float(np.abs(probe - last_probe).mean()) > SCENE_DIFF
            last_probe, probe_t = probe, t
        if last_t is None or t - last_t >= step or (scene and t - last_t >= SCENE_GAP):
            yield t, _image(frame)
            last_t, kept = t, kept + 1
            if kept >= cap:
                return


def _seek_each(container: Any, stream: Any, times: list[float]) -> Iterator[tuple[float, Image.Image]]:
    """(time, frame) of the first frame at or after each of ``times``, reached by seeking (long videos)."""
    for t in times:
        found = frame_at_open(container, stream, t)
        if found is not None:
            yield found


def frame_at_open(container: Any, stream: Any, t: float) -> tuple[float, Image.Image] | None:
    """The first frame at or after ``t`` seconds of an open video (the last one before, near its end)."""
    rate = float(stream.average_rate or 25)
    if stream.time_base is not None and t > 0:
        container.seek(int(t / stream.time_base), stream=stream, backward=True, any_frame=False)
    last = None
    for index, frame in enumerate(container.decode(stream)):
        when = _time(frame, index, rate)
        last = (when, frame)
        if when >= t - 0.5 / rate or index >= MAX_DECODED:
            break
    return None if last is None else (last[0], _image(last[1]))


def frame_at(path: str | BinaryIO, t: float) -> Image.Image:
    """The frame of the video at ``path`` (or in an open file) shown at ``t`` seconds (a thumbnail of a moment);
    a VideoError when it cannot be decoded."""
    container, stream = _open(path)
    av = _av()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = frame_at_open(container, stream, t)
    except av.FFmpegError as e:
        raise VideoError(f"cannot decode the video: {_reason(e)}") from None
    finally:
        container.close()
    if found is None:
        raise VideoError("cannot decode the video: no frame at that time")
    return found[1]


def write_slideshow(path: str | Path, photos: list[Image.Image], hold: float = 2.0, fps: int = 4,
                    size: tuple[int, int] = (160, 120), codec: str = "mpeg4", bit_rate: int = 2_000_000) -> float:
    """Write a video that shows each photo for ``hold`` seconds, fitted into the frame with its proportions kept
    (black bars, as a phone shows a portrait photo in a landscape video); tests, the benchmark and demos make
    videos with known scenes this way. Returns its length in seconds."""
    av = _av()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate = bit_rate
        for photo in photos:
            frame = av.VideoFrame.from_image(ImageOps.pad(photo.convert("RGB"), size))
            for _ in range(round(hold * fps)):
                container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return len(photos) * round(hold * fps) / fps
