"""Video files for the Live page (Yosinski et al. 2015's toolbox plays a video through the
network): an MP4 or WebM upload, checked, then decoded with PyAV (FFmpeg's demuxers and
decoders; ``pip install 'convscope[video]'``) into frames of the model's input size.

What runs on an upload is only FFmpeg's demuxer of the claimed container and a decoder from an
allow-list; nothing else in the file is followed or executed:

* the container is recognised by its magic bytes (MP4: ``ftyp`` box; WebM: EBML header with
  doctype ``webm``) and opened with that one demuxer (``mov`` or ``matroska``), never probed,
  so no playlist, concat list or image-sequence demuxer (which can open other files) is used;
  MP4 external data references stay off (``enable_drefs=0``), and the file is read from memory
  (no protocol can be reached);
* the video stream's codec must be one of :data:`CODECS`; its picture at most
  :data:`MAX_VIDEO_SIDE` pixels a side; the file at most :data:`MAX_VIDEO_BYTES`; the declared
  duration at most :data:`MAX_VIDEO_SECONDS` (a stream without one is stopped there while
  decoding and refused);
* frames are taken at most :data:`MAX_FPS` a second, at most :data:`MAX_FRAMES` of them and at
  most :data:`MAX_FRAME_BYTES` of pixels in all; decoding stops after
  :data:`MAX_DECODE_SECONDS` (the page says how far it got); one video is decoded at a time per
  server process (a second waits up to :data:`DECODE_WAIT_S`, then is told the server is busy).
"""

from __future__ import annotations

import io
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["MAX_VIDEO_BYTES", "MAX_VIDEO_SECONDS", "MAX_FRAMES", "MAX_FPS", "MAX_VIDEO_SIDE",
           "MAX_FRAME_BYTES", "MAX_DECODE_SECONDS", "CODECS", "Video", "container_of", "decode"]

#: Largest video file accepted, in bytes (its data URI is about 4/3 as long).
MAX_VIDEO_BYTES = 20 * 1024 * 1024
#: Longest video accepted, in seconds.
MAX_VIDEO_SECONDS = 60.0
#: Frames taken from a video (at most this many, at most MAX_FPS a second).
MAX_FRAMES = 600
MAX_FPS = 15.0
#: Largest picture side a video may have.
MAX_VIDEO_SIDE = 4096
#: Pixels of all frames taken, at the model's input size (bounds memory and the answer).
MAX_FRAME_BYTES = 12 * 1024 * 1024
#: Time one video may take to decode; what was decoded by then is kept.
MAX_DECODE_SECONDS = 30.0
DECODE_WAIT_S = 10.0
#: Video codecs decoded (FFmpeg's names).
CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg4"})
#: Container -> the one FFmpeg demuxer it is opened with.
DEMUXERS = {"mp4": "mov", "webm": "matroska"}

_decoding = threading.BoundedSemaphore(1)


@dataclass(frozen=True)
class Video:
    """Frames ``[N, H, W, C]`` uint8 at the model's input size, taken every ``1 / fps``
    seconds from the source's start; ``times`` (seconds) of each, the source's ``size``
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


def container_of(raw: bytes) -> str | None:
    """``"mp4"`` or ``"webm"`` from the file's first bytes, else None."""
    if len(raw) >= 12 and raw[4:8] == b"ftyp":
        return "mp4"
    if raw[:4] == b"\x1a\x45\xdf\xa3" and b"webm" in raw[:64]:
        return "webm"
    return None


def _av():
    try:
        import av
    except ImportError:
        raise InputError("playing video files needs PyAV: pip install 'convscope[video]' "
                         "(or pip install av), then restart the server.") from None
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


