"""Multi-head self-attention with BEiT's relative position bias (seed §2.2, App. B).

The bias table has ``(2H-1)(2W-1) + 3`` rows: one per relative offset between two patches plus
three for [CLS]→patch, patch→[CLS] and [CLS]→[CLS]. The index layout is the one unilm created
and timm / Hugging Face kept, so tables load across the three.
"""

from __future__ import annotations

import functools
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.models.resize import resize_rel_pos_table

Grid = tuple[int, int]


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


@functools.lru_cache(maxsize=64)
def cached_index(grid: Grid, device: torch.device) -> torch.Tensor:
    """``relative_position_index(grid)`` on ``device``, cached per grid (a runtime grid other
    than the one a model was built for); made outside inference mode so autograd may save it."""
    with torch.inference_mode(False):
        return relative_position_index(grid).to(device)


def bias_table_rows(grid: tuple[int, int]) -> int:
    """Rows of a relative position bias table for ``grid``: ``(2H-1)(2W-1) + 3``."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def new_bias_table(grid: tuple[int, int], num_heads: int) -> nn.Parameter:
    """A zero-initialised bias table ``[(2H-1)(2W-1)+3, heads]`` (no bias before training)."""
    return nn.Parameter(torch.zeros(bias_table_rows(grid), num_heads))


KEY_ALIGNMENT = 8
"""Elements a bias row's stride must be a multiple of for SDPA's memory-efficient kernel. Eager
SDPA copies a misaligned bias into an aligned one on every call; Inductor lowers to the kernel
directly and fails ("attn_bias is not correctly aligned") — BEiT at 224² has T = 197 keys."""


def padded_keys(t: int) -> int:
    """``t`` rounded up to a multiple of ``KEY_ALIGNMENT``: the stored length of a bias row."""
    return -(-t // KEY_ALIGNMENT) * KEY_ALIGNMENT


def is_key_aligned(bias: torch.Tensor) -> bool:
    """A dense last (key) dimension and every other stride a multiple of ``KEY_ALIGNMENT``."""
    strides = bias.stride()
    return strides[-1] == 1 and all(s % KEY_ALIGNMENT == 0 for s in strides[:-1])


def key_aligned(bias: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``bias [.., T, T]`` in ``dtype`` (default: its own) as a view of a buffer ``[.., T, Tp]``
    whose key dimension is zero-padded to ``Tp = padded_keys(T)``: ``bias`` itself when it is such
    a view already, else one new buffer (what ``bias.to(dtype)`` would allocate); differentiable."""
    if (dtype is None or dtype == bias.dtype) and is_key_aligned(bias):
        return bias
    t = bias.shape[-1]
    padded = bias.new_zeros((*bias.shape[:-1], padded_keys(t)), dtype=dtype or bias.dtype)
    return padded[..., :t].copy_(bias)


def gather_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Look up ``table [R, heads]`` at ``index [T, T]``: the additive bias ``[heads, T, T]``, a view
    of a buffer whose keys are padded to a multiple of 8 (``key_aligned``; as many allocations as
    the unpadded ``.contiguous()`` copy it replaces)."""
    t = index.shape[0]
    gathered = table[index.view(-1)].view(t, t, -1).permute(2, 0, 1)
    return F.pad(gathered, (0, padded_keys(t) - t))[..., :t]


def runtime_bias(module: nn.Module, grid: Grid | None) -> torch.Tensor:
    """The bias ``[heads, T, T]`` of ``module``'s table (``relative_position_bias_table`` with
    its ``relative_position_index`` for ``module.grid``) at patch ``grid``: the stored table at
    the built grid (or ``None``); at another grid the table resized as checkpoint conversion
    does (``resize_rel_pos_table`` by ``module.rel_pos_resize``, differentiable) with that
    grid's cached index."""
    table = cast(torch.Tensor, module.relative_position_bias_table)
    if grid is None or tuple(grid) == module.grid:
        return gather_bias(table, cast(torch.Tensor, module.relative_position_index))
    resized = resize_rel_pos_table(table, grid, str(module.rel_pos_resize))
    return gather_bias(resized, cached_index(tuple(grid), table.device))


