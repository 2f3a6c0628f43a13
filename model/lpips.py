"""Perceptual distances in plain PyTorch (no torchvision): LPIPS and shift-tolerant ST-LPIPS.

Both compare images float [..., 3, H, W] in [-1, 1] and return one distance per image [...]:

    d(x, y) = sum_l mean_hw( w_l . (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2 )

with f_l the five tapped ReLU outputs of a backbone fed ``(x - shift) / scale`` and w_l the 1x1 "linear
calibration" convs, the same computation as the ``lpips`` package (version 0.1, ``spatial=False``).

- **LPIPS** (Zhang et al. 2018, "alex", v0.1): the torchvision AlexNet ``features`` layout. Its ImageNet
  weights ship in no package here: pass a local torchvision alexnet state dict (``alexnet-owt-7be5be79.pth``
  from download.pytorch.org), in this project the override ``eval.lpips_backbone=PATH``. The calibration
  weights come from ``lpips/weights/v0.1/alex.pth`` inside the ``lpips`` wheel.
- **ST-LPIPS** (Ghildyal & Liu 2022, "shift-tolerant"): AlexNet with a stride-1 conv1 and [1, 2, 1]
  blur-pools (or a blur-pooled VGG16), whole networks shipped in the ``stlpips-pytorch`` wheel. Its values
  are on a different scale from LPIPS in papers: always report it as "ST-LPIPS", never as "LPIPS".

Minimum image side (smaller inputs raise ``ValueError``): LPIPS 31, ST-LPIPS alex 21, ST-LPIPS vgg 18.
MultiGrid (128) and Procgen (224) frames, and small 64x64 frames, are all fine.

The ``lpips`` and ``stlpips-pytorch`` packages are installed with ``--no-deps`` and never imported (they
import torchvision): only their weight files are read, located with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Input normalisation of LPIPS v0.1 (``lpips.ScalingLayer``): ImageNet mean/std re-expressed for [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # added to the channel norm, as in ``lpips.normalize_tensor``

LPIPS_BACKBONE_HELP = (
    "LPIPS(alex) needs the torchvision AlexNet ImageNet weights as a local file: a state dict with keys "
    "'features.0.weight', ... (torchvision's alexnet-owt-7be5be79.pth from download.pytorch.org, e.g. "
    "~/.cache/torch/hub/checkpoints/ on a machine that has torchvision). No package here ships it; pass its "
    "path with eval.lpips_backbone=PATH."
)
STLPIPS_INSTALL = "pip install --no-deps stlpips-pytorch==0.0.2"
LPIPS_INSTALL = "pip install --no-deps lpips==0.1.4"


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 downsampling (Zhang 2019), the ST-LPIPS variant: reflect-pad 2 on each side,
    then a depthwise 3x3 binomial blur ([1, 2, 1] outer [1, 2, 1] / 16) with stride 2.
    [B, C, H, W] -> [B, C, floor((H + 1) / 2) + 1, floor((W + 1) / 2) + 1]; needs H, W >= 3."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16
        # Not persistent: a constant, checked against the weight files' copies when loading.
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.kernel, stride=2, groups=self.channels)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding), nn.ReLU()]


Backbone = tuple[nn.Sequential, tuple[int, ...], tuple[int, ...]]  # layers, tap indices, tap widths


def alexnet_features() -> Backbone:
    """torchvision's ``AlexNet.features`` layout (indices match its state-dict keys) and the LPIPS taps
    (relu1..relu5)."""
    layers = [
        *_conv(3, 64, 11, stride=4, padding=2),  # 0, 1
        nn.MaxPool2d(3, 2),  # 2
        *_conv(64, 192, 5, padding=2),  # 3, 4
        nn.MaxPool2d(3, 2),  # 5
        *_conv(192, 384, 3, padding=1),  # 6, 7
        *_conv(384, 256, 3, padding=1),  # 8, 9
        *_conv(256, 256, 3, padding=1),  # 10, 11
        nn.MaxPool2d(3, 2),  # 12: unused by LPIPS, kept so the layout is torchvision's
    ]
    return nn.Sequential(*layers), (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)


def st_alexnet_features() -> Backbone:
    """The ST-LPIPS AlexNet ("shift_tolerant"): conv1 stride 1, every stride-2 step a blur-pool, blur before
    the first ReLU. Indices match the ``net.sliceN.<index>`` keys of ``alex_shift_tolerant.pth``."""
    layers = [
        nn.Conv2d(3, 64, 11, stride=1, padding=2),  # 0
        BlurPool2d(64),  # 1
        nn.ReLU(),  # 2: tap
        nn.MaxPool2d(3, 1),  # 3
        BlurPool2d(64),  # 4
        *_conv(64, 192, 5, padding=2),  # 5, 6: tap
        nn.MaxPool2d(3, 1),  # 7
        BlurPool2d(192),  # 8
        *_conv(192, 384, 3, padding=1),  # 9, 10: tap
        *_conv(384, 256, 3, padding=1),  # 11, 12: tap
        *_conv(256, 256, 3, padding=1),  # 13, 14: tap (the final pool of the package's net is never used)
    ]
    return nn.Sequential(*layers), (2, 6, 10, 12, 14), (64, 192, 384, 256, 256)


def st_vgg_features() -> Backbone:
    """The ST-LPIPS VGG16: each 2x2/2 max-pool becomes a 2x2/1 max-pool then a blur-pool. Taps relu1_2,
    relu2_2, relu3_3, relu4_3, relu5_3; indices match ``vgg_shift_tolerant.pth``."""
    layers: list[nn.Module] = []
    c_in = 3
    for stage, (width, depth) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if stage > 0:
            layers += [nn.MaxPool2d(2, 1), BlurPool2d(c_in)]
        for _ in range(depth):
            layers += _conv(c_in, width, 3, padding=1)
            c_in = width
    return nn.Sequential(*layers), (3, 9, 17, 25, 33), (64, 128, 256, 512, 512)


class PerceptualDistance(nn.Module):
    """LPIPS-style distance on a backbone ``features`` tapped after the layers ``taps``.

    ``forward(pred, target)``: [..., 3, H, W] x2 in [-1, 1] -> [...]. Runs in fp32 with autocast off (the
    unit-normalisation divides by norms that bf16 rounds badly). Parameters are frozen, but gradients still
    flow to the inputs. ``min_size`` is the smallest accepted H and W.
    """

    min_size: int = 1
    name: str = "perceptual distance"

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...], widths: tuple[int, ...]):
        super().__init__()
        self.features = features
        self.taps = taps
        self.register_buffer("shift", torch.tensor(SHIFT).view(3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(3, 1, 1), persistent=False)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        self.requires_grad_(False)
        self.eval()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[N, 3, H, W] in [-1, 1] -> unit-normalised (over channels) tapped feature maps."""
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            h = layer(h)
            if i in self.taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + EPS))
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.ndim < 3 or pred.shape[-3] != 3:
            raise ValueError(
                f"{self.name}: expected two [..., 3, H, W] images, got {pred.shape}, {target.shape}"
            )
        if min(pred.shape[-2:]) < self.min_size:
            raise ValueError(
                f"{self.name} needs images of at least {self.min_size}x{self.min_size}, got {pred.shape}"
            )
        lead = pred.shape[:-3]
        with torch.autocast(pred.device.type, enabled=False):
            # Two passes, not one batch, so identical images give exactly 0.
            fx = self._features(pred.reshape(-1, *pred.shape[-3:]).float())
            fy = self._features(target.reshape(-1, *target.shape[-3:]).float())
            dist = sum(
                lin((a - b).pow(2)).mean(dim=(-2, -1)) for lin, a, b in zip(self.lins, fx, fy, strict=True)
            )
        return dist.reshape(lead)  # [N, 1] -> [...]