def decode(raw: bytes, shape: tuple[int, int, int]) -> Video:
    """An MP4 or WebM file's bytes -> :class:`Video` of frames the size of a model taking
    ``shape`` = ``(C, H, W)`` (C 1: grey, 3: RGB; each frame scaled so its short side fits,
    then centre-cropped). Every refusal is an :class:`InputError` saying what to do."""
    c, h, w = (int(s) for s in shape)
    limits = (f"MP4 or WebM, at most {MAX_VIDEO_BYTES // 2**20} MB and "
              f"{MAX_VIDEO_SECONDS:.0f} s")
    if len(raw) > MAX_VIDEO_BYTES:
        raise InputError(f"the video is {len(raw) / 2**20:.1f} MB; the live view takes {limits}. "
                         "Cut or re-encode it first (e.g. ffmpeg -i in.mp4 -t 30 -vf "
                         "scale=320:-2 out.mp4).")
    kind = container_of(raw)
    if kind is None:
        raise InputError(f"the file is not an MP4 or WebM video (its first bytes say otherwise): "
                         f"upload {limits}.")
    av = _av()
    if not _decoding.acquire(timeout=DECODE_WAIT_S):
        raise InputError("the server is busy decoding another video: try again in a moment.")
    try:
        return _decode(av, raw, kind, c, h, w, limits)
    finally:
        _decoding.release()


def _decode(av: Any, raw: bytes, kind: str, c: int, h: int, w: int, limits: str) -> Video:
    bad = (av.error.FFmpegError, OSError, ValueError, EOFError, MemoryError)
    try:
        container = av.open(io.BytesIO(raw), mode="r", format=DEMUXERS[kind],
                            options={"enable_drefs": "0"}, metadata_errors="ignore")
    except bad as exc:
        raise InputError(f"cannot read the file as {kind.upper()} ({str(exc)[:200]}): upload "
                         f"{limits}.") from None
    with container:
        streams = list(container.streams.video)
        if not streams:
            raise InputError(f"the {kind.upper()} file has no video stream: upload {limits}.")
        stream = streams[0]
        codec = str(stream.codec_context.name)
        if codec not in CODECS:
            raise InputError(f"the video's codec is {codec[:40]!r}; the live view decodes "
                             f"{', '.join(sorted(CODECS))}: re-encode it (e.g. ffmpeg -i in -c:v "
                             "libx264 out.mp4).")
        w0, h0 = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
        if not (0 < w0 <= MAX_VIDEO_SIDE and 0 < h0 <= MAX_VIDEO_SIDE):
            raise InputError(f"the video's pictures are {w0} x {h0} pixels; the live view takes "
                             f"at most {MAX_VIDEO_SIDE} a side: scale it down first.")
        duration = _declared_seconds(container, stream)
        if duration is not None and duration > MAX_VIDEO_SECONDS + 0.5:
            raise InputError(f"the video is {duration:.1f} s long; the live view takes {limits}: "
                             "cut it first (e.g. ffmpeg -i in.mp4 -t 30 out.mp4).")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        src_fps = float(rate) if rate else MAX_FPS
        if not (0 < src_fps < 1000):
            src_fps = MAX_FPS
        per = h * w * c
        cap = max(1, min(MAX_FRAMES, MAX_FRAME_BYTES // per))
        fps = min(src_fps, MAX_FPS)
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
                if t > MAX_VIDEO_SECONDS + 0.5:
                    raise InputError(f"the video runs past {MAX_VIDEO_SECONDS:.0f} s; the live "
                                     f"view takes {limits}: cut it first (e.g. ffmpeg -i in.mp4 "
                                     "-t 30 out.mp4).")
                if frames and time.monotonic() - start > MAX_DECODE_SECONDS:
                    note = (f"decoding stopped after {MAX_DECODE_SECONDS:.0f} s at {t:.1f} s of "
                            "the video; a smaller or shorter file decodes in full")
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
                t_next += 1.0 / fps
                if t_next <= t:  # behind (a variable frame rate): the next one from here
                    t_next = float(t) + 1.0 / fps
        except bad as exc:
            if not frames:
                raise InputError(f"the video is damaged ({str(exc)[:200]}): save it again as "
                                 f"{limits}.") from None
            note = f"the video is damaged after {len(frames)} frames ({str(exc)[:120]})"
        if not frames:
            raise InputError(f"no picture could be decoded from the video: upload {limits}.")
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
