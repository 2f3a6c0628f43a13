"""Frame tokenizer: shapes for both archs, code range, codes <-> features, conversions, bf16 autocast,
config/input errors, and a tiny tokenizer overfitting a few synthetic frames."""

from __future__ import annotations

import ast

import pytest
import torch

from model.tokenizer import ARCHS, Tokenizer, TokenizerConfig, reconstruction_loss, to_float, to_uint8
from tests.helpers import REPO


def tiny(**kw) -> TokenizerConfig:
    """Small widths so CPU tests are fast; everything else as given."""
    kw.setdefault("num_res_blocks", 1)
    kw.setdefault("num_groups", 4)
    return TokenizerConfig(**kw)


def random_frames(b: int, t: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, size, size, 3), generator=g, dtype=torch.uint8)


def moving_squares(num_frames: int = 4, size: int = 32) -> torch.Tensor:
    """uint8 [1, T, size, size, 3]: two coloured squares moving in opposite directions on a dark field."""
    x = torch.zeros(1, num_frames, size, size, 3, dtype=torch.uint8)
    x[..., 2] = 40
    red = torch.tensor([230, 60, 30], dtype=torch.uint8)
    green = torch.tensor([40, 220, 90], dtype=torch.uint8)
    for t in range(num_frames):
        x[0, t, 4 + 4 * t : 12 + 4 * t, 6 + 3 * t : 14 + 3 * t] = red
        x[0, t, size - 12 : size - 4, 20 - 3 * t : 28 - 3 * t] = green
    return x


SHAPE_CASES = [
    # (cfg, expected token grid)
    (tiny(arch="impala", image_size=128, channels=(8, 8, 16)), 16),
    (tiny(arch="magvit", image_size=224, channels=(8, 8, 16, 16), levels=(4,) * 7), 14),
    (tiny(arch="impala", image_size=224, channels=(8, 8, 16)), 28),
    (tiny(arch="patch", image_size=64, channels=(16, 16), patch_size=8), 8),
    (tiny(arch="impala", image_size=64, channels=(8, 8), upsample="depth_to_space"), 16),
]


@pytest.mark.parametrize(
    ("cfg", "grid"), SHAPE_CASES, ids=["impala128", "magvit224", "impala224", "patch64", "impala64-d2s"]
)
def test_shapes_and_code_range(cfg, grid):
    torch.manual_seed(0)
    tok = Tokenizer(cfg).eval()
    b, t, s = 2, 2, cfg.image_size
    frames = random_frames(b, t, s)
    assert cfg.grid_size == grid
    with torch.no_grad():
        codes = tok.encode(frames)
        assert codes.shape == (b, t, grid, grid) and codes.dtype == torch.int64
        assert codes.min() >= 0 and codes.max() < tok.codebook_size
        # float [B, T, 3, H, W] input gives the same codes as the uint8 layout
        assert torch.equal(tok.encode(to_float(frames)), codes)
        recon = tok.decode(codes)
        assert recon.shape == (b, t, 3, s, s) and recon.dtype == torch.float32
        assert recon.min() >= -1 and recon.max() <= 1
        raw, codes_fwd = tok(frames)
        assert raw.shape == (b, t, 3, s, s) and torch.equal(codes_fwd, codes)
        # decode(encode(x)) is forward's reconstruction, clamped
        torch.testing.assert_close(recon, raw.clamp(-1, 1))
        features = tok.codes_to_features(codes)
    assert features.shape == (b, t, grid, grid, len(cfg.levels)) and features.dtype == torch.float32
    assert torch.equal(features, tok.fsq.indices_to_codes(codes))
    assert torch.equal(tok.fsq.codes_to_indices(features), codes)
    # the token cache's uint16 codes give the same features
    assert torch.equal(tok.codes_to_features(codes.to(torch.uint16)), features)


