"""Multi-head self-attention with BEiT's relative position bias (seed §2.2, App. B).

The bias table has ``(2H-1)(2W-1) + 3`` rows: one per relative offset between two patches plus
three for [CLS]→patch, patch→[CLS] and [CLS]→[CLS]. The index layout is the one unilm created
and timm / Hugging Face kept, so tables load across the three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """``[N+1, N+1]`` long tensor mapping a (query, key) token pair to a bias-table row."""
    gh, gw = grid
    coords = torch.stack(torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij"))
    coords = coords.flatten(1)  # [2, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 2]
    rel[:, :, 0] += gh - 1
    rel[:, :, 1] += gw - 1
    rel[:, :, 0] *= 2 * gw - 1
    num_rel = (2 * gh - 1) * (2 * gw - 1)
    n = gh * gw
    index = torch.zeros(n + 1, n + 1, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = num_rel
    index[:, 0] = num_rel + 1
    index[0, 0] = num_rel + 2
    return index


def bias_table_rows(grid: tuple[int, int]) -> int:
    """Rows of a relative position bias table for ``grid``: ``(2H-1)(2W-1) + 3``."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def new_bias_table(grid: tuple[int, int], num_heads: int) -> nn.Parameter:
    """A zero-initialised bias table ``[(2H-1)(2W-1)+3, heads]`` (no bias before training)."""
    return nn.Parameter(torch.zeros(bias_table_rows(grid), num_heads))


def gather_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Look up ``table [R, heads]`` at ``index [T, T]``: the additive bias ``[heads, T, T]``."""
    t = index.shape[0]
    return table[index.view(-1)].view(t, t, -1).permute(2, 0, 1).contiguous()


class RelativePositionBias(nn.Module):
    """A bias table shared by all blocks; computed once per forward (key ``rel_pos_bias.*``)."""

    def __init__(self, grid: tuple[int, int], num_heads: int) -> None:
        super().__init__()
        self.grid = grid
        self.relative_position_bias_table = new_bias_table(grid, num_heads)
        self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)

    def forward(self) -> torch.Tensor:
        """The bias ``[heads, N+1, N+1]``."""
        return gather_bias(self.relative_position_bias_table, self.relative_position_index)


class Attention(nn.Module):
    """Self-attention; q and v carry a bias, k does not (as in BEiT).

    ``attn_impl="sdpa"`` runs ``F.scaled_dot_product_attention`` with the relative bias as an
    additive mask; ``"eager"`` is the reference softmax(q kᵀ · scale + bias) v.
    ``grid`` given: the block owns a per-layer bias table (key ``relative_position_bias_table``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        grid: tuple[int, int] | None = None,
        attn_impl: str = "sdpa",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_impl = attn_impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.relative_position_bias_table = None
        if grid is not None:
            self.relative_position_bias_table = new_bias_table(grid, num_heads)
            self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def _qkv_bias(self) -> torch.Tensor | None:
        if self.q_bias is None:
            return None
        k_bias = torch.zeros_like(self.v_bias, requires_grad=False)
        return torch.cat((self.q_bias, k_bias, self.v_bias))

    def forward(self, x: torch.Tensor, shared_bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, D]``, ``shared_bias [heads, T, T]`` or None -> ``[B, T, D]``."""
        b, t, d = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias())
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = shared_bias
        if self.relative_position_bias_table is not None:
            own = gather_bias(self.relative_position_bias_table, self.relative_position_index)
            bias = own if bias is None else bias + own
        if bias is not None:
            bias = bias.to(q.dtype).unsqueeze(0)
        if self.attn_impl == "sdpa" and not _sdpa_falls_back(q, bias):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = self._eager(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def _eager(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            attn.add_(bias)  # in place: the product's backward needs its inputs, not its output
        return attn.softmax(dim=-1) @ v


def _sdpa_falls_back(q: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True where SDPA has no fused kernel for this call and would run its unfused math path.

    On CPU no fused kernel returns a gradient for the additive mask, so training with a
    learnable relative position bias gets the math path; ``Attention._eager`` computes the same
    thing with fewer passes over the ``[B, heads, T, T]`` scores (BEiT-B, batch 8, one CPU
    thread: 65 instead of 75 ms forward + backward per layer).
    """
    needs_bias_grad = bias is not None and bias.requires_grad and torch.is_grad_enabled()
    return needs_bias_grad and q.device.type == "cpu"
