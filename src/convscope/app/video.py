"""Video files for the Live page (Yosinski et al. 2015's toolbox plays a video through the
network): an MP4 or WebM upload, checked, then decoded by :func:`convscope.data.video.decode`
(PyAV; ``pip install 'convscope[video]'``) into frames of the model's input size, under the
upload's limits below (far smaller than :func:`convscope.data.read_video`'s for local files).

What runs on an upload is only FFmpeg's demuxer of the claimed container and a decoder from an
allow-list; nothing else in the file is followed or executed (see :mod:`convscope.data.video`):

* the container is recognised by its magic bytes and opened with that one demuxer from memory,
  never probed; MP4 external data references stay off;
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

import threading

from ..data.video import CODECS, DEMUXERS, Video, VideoLimits, container_of
from ..data.video import decode as _decode_video
from ..errors import InputError

__all__ = ["MAX_VIDEO_BYTES", "MAX_VIDEO_SECONDS", "MAX_FRAMES", "MAX_FPS", "MAX_VIDEO_SIDE",
           "MAX_FRAME_BYTES", "MAX_DECODE_SECONDS", "CODECS", "DEMUXERS", "Video",
           "container_of", "decode", "limits"]

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

_decoding = threading.BoundedSemaphore(1)


def limits() -> VideoLimits:
    """The upload's limits, read from this module's constants at call time."""
    return VideoLimits(max_bytes=MAX_VIDEO_BYTES, max_seconds=MAX_VIDEO_SECONDS,
                       max_frames=MAX_FRAMES, max_fps=MAX_FPS, max_side=MAX_VIDEO_SIDE,
                       max_frame_bytes=MAX_FRAME_BYTES, max_decode_seconds=MAX_DECODE_SECONDS,
                       who="the live view")


def decode(raw: bytes, shape: tuple[int, int, int]) -> Video:
    """An MP4 or WebM upload's bytes -> :class:`Video` of frames the size of a model taking
    ``shape`` = ``(C, H, W)`` (C 1: grey, 3: RGB; each frame scaled so its short side fits,
    then centre-cropped), under the upload's :func:`limits`. Every refusal is an
    :class:`InputError` saying what to do."""
    lim = limits()
    if len(raw) > lim.max_bytes or container_of(raw[:64]) is None:
        return _decode_video(raw, shape, limits=lim)  # refused before anything waits or runs
    if not _decoding.acquire(timeout=DECODE_WAIT_S):
        raise InputError("the server is busy decoding another video: try again in a moment.")
    try:
        return _decode_video(raw, shape, limits=lim)
    finally:
        _decoding.release()
