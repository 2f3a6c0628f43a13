"""Raw samples (``shards/tar.py``) into tensors: the clip's meta checked against ``ClipMeta``, a window
chosen, only the window's frames decoded (decord, PyAV fallback) with their count and size checked before
anything is allocated, and the ground-truth arrays sliced to the same window. Bad data is a counted,
logged skip (``SampleError``); a dataset this code cannot read (another format version) raises."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from shards.format import (
    ACTIONS_KEY,
    DONES_KEY,
    META_KEY,
    POSITIONS_KEY,
    READABLE_FORMAT_VERSIONS,
    REWARDS_KEY,
    ClipMeta,
    npy_load,
)
from shards.stats import LoaderStats, tally
from shards.tar import RawSample
from shards.video import VideoShapeError, check_frames, decode_video, decord_frames

log = logging.getLogger(__name__)

# Decoded size above which a clip is refused whatever its meta says (the meta is data, not a promise):
# 1 GiB is 64x a 16-frame 1024x1024 clip. Raise it here for longer or larger clips.
MAX_CLIP_BYTES = 1 << 30
_WINDOW_SALT = 0x3D0E  # keeps window starts a stream of their own (see shards/loader.py's salts)


class SampleError(Exception):
    """A sample that cannot be used; ``reason`` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def window_start(key: str, num_frames: int, window: int | None, seed: int, epoch: int) -> int:
    """Start of the ``window``-frame crop of clip ``key``: drawn from (seed, epoch, key) only, so it does
    not depend on rank, worker or resume point. 0 without a window."""
    if window is None or window >= num_frames:
        return 0
    rng = np.random.default_rng([seed, epoch, zlib.crc32(key.encode()), _WINDOW_SALT])
    return int(rng.integers(num_frames - window + 1))