class RelativePositionBias(nn.Module):
    """A bias table shared by all blocks; computed once per forward (key ``rel_pos_bias.*``)."""

    def __init__(self, grid: Grid, num_heads: int, rel_pos_resize: str = "geometric") -> None:
        super().__init__()
        self.grid = tuple(grid)
        self.rel_pos_resize = rel_pos_resize
        self.relative_position_bias_table = new_bias_table(grid, num_heads)
        self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)

    def forward(self, grid: Grid | None = None) -> torch.Tensor:
        """The bias ``[heads, T, T]`` at patch ``grid`` (default: the built grid, ``T = N + 1``),
        keys padded in storage (``gather_bias``)."""
        return runtime_bias(self, grid)


class Attention(nn.Module):
    """Self-attention; q and v carry a bias, k does not (as in BEiT).

    ``attn_impl="sdpa"`` runs ``F.scaled_dot_product_attention`` with the relative bias as an
    additive mask; ``"eager"`` is the reference softmax(q kᵀ · scale + bias) v.
    ``grid`` given: the block owns a per-layer bias table (key ``relative_position_bias_table``),
    resized by ``rel_pos_resize`` when ``forward`` gets another runtime grid.
    ``probs`` recomputes this block's attention probabilities eagerly (visualisation), so the
    fused SDPA path of ``forward`` stays as it is.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        grid: Grid | None = None,
        attn_impl: str = "sdpa",
        rel_pos_resize: str = "geometric",
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
        self.grid, self.rel_pos_resize = (tuple(grid) if grid else None), rel_pos_resize
        if grid is not None:
            self.relative_position_bias_table = new_bias_table(grid, num_heads)
            self.register_buffer("relative_position_index", relative_position_index(grid), persistent=False)
        self.proj = nn.Linear(dim, dim)

    def _qkv_bias(self) -> torch.Tensor | None:
        if self.q_bias is None or self.v_bias is None:
            return None
        k_bias = torch.zeros_like(self.v_bias, requires_grad=False)
        return torch.cat((self.q_bias, k_bias, self.v_bias))

    def _qkv_and_bias(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None, grid: Grid | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """q, k, v ``[B, heads, T, head_dim]`` and the additive bias ``[1, heads, T, T]`` in q's
        dtype, key-aligned (``key_aligned``: what SDPA's memory-efficient kernel needs), or None."""
        b, t, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias())
        q, k, v = qkv.view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = shared_bias
        if self.relative_position_bias_table is not None:
            own = runtime_bias(self, grid)
            bias = own if bias is None else bias + own
        if bias is not None:
            bias = key_aligned(bias, q.dtype).unsqueeze(0)  # broadcast over the batch, never [B, ..]
        return q, k, v, bias

    def forward(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None = None, grid: Grid | None = None
    ) -> torch.Tensor:
        """``x [B, T, D]``, ``shared_bias [heads, T, T]`` or None -> ``[B, T, D]``; ``grid``: the
        patch grid of ``x`` when it is not the built one."""
        b, t, d = x.shape
        q, k, v, bias = self._qkv_and_bias(x, shared_bias, grid)
        if self.attn_impl == "sdpa" and not _sdpa_falls_back(q, bias):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            out = self._eager(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def probs(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None = None, grid: Grid | None = None
    ) -> torch.Tensor:
        """Attention probabilities ``softmax(q kᵀ · scale + bias)`` ``[B, heads, T, T]`` of
        ``x [B, T, D]`` (this block's input after ``norm1``), computed eagerly in fp32 (or fp64)."""
        q, k, _, bias = self._qkv_and_bias(x, shared_bias, grid)
        dtype = torch.promote_types(q.dtype, torch.float32)
        attn = (q.to(dtype) * self.scale) @ k.to(dtype).transpose(-2, -1)
        if bias is not None:
            attn = attn + bias.to(dtype)
        return attn.softmax(dim=-1)

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