def test_embed_dim_projections():
    cfg = tiny(image_size=32, channels=(8, 16), embed_dim=12)
    tok = Tokenizer(cfg)
    recon, codes = tok(random_frames(1, 3, 32))
    assert recon.shape == (1, 3, 3, 32, 32) and codes.shape == (1, 3, 8, 8)
    assert isinstance(tok.project_in, torch.nn.Conv2d) and tok.project_in.out_channels == 5


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_gradients_reach_encoder(arch):
    tok = Tokenizer(tiny(arch=arch, image_size=32, channels=(8, 8), patch_size=8 if arch == "patch" else 0))
    frames = random_frames(1, 2, 32)
    recon, _ = tok(frames)
    loss, _ = tok.reconstruction_loss(recon, to_float(frames))
    loss.backward()
    for name, module in (("encoder", tok.encoder), ("decoder", tok.decoder)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name  # straight-through FSQ passes gradient


def test_pixel_conversions_round_trip():
    values = torch.arange(256, dtype=torch.uint8)
    frames = values.reshape(1, 1, 16, 16, 1).expand(1, 1, 16, 16, 3).contiguous()
    f = to_float(frames)
    assert f.shape == (1, 1, 3, 16, 16) and f.dtype == torch.float32
    assert f.min() == -1 and f.max() == 1
    assert torch.equal(to_uint8(f), frames)
    # out-of-range values clamp: [3, 1, 2] -> [1, 2, 3]
    clamped = to_uint8(torch.tensor([[[-5.0, 5.0]]]).expand(3, 1, 2))
    assert clamped.shape == (1, 2, 3) and (clamped[0, 0] == 0).all() and (clamped[0, 1] == 255).all()
    with pytest.raises(ValueError, match="uint8"):
        to_float(frames.float())
    with pytest.raises(ValueError, match="float"):
        to_uint8(frames)


def test_reconstruction_loss_kinds():
    target = torch.zeros(1, 1, 3, 4, 4)
    recon = torch.full_like(target, 0.5)
    for kind, expected in (("mse", 0.25), ("l1", 0.5), ("l1+mse", 0.75)):
        loss, metrics = reconstruction_loss(recon, target, kind)
        assert loss.item() == pytest.approx(expected)
        assert metrics["mse"].item() == pytest.approx(0.25) and metrics["l1"].item() == pytest.approx(0.5)
    _, perfect = reconstruction_loss(target, target)
    assert perfect["psnr"].item() > 90
    with pytest.raises(ValueError, match="recon_loss"):
        reconstruction_loss(recon, target, "lpips")
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(recon, target[..., :2])


def test_bf16_autocast_forward():
    torch.manual_seed(0)
    cfg = tiny(arch="magvit", image_size=32, channels=(8, 16), levels=(8, 5, 5, 5))
    tok = Tokenizer(cfg)
    frames = random_frames(2, 2, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, codes = tok(frames)
        loss, _ = tok.reconstruction_loss(recon, to_float(frames))
        features = tok.codes_to_features(codes)
    assert codes.dtype == torch.int64 and codes.min() >= 0 and codes.max() < tok.codebook_size
    assert features.dtype == torch.float32
    assert torch.isfinite(recon.float()).all() and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    impala = Tokenizer(tiny(image_size=32, channels=(8, 16)))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        codes = impala.encode(frames)
    assert codes.min() >= 0 and codes.max() < impala.codebook_size


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"arch": "vit"}, "arch 'vit' unknown"),
        ({"image_size": 100}, "not divisible"),
        ({"levels": (4, 1)}, "levels"),
        ({"levels": ()}, "levels"),
        ({"levels": (8,) * 6}, "uint16"),
        ({"channels": ()}, "channels"),
        ({"num_res_blocks": 0}, "num_res_blocks"),
        ({"embed_dim": -1}, "embed_dim"),
        ({"arch": "magvit", "channels": (48, 64, 100)}, "num_groups"),
        ({"recon_loss": "perceptual"}, "recon_loss"),
        ({"upsample": "bilinear"}, "upsample"),
        ({"arch": "patch"}, "patch_size"),
        ({"patch_size": 8}, "patch_size"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**kwargs)


