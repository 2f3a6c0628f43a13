"""LPIPS / ST-LPIPS: metric properties, strict weight loading, and agreement with the ``lpips`` and
``stlpips-pytorch`` packages' own code (run as references with torchvision & co. stubbed: the code paths
compared never touch them). The AlexNet ImageNet weights are not available here, so LPIPS is compared on a
random backbone; ST-LPIPS is compared with its real shipped weights."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from model.lpips import LPIPS, STLPIPS, load_lpips, load_stlpips

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def package_path(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


LPIPS_DIR = package_path("lpips")
STLPIPS_DIR = package_path("stlpips_pytorch")
ALEX_LIN = LPIPS_DIR / "weights/v0.1/alex.pth" if LPIPS_DIR else None
ST_FILES = (
    {net: STLPIPS_DIR / f"weights/vST0.0/{net}_shift_tolerant.pth" for net in ("alex", "vgg")}
    if STLPIPS_DIR
    else {}
)
needs_alex_lin = pytest.mark.skipif(
    not (ALEX_LIN and ALEX_LIN.is_file()), reason="lpips==0.1.4 not installed"
)


def needs_st(net: str):
    return pytest.mark.skipif(
        not (net in ST_FILES and ST_FILES[net].is_file()), reason="stlpips-pytorch==0.0.2 not installed"
    )


def images(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A smooth colour texture in [-1, 1]: low-resolution noise upsampled bilinearly. [3, h, w]"""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 4 + 1, w // 4 + 1, generator=g)
    up = nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return up * 2 - 1


@pytest.fixture
def alexnet_file(tmp_path: Path) -> Path:
    """A random AlexNet in torchvision's state-dict layout (He init, so features stay non-trivial), plus a
    (tiny, wrongly shaped: it is ignored) classifier as in the real file."""
    g = torch.Generator().manual_seed(1)
    state = {}
    for index, (c_in, c_out, k) in {
        0: (3, 64, 11),
        3: (64, 192, 5),
        6: (192, 384, 3),
        8: (384, 256, 3),
        10: (256, 256, 3),
    }.items():
        state[f"features.{index}.weight"] = (
            torch.randn(c_out, c_in, k, k, generator=g) * (2 / (c_in * k * k)) ** 0.5
        )
        state[f"features.{index}.bias"] = torch.randn(c_out, generator=g) * 0.01
    for index in (1, 4, 6):
        state[f"classifier.{index}.weight"] = torch.zeros(2, 2)
        state[f"classifier.{index}.bias"] = torch.zeros(2)
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    return path


@pytest.fixture
def references(monkeypatch):
    """The packages' own modules, imported with the modules they import but never use on these code paths
    (torchvision, torchsummary, IPython) stubbed; the packages are dropped from sys.modules afterwards.
    ``torchvision.models.alexnet`` is stubbed with the plain-PyTorch AlexNet ("vanilla") of stlpips-pytorch,
    which the caller fills with weights by setting ``tv.alexnet_state``."""
    if LPIPS_DIR is None or STLPIPS_DIR is None:
        pytest.skip("lpips / stlpips-pytorch not installed")
    pytest.importorskip("scipy")  # lpips.trainer imports scipy.ndimage
    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchsummary", types.SimpleNamespace(summary=None))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(embed=None))
    before = set(sys.modules)
    import lpips
    import stlpips_pytorch.invariant_networks as inv
    import stlpips_pytorch.stlpips as stlpips

    def alexnet(pretrained: bool = False):
        assert not pretrained
        vanilla = inv.alexnet(variant="vanilla")
        features = nn.Sequential(
            *[
                m
                for s in (vanilla.slice1, vanilla.slice2, vanilla.slice3, vanilla.slice4, vanilla.slice5)
                for m in s
            ]
        )
        features.load_state_dict(tv.alexnet_state)
        return types.SimpleNamespace(features=features)

    tv.models.alexnet = alexnet
    yield types.SimpleNamespace(lpips=lpips, stlpips=stlpips, tv=tv)
    for name in set(sys.modules) - before:
        if name.split(".")[0] in ("lpips", "stlpips_pytorch"):
            del sys.modules[name]


@needs_alex_lin
def test_lpips_random_backbone_metric_properties(alexnet_file):
    model = load_lpips(alexnet_file)
    a, b = images(2, 3, 3, 32, 40), images(2, 3, 3, 32, 40, seed=1)
    d = model(a, b)
    assert d.shape == (2, 3) and bool((d > 0).all())
    assert model(a, a).abs().max().item() == 0.0
    torch.testing.assert_close(model(b, a), d)
    single = model(a[0, 0], b[0, 0])
    assert single.shape == () and single.item() == pytest.approx(d[0, 0].item(), rel=1e-5)


@needs_alex_lin
def test_lpips_matches_lpips_package(alexnet_file, references):
    state = torch.load(alexnet_file, weights_only=True, map_location="cpu")
    references.tv.alexnet_state = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    ref = references.lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    ours = load_lpips(alexnet_file)
    a, b = images(3, 3, 48, 64, seed=2), images(3, 3, 48, 64, seed=3)
    expected = ref(a, b).flatten()
    assert bool((expected > 0).all())
    torch.testing.assert_close(ours(a, b), expected, rtol=1e-5, atol=1e-7)


