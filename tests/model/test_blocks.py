"""Attention blocks of model/blocks.py: shapes, agreement with a plain softmax-attention reference,
causal masking, and the spatio-temporal block's information flow (which token can see which)."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from model.blocks import MLP, Attention, CrossAttentionLayer, SpatioTemporalBlock, TransformerLayer

DIM, HEADS = 32, 4


pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def reference_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor, mask=None) -> torch.Tensor:
    """Plain multi-head softmax(QK^T / sqrt(e)) V with the module's weights."""
    w, b, d = attn.qkv.weight, attn.qkv.bias, attn.dim
    q = x @ w[:d].T + b[:d]
    k = context @ w[d : 2 * d].T + b[d : 2 * d]
    v = context @ w[2 * d :].T + b[2 * d :]
    q, k, v = (rearrange(t, "b l (h e) -> b h l e", h=attn.num_heads) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    out = rearrange(logits.softmax(-1) @ v, "b h l e -> b l (h e)")
    return attn.proj(out)


def test_self_attention_matches_reference() -> None:
    attn = Attention(DIM, HEADS)
    x = torch.randn(3, 7, DIM)
    torch.testing.assert_close(attn(x), reference_attention(attn, x, x), rtol=1e-4, atol=1e-5)


def test_cross_attention_matches_reference_and_shapes() -> None:
    attn = Attention(DIM, HEADS)
    x, ctx = torch.randn(3, 7, DIM), torch.randn(3, 4, DIM)
    out = attn(x, context=ctx)
    assert out.shape == (3, 7, DIM)
    torch.testing.assert_close(out, reference_attention(attn, x, ctx), rtol=1e-4, atol=1e-5)


def test_causal_attention_matches_reference_and_ignores_the_future() -> None:
    attn = Attention(DIM, HEADS)
    x = torch.randn(2, 6, DIM)
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    out = attn(x, causal=True)
    torch.testing.assert_close(out, reference_attention(attn, x, x, mask), rtol=1e-4, atol=1e-5)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, DIM)
    out2 = attn(x2, causal=True)
    torch.testing.assert_close(out2[:, :4], out[:, :4])
    assert not torch.allclose(out2[:, 4:], out[:, 4:])


def test_boolean_mask() -> None:
    attn = Attention(DIM, HEADS)
    x, ctx = torch.randn(2, 3, DIM), torch.randn(2, 5, DIM)
    mask = torch.rand(3, 5) > 0.5
    mask[:, 0] = True  # every query needs one key
    torch.testing.assert_close(
        attn(x, context=ctx, mask=mask), reference_attention(attn, x, ctx, mask), rtol=1e-4, atol=1e-5
    )


def test_attention_errors() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        Attention(30, 4)
    attn = Attention(DIM, HEADS)
    with pytest.raises(ValueError, match="causal"):
        attn(torch.randn(1, 2, DIM), context=torch.randn(1, 3, DIM), causal=True)


def test_layer_shapes() -> None:
    x, ctx = torch.randn(2, 9, DIM), torch.randn(2, 3, DIM)
    assert MLP(DIM)(x).shape == x.shape
    assert MLP(DIM, hidden=8).fc1.out_features == 8
    assert TransformerLayer(DIM, HEADS)(x).shape == x.shape
    assert TransformerLayer(DIM, HEADS)(x, causal=True).shape == x.shape
    assert CrossAttentionLayer(DIM, HEADS)(x, ctx).shape == x.shape


def test_causal_transformer_layer_ignores_the_future() -> None:
    layer = TransformerLayer(DIM, HEADS)
    x = torch.randn(2, 5, DIM)
    x2 = x.clone()
    x2[:, 3:] += torch.randn_like(x2[:, 3:])
    torch.testing.assert_close(layer(x, causal=True)[:, :3], layer(x2, causal=True)[:, :3])


def test_cross_attention_layer_is_invariant_to_context_order() -> None:
    layer = CrossAttentionLayer(DIM, HEADS)
    x, ctx = torch.randn(2, 9, DIM), torch.randn(2, 4, DIM)
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(layer(x, ctx), layer(x, ctx[:, perm]), rtol=1e-5, atol=1e-6)


def test_st_block_shape_and_temporal_causality() -> None:
    block = SpatioTemporalBlock(DIM, HEADS)
    x = torch.randn(2, 4, 5, DIM)  # [B, T, S, D]
    out = block(x)
    assert out.shape == x.shape
    x2 = x.clone()
    x2[:, 2:] = torch.randn(2, 2, 5, DIM)
    out2 = block(x2)
    torch.testing.assert_close(out2[:, :2], out[:, :2])
    assert not torch.allclose(out2[:, 2:], out[:, 2:])


def test_st_block_is_permutation_equivariant_over_space() -> None:
    block = SpatioTemporalBlock(DIM, HEADS)
    x = torch.randn(2, 3, 5, DIM)
    perm = torch.tensor([3, 1, 4, 0, 2])
    for frames in (None, 1):
        out = block(x, spatial_frames=frames)
        torch.testing.assert_close(block(x[:, :, perm], spatial_frames=frames), out[:, :, perm])


def test_st_block_spatial_frames_isolates_later_frames() -> None:
    """spatial_frames=1 on [B, 2, S, D]: a frame-1 token sees all of frame 0 but only its own column of
    frame 1 (FLAM's factored IDM/FDM); spatial_frames=None lets frame-1 tokens see each other."""
    block = SpatioTemporalBlock(DIM, HEADS)
    x = torch.randn(2, 2, 4, DIM)
    x2 = x.clone()
    x2[:, 1, 0] += torch.randn(DIM)  # change token 0 of frame 1 (not by a constant: LayerNorm hides those)
    out, out2 = block(x, spatial_frames=1), block(x2, spatial_frames=1)
    torch.testing.assert_close(out2[:, 1, 1:], out[:, 1, 1:])  # other columns untouched
    assert not torch.allclose(out2[:, 1, 0], out[:, 1, 0])
    full, full2 = block(x), block(x2)
    assert not torch.allclose(full2[:, 1, 1:], full[:, 1, 1:])
    # Frame 0 still mixes spatially: changing one current token moves every frame-1 token.
    x3 = x.clone()
    x3[:, 0, 0] += torch.randn(DIM)
    assert not torch.allclose(block(x3, spatial_frames=1)[:, 1, 1:], out[:, 1, 1:])
    with pytest.raises(ValueError, match="spatial_frames"):
        block(x, spatial_frames=3)
