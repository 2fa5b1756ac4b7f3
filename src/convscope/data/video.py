"""Video files read safely into model-sized frames (Yosinski et al. 2015's toolbox plays a video
through the network): MP4 or WebM, decoded with PyAV (FFmpeg's demuxers and decoders;
``pip install 'convscope[video]'``).

:func:`read_video` reads a local file (or bytes) into float frames ``[T, C, H, W]`` for
:func:`convscope.features.play`; :func:`decode` is the checked decoder under it, and under the
Live page's uploads (:mod:`convscope.app.video` calls it with the upload's :class:`VideoLimits`).

What runs on a file is only FFmpeg's demuxer of the claimed container and a decoder from an
allow-list; nothing else in the file is followed or executed:

* the container is recognised by its magic bytes (MP4: ``ftyp`` box; WebM: EBML header with
  doctype ``webm``) and opened with that one demuxer (``mov`` or ``matroska``), never probed,
  so no playlist, concat list or image-sequence demuxer (which can open other files) is used;
  MP4 external data references stay off (``enable_drefs=0``), and the file is read from memory
  or from an already open file object (no protocol, no other path can be reached);
* the video stream's codec must be one of :data:`CODECS`; the picture, the file, the declared
  duration, the frames taken and their pixels are bounded by a :class:`VideoLimits` (a stream
  without a declared duration is stopped at the limit while decoding and refused), and decoding
  stops after ``max_decode_seconds`` (the result's ``note`` says how far it got).
"""

from __future__ import annotations

import io
import math
import numbers
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["CODECS", "DEMUXERS", "LOCAL_LIMITS", "Video", "VideoFrames", "VideoLimits",
           "container_of", "decode", "read_video"]

#: Video codecs decoded (FFmpeg's names).
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
#: Container -> the one FFmpeg demuxer it is opened with.
DEMUXERS = {"mp4": "mov", "webm": "matroska"}


@dataclass(frozen=True)
class VideoLimits:
    """What one video may cost. ``max_bytes``: the file; ``max_seconds``: its duration;
    ``max_frames`` frames taken, at most ``max_fps`` a second; ``max_side``: the source
    picture's largest side; ``max_frame_bytes``: the pixels of all frames taken (uint8, at the
    output size); ``max_decode_seconds``: wall time, after which what was decoded is kept.
    ``who`` names the reader in messages; ``fix`` is appended to a refusal that a larger limit
    would lift (how to raise it)."""

    max_bytes: int
    max_seconds: float
    max_frames: int
    max_fps: float
    max_side: int
    max_frame_bytes: int
    max_decode_seconds: float
    who: str = "read_video"
    fix: str = ""


#: Limits of :func:`read_video` for local files: 1 GiB, 1 hour, 10,000 frames at most 30 a
#: second, 8192 px a side, 1 GiB of frame pixels (4 GiB as float32), 10 minutes of decoding.
#: (The Live page's uploads are far smaller: :mod:`convscope.app.video`.)
LOCAL_LIMITS = VideoLimits(
    max_bytes=1 << 30, max_seconds=3600.0, max_frames=10_000, max_fps=30.0, max_side=8192,
    max_frame_bytes=1 << 30, max_decode_seconds=600.0, who="read_video",
    fix=" Or raise the limit: read_video(..., limits=dataclasses.replace("
        "convscope.data.LOCAL_LIMITS, ...)).")


@dataclass(frozen=True)
class Video:
    """Frames ``[N, H, W, C]`` uint8 at the requested size, taken every ``1 / fps`` seconds
    from the source's start; ``times`` (seconds) of each, the source's ``size``
    ``(width, height)``, ``codec``, ``container``, ``duration`` (seconds, as declared or as
    decoded) and ``note`` (what was cut, or "")."""

    frames: np.ndarray
    fps: float
    times: list[float]
    size: tuple[int, int]
    codec: str
    container: str
    duration: float
    note: str = ""