class LPIPS(PerceptualDistance):
    """Standard LPIPS (alex, v0.1). Build with ``load_lpips``; minimum image side 31."""

    min_size = 31
    name = "LPIPS"

    def __init__(self):
        super().__init__(*alexnet_features())


# ST-LPIPS backbones: name -> (builder, minimum image side).
ST_NETS = {"alex": (st_alexnet_features, 21), "vgg": (st_vgg_features, 18)}


class STLPIPS(PerceptualDistance):
    """Shift-tolerant LPIPS (``net`` "alex" or "vgg"). Build with ``load_stlpips``; minimum image side
    21 (alex) or 18 (vgg). Not on the scale of LPIPS: report it as ST-LPIPS."""

    def __init__(self, net: str = "alex"):
        if net not in ST_NETS:
            raise ValueError(f"ST-LPIPS net must be one of {sorted(ST_NETS)}, got {net!r}")
        build, min_size = ST_NETS[net]
        super().__init__(*build())
        self.min_size = min_size
        self.net = net
        self.name = f"ST-LPIPS({net})"


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed: {install}")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall with {install}")
    return path


def _read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _lin_key(key: str) -> str | None:
    """``lin3.model.1.weight`` (lpips' ``NetLinLayer``: dropout, then the 1x1 conv) -> ``lins.3.weight``."""
    m = re.fullmatch(r"lin(\d)\.model\.1\.weight", key)
    return f"lins.{m[1]}.weight" if m else None


