"""Slot-agent assignments from slot attention (train/eval/assignment.py): hand-made attention maps."""

from __future__ import annotations

import torch

from train.eval.assignment import agent_slot_mass, assignment_stats


def one_hot_attention(owner_of_token: torch.Tensor, num_slots: int) -> torch.Tensor:
    """owner_of_token int [B, T, N] -> attn [B, T, K, N] with all of each token's mass on its owner."""
    return torch.nn.functional.one_hot(owner_of_token, num_slots).float().transpose(-1, -2)


def test_mass_reads_the_tokens_under_each_agent_cell_at_any_token_resolution():
    # 4x4 cells; agent 0 at (x=1, y=2), agent 1 at (x=3, y=0).
    positions = torch.tensor([[[[1, 2], [3, 0]]]])  # [B=1, T=1, M=2, 2]
    # Token grid 8x8 (2x2 tokens per cell): slot 2 holds agent 0's cell, slot 1 agent 1's; the rest slot 0.
    owner = torch.zeros(8, 8, dtype=torch.long)
    owner[4:6, 2:4] = 2
    owner[0:2, 6:8] = 1
    owner[4, 2] = 0  # one of agent 0's four tokens goes elsewhere
    mass = agent_slot_mass(one_hot_attention(owner.flatten()[None, None], 3), positions, (4, 4), (8, 8))
    torch.testing.assert_close(mass[0, 0], torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]]))
    # Coarser tokens (2x2 for 4x4 cells): a token covers four cells.
    coarse = torch.tensor([0, 1, 2, 0])
    mass = agent_slot_mass(one_hot_attention(coarse[None, None], 3), positions, (4, 4), (2, 2))
    torch.testing.assert_close(mass[0, 0], torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_stats_consistency_sharing_and_distinct_owners():
    # Owners over 4 frames of one clip: agents 0 and 1 always share slot 0; agent 2 swaps slots once.
    owners = torch.tensor([[[0, 0, 1], [0, 0, 1], [0, 0, 2], [0, 0, 1]]])  # [B=1, T=4, M=3]
    mass = torch.nn.functional.one_hot(owners, 3).float()
    stats = assignment_stats(mass)
    assert stats["consistency"] == [1.0, 1.0, 0.75]
    assert stats["sharing"][0][1] == 1.0 and stats["sharing"][0][2] == 0.0 and stats["sharing"][2][2] == 1.0
    assert stats["distinct"] == 2.0
    assert torch.equal(stats["owners"], owners)
