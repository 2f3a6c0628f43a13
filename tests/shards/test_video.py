"""Clip codecs: lossless codecs give back the pixels bit for bit, with both decoders, deterministically."""

import numpy as np
import pytest

from shards.video import CODECS, decode_video, encode_frames


def sprite_frames(t: int = 16, size: int = 64) -> np.ndarray:
    """Flat colours, hard edges and moving sprites: what simulator frames look like."""
    frames = np.full((t, size, size, 3), 40, np.uint8)
    frames[:, ::8] = 90
    for i in range(t):
        frames[i, 5 + i : 15 + i, 10:20] = (255, 0, 0)
        frames[i, 30:38, 2 * i : 2 * i + 8] = (10, 200, 30)
    return frames


@pytest.mark.parametrize("codec", ["libx264rgb", "ffv1"])
@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_lossless_round_trip_is_bit_exact(codec, backend):
    rng = np.random.default_rng(0)
    for frames in (sprite_frames(), rng.integers(0, 256, (5, 32, 96, 3), dtype=np.uint8)):
        decoded = decode_video(encode_frames(frames, codec), backend=backend)
        assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
        np.testing.assert_array_equal(decoded, frames)


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_encoding_is_deterministic(codec):
    frames = sprite_frames()
    assert encode_frames(frames, codec) == encode_frames(frames, codec)


def test_lossy_h264_is_close():
    frames = sprite_frames(8, 64)
    decoded = decode_video(encode_frames(frames, "libx264", crf=18))
    mse = np.mean((decoded.astype(np.float64) - frames) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown codec"):
        encode_frames(sprite_frames(), "mpeg2")
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(sprite_frames().astype(np.float32), "ffv1")
    with pytest.raises(ValueError, match="even"):
        encode_frames(np.zeros((2, 15, 16, 3), np.uint8), "libx264")
    with pytest.raises(ValueError, match="backend"):
        decode_video(b"", backend="opencv")


def test_auto_backend_falls_back_to_pyav_where_decord_cannot():
    frames = np.random.default_rng(1).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_video(encode_frames(frames, "libx264rgb")), frames)


def test_garbage_bytes_fall_back_to_pyav_and_raise_its_error():
    with pytest.raises(ValueError, match="Invalid data"):  # av.InvalidDataError, not decord's RuntimeError
        decode_video(b"not a video")
