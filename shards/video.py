"""Clip encode/decode. PyAV encodes; decord decodes (2-10x faster), PyAV is the fallback.

Codecs (``CODECS``):
    libx264rgb  H.264 in RGB, crf 0, in mp4: lossless (bit-exact RGB), the simulator default.
    ffv1        FFV1 in mkv: lossless, faster to encode, larger files.
    libx264     H.264 yuv420p in mp4, crf ``quality`` (default 18): lossy, for camera frames.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Codec:
    name: str  # ffmpeg encoder
    ext: str  # container and sample member extension
    pix_fmt: str
    lossless: bool


CODECS: dict[str, Codec] = {
    "libx264rgb": Codec("libx264rgb", "mp4", "rgb24", True),
    "ffv1": Codec("ffv1", "mkv", "bgr0", True),
    "libx264": Codec("libx264", "mp4", "yuv420p", False),
}


def get_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {sorted(CODECS)}")
    return CODECS[name]


def encode_frames(frames: np.ndarray, codec: str = "libx264rgb", fps: float = 15.0, crf: int = 18) -> bytes:
    """Encode uint8 frames [T, H, W, 3] (RGB) into a video file held in memory.

    Deterministic: one encoder thread and no timestamps in the container, so the same frames give the
    same bytes. ``crf`` applies to lossy ``libx264`` only (lossless codecs always use crf 0).
    """
    import av
    from av.video.reformatter import VideoReformatter

    spec = get_codec(codec)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    if spec.pix_fmt == "yuv420p" and (h % 2 or w % 2):
        raise ValueError(f"{codec} needs even frame sizes, got {h}x{w}")
    buf = io.BytesIO()
    options = {"threads": "1"}
    if spec.name == "libx264rgb":
        options.update({"crf": "0", "preset": "medium"})
    elif spec.name == "libx264":
        # "faster": 2x the speed of "medium" on 224x224 camera clips at crf 18 for -0.1 dB and 5% smaller
        # files (measured by bench/nuplan.py's author); encode otherwise costs as much as JPEG decode.
        options.update({"crf": str(crf), "preset": "faster", **_x264_determinism_options()})
    elif spec.name == "ffv1":
        options.update({"level": "3", "slices": "4", "slicecrc": "1"})
    # fflags=bitexact drops the muxer's version string and creation times: byte-identical reruns.
    with av.open(
        buf, mode="w", format="matroska" if spec.ext == "mkv" else "mp4", options={"fflags": "+bitexact"}
    ) as container:
        stream = container.add_stream(spec.name, rate=_fps_fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, spec.pix_fmt
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        reformatter = VideoReformatter()  # one colour converter per clip: ~2 ms/frame cheaper than per frame
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            if spec.pix_fmt != "rgb24":
                video_frame = reformatter.reformat(video_frame, format=spec.pix_fmt)
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


@functools.cache
def _x264_determinism_options() -> dict[str, str]:
    """Lossy x264 options that keep the output deterministic on this CPU.

    On AVX-512 machines the x264 in PyAV 18's wheels (core 165) gives different bytes for the same frames
    from run to run in about half of 224x224 16-frame clips at crf 18 (its AVX-512 paths; mbtree=0 or
    the AVX2 paths make it deterministic). So where the CPU has AVX-512, x264 is limited to its AVX2
    code (which every AVX-512 CPU runs; measured: same size, no slower). Elsewhere x264 picks its own.
    """
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = " avx512f" in f.read()
    except OSError:  # not Linux: x264's own detection
        avx512 = False
    return {"x264-params": "asm=AVX2"} if avx512 else {}


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)


class VideoShapeError(ValueError):
    """The video does not hold the frames its sample's meta promises (count or size); raised before the
    frames are allocated, so a small crafted file cannot expand into gigabytes."""


def decode_video(
    data: bytes, backend: str = "auto", expect: tuple[int, int, int] | None = None
) -> np.ndarray:
    """Decode a video file held in memory into uint8 frames [T, H, W, 3] (RGB).

    ``backend``: "decord", "pyav" or "auto" (decord when importable, else PyAV; PyAV also takes over
    the few frame sizes decord 0.6 cannot copy out, e.g. 16 or 48 pixels wide). ``expect``: the
    (T, H, W) the caller knows; the frame count and the first frame's size are checked against it
    before the rest is decoded (VideoShapeError), which bounds memory by the expected clip.
    """
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"unknown decode backend {backend!r}; expected auto, decord or pyav")
    if backend == "decord":
        return _decode_decord(data, expect)
    if backend == "auto" and _have_decord():
        from decord._ffi.base import DECORDError

        try:
            return _decode_decord(data, expect)
        except (DECORDError, RuntimeError):  # decord raises a bare RuntimeError on bytes it cannot open
            pass
    return _decode_pyav(data, expect)


def _have_decord() -> bool:
    import importlib.util

    return importlib.util.find_spec("decord") is not None


def check_frames(num_frames: int | None, size: tuple[int, ...] | None, expect: tuple[int, int, int]) -> None:
    """Raise VideoShapeError when a video's frame count or first frame's (H, W) differ from ``expect``."""
    t, h, w = expect
    if num_frames is not None and num_frames != t:
        raise VideoShapeError(f"video has {num_frames} frames, the meta says {t}")
    if size is not None and tuple(size[:2]) != (h, w):
        raise VideoShapeError(f"frames are {size[0]}x{size[1]}, the meta says {h}x{w}")


def decord_frames(reader, indices: list[int], size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames ``indices`` of a decord VideoReader as uint8 [len, H, W, 3]. With ``size`` (H, W), the first
    frame is decoded alone and checked before the others are (same speed: decord decodes in order)."""
    if size is None or len(indices) < 2:
        frames = reader.get_batch(indices).asnumpy()
        if size is not None:
            check_frames(None, frames.shape[1:], (len(indices), *size))
        return frames
    first = reader.get_batch(indices[:1]).asnumpy()
    check_frames(None, first.shape[1:], (len(indices), *size))
    return np.concatenate([first, reader.get_batch(indices[1:]).asnumpy()])


def _decode_decord(data: bytes, expect: tuple[int, int, int] | None = None) -> np.ndarray:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    if expect is not None:
        check_frames(len(reader), None, expect)
    frames = decord_frames(reader, list(range(len(reader))), None if expect is None else expect[1:])
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _decode_pyav(data: bytes, expect: tuple[int, int, int] | None = None) -> np.ndarray:
    import av

    frames = []
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        if expect is not None:  # the header's size (and count, where the container has one) first
            size = (stream.codec_context.height, stream.codec_context.width)
            check_frames(stream.frames or None, size, expect)
        for frame in container.decode(stream):
            if expect is not None and len(frames) == expect[0]:
                raise VideoShapeError(f"video has more than {expect[0]} frames, the meta says {expect[0]}")
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError("video holds no frames")
    if expect is not None:
        check_frames(len(frames), frames[0].shape, expect)
    return np.stack(frames)