def test_lpips_needs_a_backbone_file(tmp_path):
    for missing in (None, "", tmp_path / "alexnet.pth"):
        with pytest.raises(FileNotFoundError, match=r"AlexNet.*eval\.lpips_backbone=PATH"):
            load_lpips(missing)


@needs_alex_lin
def test_lpips_linear_weights_load_every_key(alexnet_file, tmp_path):
    model = load_lpips(alexnet_file)
    lin = torch.load(ALEX_LIN, weights_only=True, map_location="cpu")
    assert sorted(lin) == [f"lin{i}.model.1.weight" for i in range(5)]
    for i in range(5):
        assert torch.equal(model.lins[i].weight, lin[f"lin{i}.model.1.weight"])
    state = torch.load(alexnet_file, weights_only=True, map_location="cpu")
    assert torch.equal(model.features[3].weight, state["features.3.weight"])
    # Anything else in either file, or anything missing, fails loudly.
    torch.save({**state, "features.13.weight": torch.zeros(1)}, bad := tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=re.escape("features.13.weight")):
        load_lpips(bad)
    torch.save({k: v for k, v in state.items() if k != "features.8.bias"}, bad)
    with pytest.raises(ValueError, match=re.escape("features.8.bias")):
        load_lpips(bad)
    torch.save({k: v for k, v in lin.items() if k != "lin2.model.1.weight"}, bad_lin := tmp_path / "lin.pth")
    with pytest.raises(ValueError, match=re.escape("lins.2.weight")):
        load_lpips(alexnet_file, bad_lin)


@needs_st("alex")
def test_stlpips_alex_real_weights():
    model = load_stlpips("alex")
    file = torch.load(ST_FILES["alex"], weights_only=True, map_location="cpu")
    assert torch.equal(model.features[13].bias, file["net.slice5.13.bias"])
    assert torch.equal(model.lins[4].weight, file["lin4.model.1.weight"])
    a = torch.stack([texture(64, 64, seed) for seed in range(2)])
    assert model(a, a).abs().max().item() == 0.0
    # A 1-pixel shift of a texture vs. noise of the same MSE: the shift is the smaller distance.
    wide = torch.stack([texture(64, 65, seed) for seed in range(2)])
    x, shifted = wide[..., :64], wide[..., 1:]
    mse = (x - shifted).pow(2).mean()
    noisy = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * mse.sqrt()
    d_shift, d_noise = model(x, shifted), model(x, noisy)
    assert bool((d_shift > 0).all()) and bool((d_shift < d_noise).all()), (d_shift, d_noise)


@needs_st("alex")
@needs_st("vgg")
def test_stlpips_matches_stlpips_package(references):
    a, b = images(2, 3, 40, 48, seed=4), images(2, 3, 40, 48, seed=5)
    b = a + 0.3 * (b - a)
    for net in ("alex", "vgg"):
        ref = references.stlpips.LPIPS(net=net, variant="shift_tolerant", pretrained=True, verbose=False)
        # It loads its file with strict=False: check that every parameter came from the file ("lins.*" alias
        # "lin0".."lin4").
        missing, unexpected = ref.load_state_dict(
            torch.load(ST_FILES[net], weights_only=True, map_location="cpu"), strict=False
        )
        assert not unexpected and all(k.startswith("lins.") for k in missing)
        expected = ref(a, b).flatten()
        torch.testing.assert_close(load_stlpips(net)(a, b), expected, rtol=1e-5, atol=1e-7)


@needs_st("alex")
def test_stlpips_rejects_foreign_keys(tmp_path):
    state = torch.load(ST_FILES["alex"], weights_only=True, map_location="cpu")
    torch.save({**state, "net.slice5.15.weight": torch.zeros(1)}, bad := tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=re.escape("net.slice5.15.weight")):
        load_stlpips("alex", bad)
    torch.save({**state, "net.slice1.1.filt": state["net.slice1.1.filt"] * 2}, bad)
    with pytest.raises(ValueError, match=re.escape("net.slice1.1.filt")):
        load_stlpips("alex", bad)
    with pytest.raises(FileNotFoundError, match=re.escape("stlpips-pytorch==0.0.2")):
        load_stlpips("alex", tmp_path / "absent.pth")


def test_minimum_sizes():
    for model in (LPIPS(), STLPIPS("alex"), STLPIPS("vgg")):
        s = model.min_size
        model(images(1, 3, s, s + 5), images(1, 3, s, s + 5, seed=1))
        with pytest.raises(ValueError, match=f"at least {s}x{s}"):
            model(images(1, 3, s + 5, s - 1), images(1, 3, s + 5, s - 1))
    with pytest.raises(ValueError, match="3, H, W"):
        STLPIPS()(images(1, 4, 32, 32), images(1, 4, 32, 32))