@dataclass(frozen=True)
class VideoFrames:
    """:func:`read_video`'s answer: ``frames`` ``[T, C, H, W]`` float32 in [0, 1], ``times``
    ``[T]`` float64 seconds from the start, the ``fps`` they were taken at, and the source's
    ``size`` ``(width, height)``, ``codec``, ``container``, ``duration`` and ``note`` (what
    was cut, or ""). Unpacks as ``frames, times = read_video(...)``."""

    frames: Any
    times: Any
    fps: float
    size: tuple[int, int]
    codec: str
    container: str
    duration: float
    note: str = ""

    def __iter__(self):
        return iter((self.frames, self.times))

    def __len__(self) -> int:
        return int(self.frames.shape[0])


def container_of(raw: bytes) -> str | None:
    """``"mp4"`` or ``"webm"`` from the file's first bytes, else None."""
    if len(raw) >= 12 and raw[4:8] == b"ftyp":
        return "mp4"
    if raw[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in raw[:64]:
        return "webm"
    return None


def _av(who: str):
    try:
        import av
    except ImportError:
        then = "restart the server" if who == "the live view" else "try again"
        raise InputError(f"playing video files needs PyAV: pip install 'convscope[video]' "
                         f"(or pip install av), then {then}.") from None
    return av


def _crop_size(w0: int, h0: int, w: int, h: int) -> tuple[int, int]:
    """The size to scale a ``w0 x h0`` picture to so that its centre crop is ``w x h``
    (the aspect is kept: the short side fits)."""
    s = max(w / w0, h / h0)
    return max(w, math.ceil(w0 * s - 1e-6)), max(h, math.ceil(h0 * s - 1e-6))


def _centre(arr: np.ndarray, w: int, h: int) -> np.ndarray:
    y0 = (arr.shape[0] - h) // 2
    x0 = (arr.shape[1] - w) // 2
    return arr[y0:y0 + h, x0:x0 + w]


def _limits_text(limits: VideoLimits) -> str:
    mb = limits.max_bytes / 2**20
    size = f"{mb:.0f} MB" if mb < 1024 else f"{mb / 1024:.0f} GB"
    return f"MP4 or WebM, at most {size} and {limits.max_seconds:.0f} s"


def decode(source: bytes | Any, shape: tuple[int, int, int] | None, *,
           limits: VideoLimits = LOCAL_LIMITS, fps: float | None = None,
           max_frames: int | None = None, progress: Any = None) -> Video:
    """An MP4 or WebM file's bytes (or an open binary file object positioned at its start)
    -> :class:`Video` of frames of ``shape`` = ``(C, H, W)`` (C 1: grey, 3: RGB; each frame
    scaled so its short side fits, then centre-cropped; ``H``, ``W`` None: the source's size).
    ``fps`` (default ``limits.max_fps``) and ``max_frames`` (default ``limits.max_frames``)
    replace those two limits. ``progress(n)`` is called with each frame taken. Every refusal
    is an :class:`InputError` saying what to do."""
    c, h, w = (None if s is None else int(s) for s in (shape or (3, None, None)))
    if c not in (1, 3):
        raise InputError(f"frames have 1 (grey) or 3 (RGB) channels, not {c}.")
    if fps is not None:
        fps = float(fps)
        if not (0 < fps <= 1000) or not math.isfinite(fps):
            raise InputError(f"fps must be a number of frames a second in (0, 1000], got {fps}.")
        limits = replace(limits, max_fps=fps)
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1:
            raise InputError(f"max_frames must be an int >= 1, got {max_frames!r}.")
        limits = replace(limits, max_frames=max_frames)
    text = _limits_text(limits)
    who = limits.who
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw = bytes(source)
        size, head, stream_in = len(raw), raw[:64], io.BytesIO(raw)
    else:
        stream_in = source
        head = stream_in.read(64)
        stream_in.seek(0)
        size = os.fstat(stream_in.fileno()).st_size if hasattr(stream_in, "fileno") else 0
    if size > limits.max_bytes:
        raise InputError(f"the video is {size / 2**20:.1f} MB; {who} takes {text}. Cut or "
                         "re-encode it first (e.g. ffmpeg -i in.mp4 -t 30 -vf scale=320:-2 "
                         f"out.mp4).{limits.fix}")
    kind = container_of(head)
    if kind is None:
        raise InputError(f"the file is not an MP4 or WebM video (its first bytes say "
                         f"otherwise): {who} takes {text}.")
    av = _av(who)
    return _decode(av, stream_in, kind, c, h, w, limits, text, progress)


def _decode(av: Any, stream_in: Any, kind: str, c: int, h: int | None, w: int | None,
            limits: VideoLimits, text: str, progress: Any) -> Video:
    bad = (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError)
    who, fix = limits.who, limits.fix
    try:
        container = av.open(stream_in, mode="r", format=DEMUXERS[kind],
                            options={"enable_drefs": "0"}, metadata_errors="ignore")
    except bad as exc:
        raise InputError(f"cannot read the file as {kind.upper()} ({str(exc)[:200]}): {who} "
                         f"takes {text}.") from None
    with container:
        streams = list(container.streams.video)
        if not streams:
            raise InputError(f"the {kind.upper()} file has no video stream: {who} takes {text}.")
        stream = streams[0]
        codec = str(stream.codec_context.name)
        if codec not in CODECS:
            raise InputError(f"the video's codec is {codec[:40]!r}; {who} decodes "
                             f"{', '.join(sorted(CODECS))}: re-encode it (e.g. ffmpeg -i in -c:v "
                             "libx264 out.mp4).")
        w0, h0 = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if not (0 < w0 <= limits.max_side and 0 < h0 <= limits.max_side):
            raise InputError(f"the video's pictures are {w0} x {h0} pixels; {who} takes at "
                             f"most {limits.max_side} a side: scale it down first.{fix}")
        if h is None or w is None:
            h, w = h0, w0
        duration = _declared_seconds(container, stream)
        if duration is not None and duration > limits.max_seconds + 0.5:
            raise InputError(f"the video is {duration:.1f} s long; {who} takes {text}: cut it "
                             f"first (e.g. ffmpeg -i in.mp4 -t 30 out.mp4).{fix}")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        src_fps = float(rate) if rate else limits.max_fps
        if not (0 < src_fps < 1000):
            src_fps = limits.max_fps
        per = h * w * c
        cap = max(1, min(limits.max_frames, limits.max_frame_bytes // per))
        fps = min(src_fps, limits.max_fps)
        if duration:
            fps = min(fps, cap / duration)
        fps = max(fps, 1e-3)
        stream.thread_type = "AUTO"
        sw, sh = _crop_size(w0, h0, w, h)
        fmt = "gray" if c == 1 else "rgb24"
        frames: list[np.ndarray] = []
        times: list[float] = []
        note = ""
        t_next, last_t = 0.0, 0.0
        start = time.monotonic()
        n_in = 0
        try:
            for frame in container.decode(stream):
                n_in += 1
                t = frame.time if frame.time is not None else n_in / src_fps
                last_t = max(last_t, float(t))
                if t > limits.max_seconds + 0.5:
                    raise InputError(f"the video runs past {limits.max_seconds:.0f} s; {who} "
                                     f"takes {text}: cut it first (e.g. ffmpeg -i in.mp4 -t 30 "
                                     f"out.mp4).{fix}")
                if frames and time.monotonic() - start > limits.max_decode_seconds:
                    note = (f"decoding stopped after {limits.max_decode_seconds:.0f} s at "
                            f"{t:.1f} s of the video; a smaller or shorter file decodes in full")
                    break
                if t + 1e-6 < t_next:
                    continue
                if len(frames) >= cap:
                    note = (f"the first {cap} frames ({cap / fps:.1f} s at {fps:.3g} frames/s) "
                            "are shown")
                    break
                arr = frame.reformat(width=sw, height=sh, format=fmt,
                                     interpolation="AREA").to_ndarray()
                arr = _centre(arr.reshape(sh, sw, c), w, h)
                frames.append(np.ascontiguousarray(arr))
                times.append(float(t))
                if progress is not None:
                    progress(1)
                t_next += 1.0 / fps
                if t_next <= t:  # behind (a variable frame rate): the next one from here
                    t_next = float(t) + 1.0 / fps
        except bad as exc:
            if not frames:
                raise InputError(f"the video is damaged ({str(exc)[:200]}): save it again as "
                                 f"{text}.") from None
            note = f"the video is damaged after {len(frames)} frames ({str(exc)[:120]})"
        if not frames:
            raise InputError(f"no picture could be decoded from the video: {who} takes {text}.")
    return Video(frames=np.stack(frames), fps=float(fps), times=times, size=(w0, h0),
                 codec=codec, container=kind,
                 duration=float(duration if duration is not None else last_t), note=note)


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """The stream's (else the container's) declared duration in seconds, or None."""
    try:
        if stream.duration is not None and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return float(container.duration) / 1_000_000
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def read_video(source: str | os.PathLike | bytes, size: tuple[int, int] | None = None, *,
               fps: float | None = None, max_frames: int | None = None, channels: int = 3,
               limits: VideoLimits = LOCAL_LIMITS, quiet: bool = False) -> VideoFrames:
    """A local MP4 or WebM video (a path, or the file's bytes) -> :class:`VideoFrames`:
    ``frames`` ``[T, C, H, W]`` float32 in [0, 1] and their ``times`` in seconds
    (``frames, times = cs.data.read_video("clip.mp4", size=(32, 32))``).

    Args:
        source: the file's path or its bytes. Only MP4 (H.264, HEVC, AV1, MPEG-4) and WebM
            (VP8, VP9, AV1) are read, by the one demuxer their first bytes name (see the
            module's notes on what runs).
        size: ``(H, W)`` of the frames (each scaled so its short side fits, then
            centre-cropped, as the Live page does); None keeps the source's size.
        fps: frames taken per second of video (default ``limits.max_fps``, 30; never more than
            the source has); frame ``k`` is the first source frame at or after ``k / fps`` s.
        max_frames: at most this many frames (default ``limits.max_frames``, 10,000). When
            that many at ``fps`` would not cover the video's declared duration, the rate is
            lowered so that they do (the answer's ``fps`` says which); a video without a
            declared duration is cut after them (``note`` says so).
        channels: 3 (RGB) or 1 (grey).
        limits: the file, duration, picture, frame and time bounds; the default
            :data:`LOCAL_LIMITS` is for local files (1 GiB, 1 hour, 10,000 frames, 8192 px a
            side, 1 GiB of uint8 frame pixels, 10 minutes of decoding), far above the Live
            page's uploads (20 MB, 60 s, 600 frames at most 15 a second, 12 MB of pixels).
        quiet: hide the progress bar.

    Raises:
        InputError: a missing file, one that is not MP4 or WebM, a codec not allowed, a
            damaged file, a file over the limits, or PyAV not installed
            (``pip install 'convscope[video]'``).
    """
    import torch
    from tqdm.auto import tqdm

    if channels not in (1, 3) or isinstance(channels, bool):
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}.")
    if size is None:
        h = w = None
    else:
        ok = isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)
        h, w = (int(size[0]), int(size[1])) if ok else (0, 0)
        if not ok or not (1 <= h <= 8192 and 1 <= w <= 8192):
            raise InputError(f"size must be (H, W) in pixels, 1 to 8192 each, e.g. size=(32, "
                             f"32); got {size!r}.")
    bar = tqdm(disable=quiet, desc="decoding video", unit="frame")
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            got = decode(bytes(source), (channels, h, w), limits=limits, fps=fps,
                         max_frames=max_frames, progress=bar.update)
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise InputError(f"no video file at {str(path)[:300]!r}: check the path.")
            try:
                fh = open(path, "rb")  # closed by the with below
            except OSError as exc:
                raise InputError(f"cannot open {str(path)[:300]!r} ({exc.strerror}): check its "
                                 "permissions.") from None
            with fh:
                got = decode(fh, (channels, h, w), limits=limits, fps=fps,
                             max_frames=max_frames, progress=bar.update)
        else:
            raise InputError(f"read_video takes a path or the file's bytes, not "
                             f"{type(source).__name__}.")
    finally:
        bar.close()
    frames = torch.from_numpy(got.frames).permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    return VideoFrames(frames=frames, times=torch.tensor(got.times, dtype=torch.float64),
                       fps=got.fps, size=got.size, codec=got.codec, container=got.container,
                       duration=got.duration, note=got.note)