def decode_samples(
    samples: Iterable[RawSample],
    *,
    layout: str = "THWC",
    window: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    backend: str = "auto",
    stats: LoaderStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Decode raw samples into tensors (see the module doc for the dict); skip, log and count the bad."""
    for raw in samples:
        try:
            sample = decode_sample(raw, layout=layout, window=window, seed=seed, epoch=epoch, backend=backend)
        except SampleError as err:
            tally(stats, f"skip_{err.reason}")
            log.warning("skipped sample %s in %s (%s): %s", raw.key, raw.shard, err.reason, err)
            continue
        tally(stats, "samples")
        yield sample


def decode_sample(
    raw: RawSample,
    *,
    layout: str = "THWC",
    window: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    backend: str = "auto",
) -> dict[str, Any]:
    """One raw sample -> dict of tensors; raises SampleError for bad data, ValueError for bad config."""
    members = raw.members
    if META_KEY not in members:
        raise SampleError("missing", f"no .{META_KEY} member (has {sorted(members)})")
    try:
        meta_dict = json.loads(members[META_KEY])
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise SampleError("meta", f"unreadable meta: {type(err).__name__}: {err}") from err
    if not isinstance(meta_dict, dict):
        raise SampleError("meta", "meta is not a JSON object")
    if meta_dict.get("format_version") not in READABLE_FORMAT_VERSIONS:
        # Not a corrupt sample but a dataset this code cannot read: stop rather than skip everything.
        raise ValueError(
            f"{raw.shard}: sample {raw.key} has format_version {meta_dict.get('format_version')}, this "
            f"code reads {list(READABLE_FORMAT_VERSIONS)}: re-ingest the dataset"
        )
    try:
        meta = ClipMeta.checked(meta_dict)
    except ValueError as err:  # missing or unknown fields, wrong types or ranges
        raise SampleError("meta", f"meta does not match ClipMeta: {err}") from err

    t = meta.num_frames
    if t * meta.height * meta.width * 3 > MAX_CLIP_BYTES:
        raise SampleError(
            "shape",
            f"meta says {t} frames of {meta.height}x{meta.width}: over {MAX_CLIP_BYTES} bytes decoded "
            "(shards.decode.MAX_CLIP_BYTES)",
        )
    if window is not None and window > t:
        raise ValueError(f"window={window} is longer than clip {raw.key} ({t} frames)")
    start = window_start(raw.key, t, window, seed, epoch)
    stop = t if window is None else start + window

    if meta.video_ext not in members:
        raise SampleError("missing", f"no .{meta.video_ext} member (has {sorted(members)})")
    arrays = {}
    for name, member, wanted in (
        ("actions", ACTIONS_KEY, meta.has_actions),
        ("positions", POSITIONS_KEY, meta.has_positions),
        ("rewards", REWARDS_KEY, meta.has_rewards),
        ("dones", DONES_KEY, meta.has_rewards),
    ):
        if not wanted:
            continue
        if member not in members:
            raise SampleError("missing", f"no .{member} member although the meta says has_{name}")
        try:
            array = _load_npy(members[member])
        except (ValueError, EOFError) as err:
            raise SampleError("array", f"unreadable {member}: {err}") from err
        if array.ndim == 0 or array.shape[0] != t:
            raise SampleError("shape", f"{name} has shape {array.shape}, the clip has {t} frames")
        arrays[name] = torch.from_numpy(array[start:stop].copy())  # npy members load read-only

    frames = _decode_frames(members[meta.video_ext], start, stop, (t, meta.height, meta.width), backend)
    if frames.shape[1:] != (meta.height, meta.width, 3):
        raise SampleError("shape", f"frames are {frames.shape[1:]}, the meta says {meta.height}x{meta.width}")
    tensor = torch.from_numpy(frames)
    if layout == "TCHW":
        tensor = tensor.permute(0, 3, 1, 2).contiguous()
    return {
        "frames": tensor,
        **arrays,
        "key": raw.key,
        "shard": raw.shard,
        "meta": meta_dict,
        "start": start,
        "cursor": raw.cursor,
    }


_NPY_HEADERS: dict[bytes, tuple[tuple[int, ...], np.dtype]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """``npy_load`` with the header parse cached (numpy parses it with ast.literal_eval, about 0.1 ms;
    the samples of a dataset share a handful of headers). Returns a read-only view of ``data``."""
    if data[:8] != b"\x93NUMPY\x01\x00" or len(data) < 10:
        return npy_load(data)  # other format versions: numpy's reader
    end = 10 + int.from_bytes(data[8:10], "little")
    header = data[10:end]
    spec = _NPY_HEADERS.get(header)
    if spec is None:
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(io.BytesIO(data[8:]))
        if fortran_order or dtype.hasobject:
            return npy_load(data)
        spec = _NPY_HEADERS.setdefault(header, (shape, dtype))
    shape, dtype = spec
    count = int(np.prod(shape))
    if len(data) - end != count * dtype.itemsize:
        raise ValueError(f"npy payload is {len(data) - end} bytes, its header says {count * dtype.itemsize}")
    return np.frombuffer(data, dtype, count, offset=end).reshape(shape)


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What the decoders raise on bad bytes. decord raises a bare RuntimeError when it cannot open the
    input (and DECORDError, not a RuntimeError, when it fails later); PyAV raises FFmpegError and its
    subclasses; decode_video raises ValueError for a video without frames."""
    errors: list[type[BaseException]] = [RuntimeError, ValueError]
    if importlib.util.find_spec("decord") is not None:
        from decord._ffi.base import DECORDError

        errors.append(DECORDError)
    if importlib.util.find_spec("av") is not None:
        import av

        errors.append(av.FFmpegError)
    return tuple(errors)


_DECODE_ERRORS: tuple[type[BaseException], ...] | None = None


def _decode_frames(
    data: bytes, start: int, stop: int, expect: tuple[int, int, int], backend: str
) -> np.ndarray:
    """Frames [stop - start, H, W, 3] uint8 of a clip of ``expect`` = (T, H, W) per its meta. A window is
    read with decord's get_batch on just its frames (decoding stops after the window's last frame); a
    full clip goes through ``shards.video.decode_video`` (decord, PyAV fallback). Either way the frame
    count and size are checked before the frames are allocated (a decompression bomb is a skip)."""
    global _DECODE_ERRORS
    if _DECODE_ERRORS is None:
        _DECODE_ERRORS = _decode_errors()
    try:
        if (start, stop) != (0, expect[0]) and backend != "pyav" and _have_decord():
            frames = _decode_window_decord(data, start, stop, expect, backend)
        else:
            frames = decode_video(data, backend, expect)[start:stop]
    except VideoShapeError as err:
        raise SampleError("shape", str(err)) from err
    except _DECODE_ERRORS as err:
        raise SampleError("decode", f"{type(err).__name__}: {err}") from err
    return frames if frames.flags.writeable else frames.copy()  # torch wants writable memory


def _decode_window_decord(
    data: bytes, start: int, stop: int, expect: tuple[int, int, int], backend: str
) -> np.ndarray:
    import decord
    from decord._ffi.base import DECORDError

    try:
        reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        check_frames(len(reader), None, expect)
        return decord_frames(reader, list(range(start, stop)), expect[1:])
    except (DECORDError, RuntimeError):
        if backend == "decord":
            raise
    # decord cannot copy out a few frame sizes (see shards.video): PyAV decodes the whole clip.
    return decode_video(data, "pyav", expect)[start:stop]


_HAVE_DECORD: bool | None = None


def _have_decord() -> bool:
    global _HAVE_DECORD
    if _HAVE_DECORD is None:
        _HAVE_DECORD = importlib.util.find_spec("decord") is not None
    return _HAVE_DECORD