def _load_strict(model: PerceptualDistance, state: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{model.name}: weights from {source} do not fit: missing {missing}, unexpected {unexpected}"
        )


def _check_constant(key: str, value: torch.Tensor, expected: torch.Tensor, source: Path) -> None:
    if value.shape != expected.shape or not torch.allclose(value.float(), expected, atol=1e-6):
        raise ValueError(f"{source}: {key} differs from the constant this implementation assumes")


def load_lpips(
    backbone: str | Path | None, linear: str | Path | None = None, device: str | torch.device = "cpu"
) -> LPIPS:
    """Standard LPIPS (alex, v0.1) from a torchvision AlexNet state dict ``backbone`` (its ``classifier.*``
    entries are ignored) and the calibration weights ``linear`` (None: the ``lpips`` package's
    ``weights/v0.1/alex.pth``). Any other missing or unexpected key raises."""
    if backbone is None or str(backbone) == "" or not Path(backbone).is_file():
        raise FileNotFoundError(f"{LPIPS_BACKBONE_HELP} (got {backbone!r})")
    if linear is None:
        linear = package_file("lpips", "weights/v0.1/alex.pth", LPIPS_INSTALL)
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in _read_state_dict(backbone).items():
        if key.startswith("features."):
            state[key] = value
        elif not key.startswith("classifier."):
            unexpected.append(key)
    for key, value in _read_state_dict(linear).items():
        ours = _lin_key(key)
        if ours is None:
            unexpected.append(key)
        else:
            state[ours] = value
    if unexpected:
        raise ValueError(f"LPIPS: unexpected keys {unexpected} in {backbone} / {linear}")
    model = LPIPS()
    _load_strict(model, state, f"{backbone} and {linear}")
    return model.to(device)


def load_stlpips(
    net: str = "alex", path: str | Path | None = None, device: str | torch.device = "cpu"
) -> STLPIPS:
    """ST-LPIPS from the whole-network file ``path`` (None: ``stlpips-pytorch``'s
    ``weights/vST0.0/{net}_shift_tolerant.pth``). Every key of the file is used or checked: the conv and
    calibration weights load, the stored scaling constants and blur kernels must equal ours."""
    model = STLPIPS(net)
    if path is None:
        path = package_file("stlpips_pytorch", f"weights/vST0.0/{net}_shift_tolerant.pth", STLPIPS_INSTALL)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ST-LPIPS weights {path} not found (the default comes with {STLPIPS_INSTALL})"
        )
    # The package splits the backbone into net.slice1..5 at the taps; layer indices are global.
    bounds = (-1, *model.taps)
    state: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in _read_state_dict(path).items():
        m = re.fullmatch(r"net\.slice(\d)\.(\d+)\.(weight|bias|filt)", key)
        if key in ("scaling_layer.shift", "scaling_layer.scale"):
            const = model.shift if key.endswith("shift") else model.scale
            _check_constant(key, value, const.view(1, 3, 1, 1), path)
        elif _lin_key(key) is not None:
            state[_lin_key(key)] = value
        elif (
            m and 1 <= int(m[1]) <= len(model.taps) and bounds[int(m[1]) - 1] < int(m[2]) <= bounds[int(m[1])]
        ):
            layer = model.features[int(m[2])]
            if m[3] == "filt":
                if not isinstance(layer, BlurPool2d):
                    raise ValueError(f"{path}: {key} is a blur kernel, but layer {m[2]} is {layer}")
                _check_constant(key, value, layer.kernel, path)
            else:
                state[f"features.{m[2]}.{m[3]}"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"ST-LPIPS: unexpected keys {unexpected} in {path}")
    _load_strict(model, state, str(path))
    return model.to(device)
