"""Which slot holds which agent: slot-agent assignments from the factorizer's attention (paper Figs. 7-9).

Axes: B clips, T frames, K slots, N = h * w tokens, M agents, (W, H) grid cells of the simulator.

The factorizer's slot attention splits every token among the K slots (softmax over slots). An agent's mass
on slot k is the attention slot k wins over the tokens covering the agent's grid cell, divided by the
number of those tokens, so each agent's masses sum to 1 over slots. The slot with the largest mass owns the
agent. From the owners:

- ``consistency``: per agent, the share of frames in which it is owned by its clip's most frequent owner
  (1 = the agent never changes slot within a clip; the paper's "temporally consistent factor assignment");
- ``sharing`` [M, M]: the share of frames in which agents i and j have the same owner (the diagonal is 1).
  On the correlated MultiGrid variant, where agents 0 and 1 take identical actions, FLAM should put them in
  one slot (paper Fig. 7): ``sharing[0, 1]`` high, the other pairs low;
- ``distinct``: mean number of different owners among the M agents of a frame (M = one slot each).
"""

from __future__ import annotations

import torch


def agent_slot_mass(
    attn: torch.Tensor, positions: torch.Tensor, cells: tuple[int, int], tokens: tuple[int, int]
) -> torch.Tensor:
    """attn [B, T, K, N] (softmax over K), positions [B, T, M, 2] int (x, y) cells of a (W, H) grid,
    tokens (h, w) with N = h * w -> mass [B, T, M, K], summing to 1 over K.

    The agent's tokens are those whose area overlaps its cell (token row r spans cell rows [r H / h,
    (r + 1) H / h)), so the token grid may be finer or coarser than the cell grid."""
    n = attn.shape[-1]
    (width, height), (h, w) = cells, tokens
    if h * w != n:
        raise ValueError(f"token grid {h}x{w} does not match the attention's {n} tokens")
    x, y = positions[..., 0].long(), positions[..., 1].long()  # [B, T, M]
    rows = torch.arange(h, device=attn.device)
    cols = torch.arange(w, device=attn.device)
    # Row r overlaps cell row y when r * H < (y + 1) * h and (r + 1) * H > y * h (integers: no rounding).
    y, x = y[..., None], x[..., None]
    in_row = (rows * height < (y + 1) * h) & ((rows + 1) * height > y * h)  # [B, T, M, h]
    in_col = (cols * width < (x + 1) * w) & ((cols + 1) * width > x * w)  # [B, T, M, w]
    cover = (in_row[..., :, None] & in_col[..., None, :]).flatten(-2).float()  # [B, T, M, N]
    mass = torch.einsum("btmn,btkn->btmk", cover, attn.float())
    return mass / cover.sum(-1, keepdim=True).clamp(min=1)


def assignment_stats(mass: torch.Tensor) -> dict[str, object]:
    """mass [B, T, M, K] -> {"consistency": [M] list, "sharing": [M][M] lists, "distinct": float,
    "owners": int [B, T, M] tensor}; see the module docstring."""
    owners = mass.argmax(-1)  # [B, T, M]
    k = mass.shape[-1]
    counts = torch.nn.functional.one_hot(owners, k).sum(1)  # [B, M, K]: frames each slot owns each agent
    modal = counts.argmax(-1)  # [B, M]
    consistency = (owners == modal[:, None]).float().mean(dim=(0, 1))  # [M]
    sharing = (owners[..., :, None] == owners[..., None, :]).float().mean(dim=(0, 1))  # [M, M]
    distinct = torch.tensor(
        [len(set(row)) for row in owners.flatten(0, 1).tolist()], dtype=torch.float32
    ).mean()
    return {
        "consistency": [round(float(v), 4) for v in consistency],
        "sharing": [[round(float(v), 4) for v in row] for row in sharing],
        "distinct": round(float(distinct), 4),
        "owners": owners,
    }