def test_bad_inputs():
    tok = Tokenizer(tiny(image_size=32, channels=(8, 8)))
    with pytest.raises(ValueError, match=r"\[B, T, 32, 32, 3\]"):
        tok.encode(random_frames(1, 1, 64))
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(torch.zeros(1, 1, 32, 32, 3))  # float frames must be channels-first
    with pytest.raises(ValueError, match="uint8"):
        tok.encode(random_frames(1, 1, 32)[0])  # missing the T axis
    with pytest.raises(ValueError, match="codes must be integer"):
        tok.decode(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="codes must be integer"):
        tok.decode(torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside"):
        tok.decode(torch.full((1, 1, 8, 8), 1024))
    with pytest.raises(ValueError, match="features must be"):
        tok.decode_features(torch.zeros(1, 1, 8, 8, 4))


@pytest.mark.parametrize(("arch", "steps", "lr"), [("impala", 300, 1e-3), ("magvit", 150, 2e-3)])
def test_tiny_tokenizer_overfits(arch, steps, lr):
    """4 frames, 32x32, two moving squares; ~60k (impala) / ~140k (magvit) params, seconds on CPU.
    Observed over seeds: MSE falls 60-130x. The bar is 20x: a grid collapsed onto one code stalls
    near 10x (it can only learn the mean frame)."""
    torch.manual_seed(0)
    cfg = tiny(arch=arch, image_size=32, channels=(16, 32))
    tok = Tokenizer(cfg)
    frames = moving_squares()
    target = to_float(frames)
    opt = torch.optim.Adam(tok.parameters(), lr=lr)
    with torch.no_grad():
        first = reconstruction_loss(tok(frames)[0], target)[1]["mse"].item()
    for _ in range(steps):
        recon, _ = tok(frames)
        loss, _ = tok.reconstruction_loss(recon, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = reconstruction_loss(tok.decode(tok.encode(frames)), target)[1]["mse"].item()
        codes = tok.encode(frames)
    assert first / last >= 20, f"{arch}: MSE {first:.4f} -> {last:.4f} ({first / last:.1f}x)"
    assert codes.unique().numel() > 1  # not collapsed onto a single code
    # the frames differ only where the squares move: their codes must differ too
    assert not torch.equal(codes[0, 0], codes[0, 1])


def test_patch_tokens_see_their_own_patch_only():
    """arch "patch": changing one 8x8 patch changes that token's encoding and nothing else, and changing one
    token's code changes that patch of the decoded frame and nothing else (an IMPALA token's receptive
    field spans its neighbours in both directions)."""
    torch.manual_seed(0)
    tok = Tokenizer(tiny(arch="patch", image_size=32, channels=(32, 32), patch_size=8)).eval()
    x = to_float(random_frames(1, 1, 32))[0]  # [1, 3, 32, 32]
    y = x.clone()
    y[..., 8:16, 16:24] = -y[..., 8:16, 16:24]  # token (row 1, column 2)
    z = torch.zeros(1, tok.cfg.latent_dim, 4, 4)
    z2 = z.clone()
    z2[..., 1, 2] = 1.0
    with torch.no_grad():
        moved = (tok.encoder(x) != tok.encoder(y)).any(1)[0]  # [4, 4]
        drawn = (tok.decoder(z) != tok.decoder(z2)).any(1)[0]  # [32, 32]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[1, 2] = True
    assert torch.equal(moved, expected)
    assert drawn[8:16, 16:24].any() and drawn.sum() == drawn[8:16, 16:24].sum()


def test_model_package_does_not_import_ingest():
    for path in (REPO / "model").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n == "ingest" or n.startswith("ingest.")]
            assert not bad, f"model/{path.name} imports {bad}"
