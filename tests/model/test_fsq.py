"""FSQ: exact code <-> index round trip, index range, grid membership, STE gradients, bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from model.fsq import FSQ, code_counts, codebook_usage, round_ste, usage_from_counts

LEVELS = [(4, 4, 4, 4, 4), (4,) * 7, (8, 5, 5, 5), (2, 3, 7)]


def _grid_ints(fsq: FSQ, codes: torch.Tensor) -> torch.Tensor:
    return codes * fsq._half_width


@pytest.mark.parametrize("levels", [(4, 4, 4, 4, 4), (2, 3, 7)])
def test_round_trip_all_indices(levels):
    fsq = FSQ(levels)
    idx = torch.arange(fsq.codebook_size)
    codes = fsq.indices_to_codes(idx)
    assert codes.shape == (fsq.codebook_size, len(levels)) and codes.dtype == torch.float32
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    assert torch.unique(codes, dim=0).shape[0] == fsq.codebook_size  # a bijection onto the grid
    assert codes.min() >= -1 and codes.max() <= 1


@pytest.mark.parametrize("levels", [(4,) * 7, (8, 5, 5, 5)])
def test_round_trip_random_indices(levels):
    fsq = FSQ(levels)
    assert fsq.codebook_size == math.prod(levels)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, fsq.codebook_size, (4096,), generator=g)
    idx[:2] = torch.tensor([0, fsq.codebook_size - 1])  # both ends of the range
    codes = fsq.indices_to_codes(idx)
    back = fsq.codes_to_indices(codes)
    assert back.dtype == torch.int64 and torch.equal(back, idx)
    # codes -> indices -> codes is bit-exact too
    assert torch.equal(fsq.indices_to_codes(back), codes)


@pytest.mark.parametrize("levels", LEVELS)
def test_forward_on_grid_and_in_range(levels):
    fsq = FSQ(levels)
    z = torch.randn(8, 512, len(levels), generator=torch.Generator().manual_seed(1)) * 3
    z_q, idx = fsq(z)
    assert z_q.shape == z.shape and idx.shape == z.shape[:-1]
    assert z_q.dtype == torch.float32 and idx.dtype == torch.int64
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    ints = _grid_ints(fsq, z_q)
    assert torch.equal(ints, ints.round())  # exactly on the integer grid
    assert torch.equal(z_q, fsq.indices_to_codes(idx))  # bit-identical to the decoded index
    assert torch.equal(fsq.codes_to_indices(z_q), idx)
    # every channel lands on exactly levels[i] values
    for i, level in enumerate(levels):
        assert z_q[..., i].unique().numel() == level


@pytest.mark.parametrize("levels", [(4, 4, 4, 4, 4), (2, 3, 7)])
def test_forward_reaches_every_code(levels):
    # Invert the tanh bound near each grid point: every code, the outermost included, is the output of
    # finite inputs (the (1 + eps) stretch), and jitter of a tenth of a grid step keeps that code.
    fsq = FSQ(levels)
    idx = torch.arange(fsq.codebook_size)
    ints = _grid_ints(fsq, fsq.indices_to_codes(idx)).double()
    lv = torch.tensor(levels, dtype=torch.float64)
    half_l = (lv - 1) * (1 + fsq.eps) / 2
    offset = (1 - lv % 2) * 0.5
    g = torch.Generator().manual_seed(2)
    noise = (torch.rand(ints.shape, generator=g, dtype=torch.float64) - 0.5) * 0.2
    u = ((ints + offset + noise) / half_l).clamp(-1 + 1e-4, 1 - 1e-4)  # outer codes: stay inside tanh
    z = torch.atanh(u) - torch.atanh(offset / half_l)
    assert torch.isfinite(z).all()
    _, got = fsq(z.float())
    assert torch.equal(got, idx)


def test_zero_maps_to_zero_code():
    for levels in LEVELS:
        z_q, _ = FSQ(levels)(torch.zeros(len(levels)))
        assert torch.equal(z_q, torch.zeros(len(levels)))


def test_saturated_inputs_stay_in_range():
    fsq = FSQ((2, 3, 4, 8))
    z = torch.tensor([[1e6] * 4, [-1e6] * 4, [float("1e30")] * 4])
    z_q, idx = fsq(z)
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    hw = fsq._half_width
    assert torch.equal(_grid_ints(fsq, z_q[0]), torch.tensor([2, 3, 4, 8]) - 1 - hw)  # top of each grid
    assert torch.equal(_grid_ints(fsq, z_q[1]), -hw)  # bottom of each grid


def test_straight_through_gradient():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(3), requires_grad=True)
    w = torch.randn(64, 4, generator=torch.Generator().manual_seed(4))
    z_q, _ = fsq(z)
    (z_q * w).sum().backward()
    # STE: the gradient is that of the un-rounded bound, bound(z) / half_width
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / fsq._half_width * w).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    torch.testing.assert_close(z.grad, z2.grad)


def test_round_ste_forward_is_exact():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(5)) * 100
    assert torch.equal(round_ste(x), x.round())


def test_bf16_autocast_runs_in_fp32():
    fsq = FSQ((4,) * 7)
    proj = torch.nn.Linear(16, 7)
    x = torch.randn(4096, 16, generator=torch.Generator().manual_seed(6)) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = proj(x)
        assert z.dtype == torch.bfloat16
        z_q, idx = fsq(z)
        back = fsq.codes_to_indices(z_q)
    assert z_q.dtype == torch.float32 and idx.dtype == torch.int64
    assert idx.min() >= 0 and idx.max() < fsq.codebook_size
    assert torch.equal(back, idx)
    # same answer as quantising the (bf16) activations outside autocast
    z_ref, idx_ref = fsq(z.float())
    assert torch.equal(idx, idx_ref) and torch.equal(z_q, z_ref)


def test_snap():
    fsq = FSQ((4, 5, 8))
    codes = fsq.indices_to_codes(torch.arange(fsq.codebook_size))
    assert torch.equal(fsq.snap(codes), codes)
    noisy = codes + (torch.rand_like(codes) - 0.5) * 0.2  # < half a grid step (0.25 for L=8)
    assert torch.equal(fsq.snap(noisy), codes)
    far = torch.tensor([[5.0, 5.0, 5.0], [-5.0, -5.0, -5.0]])
    snapped = fsq.snap(far)
    assert torch.equal(fsq.indices_to_codes(fsq.codes_to_indices(snapped)), snapped)
    assert torch.equal(snapped[1], torch.tensor([-1.0, -1.0, -1.0]))


def test_codebook_usage():
    size = 16
    uniform = codebook_usage(torch.arange(size).repeat(3), size)
    assert uniform["used_fraction"].item() == 1.0
    assert uniform["perplexity"].item() == pytest.approx(size, rel=1e-5)
    collapsed = codebook_usage(torch.full((10,), 7), size)
    assert collapsed["used_fraction"].item() == pytest.approx(1 / size)
    assert collapsed["perplexity"].item() == pytest.approx(1.0)
    half = codebook_usage(torch.arange(8), size)
    assert half["used_fraction"].item() == 0.5 and half["perplexity"].item() == pytest.approx(8, rel=1e-5)
    # counts add across batches (or ranks) before the metrics
    counts = code_counts(torch.arange(8), size) + code_counts(torch.arange(8, 16), size)
    assert usage_from_counts(counts)["used_fraction"].item() == 1.0
    assert usage_from_counts(torch.zeros(size, dtype=torch.int64))["perplexity"].item() == 0.0
    with pytest.raises(ValueError, match="outside"):
        code_counts(torch.tensor([size]), size)


def test_bad_inputs():
    with pytest.raises(ValueError, match="levels"):
        FSQ([])
    with pytest.raises(ValueError, match="levels"):
        FSQ([4, 1])
    fsq = FSQ((4, 4, 4))
    with pytest.raises(ValueError, match="last axis 3"):
        fsq(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="integer"):
        fsq.indices_to_codes(torch.zeros(3))
