"""The BEiT backbone: a pre-norm ViT with LayerScale and relative position bias (seed §2.1-2.2,
§5 initialisation, App. B "BEiT+").

State-dict keys follow unilm / timm (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``rel_pos_bias.*``, ``blocks.{i}.{norm1,attn,norm2,mlp,gamma_1,gamma_2}``, ``norm``, ``fc_norm``,
``head``) so checkpoints convert by renaming only (``convert.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from functools import cache, partial
from typing import Any, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from beit_ds.config import ModelConfig
from beit_ds.config.model import COMPILE_MODES
from beit_ds.models.attention import Attention, Grid, RelativePositionBias
from beit_ds.models.layers import DropPath, Mlp, PatchEmbed, drop_path_rates
from beit_ds.models.resize import resize_pos_embed

Indices = int | Sequence[int] | None

TRUNC_BOUNDS: dict[str, Callable[[float], float]] = {
    "1std": lambda std: std,  # unilm modeling_pretrain.py: a=-std, b=std (std 0.54·std)
    "2std": lambda std: 2 * std,  # ±2σ (std 0.88·std)
    "2abs": lambda std: 2.0,  # timm's trunc_normal_ default a=-2, b=2: untruncated at std 0.02
}
"""Where the trunc-normal init is cut, as a function of its std (``model.init_trunc``)."""


def trunc_normal(t: torch.Tensor, std: float, trunc: str = "1std") -> None:
    """In-place normal(0, std) truncated at ``±TRUNC_BOUNDS[trunc](std)`` (seed §5: "within a
    small range, such as [-0.02, 0.02]" — unilm's pre-training cut, ``"1std"``, is the default)."""
    bound = TRUNC_BOUNDS[trunc](std)
    nn.init.trunc_normal_(t, std=std, a=-bound, b=bound)


def init_module(module: nn.Module, std: float, trunc: str = "1std", conv: bool = True) -> None:
    """Linear (and, with ``conv``, Conv2d) weights ~ trunc-normal(std) with zero bias;
    LayerNorm to identity. ``conv=False`` leaves convolutions at PyTorch's default init."""
    if isinstance(module, nn.Linear) or (conv and isinstance(module, nn.Conv2d)):
        trunc_normal(module.weight, std, trunc)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + γ₁·attn(LN(x))``, then ``x + γ₂·mlp(LN(x))``."""

    def __init__(self, cfg: ModelConfig, drop_path: float, own_bias: bool) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = Attention(
            dim,
            cfg.num_heads,
            qkv_bias=cfg.qkv_bias,
            grid=cfg.grid_size if own_bias else None,
            attn_impl=cfg.attn_impl,
            rel_pos_resize=cfg.rel_pos_resize,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.gamma_1 = self.gamma_2 = None
        if cfg.layer_scale_init > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), cfg.layer_scale_init))
        self.compile_mode = str(cfg.compile)  # what runs through torch.compile (Beit.compile_blocks)

    def forward(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None = None, grid: Grid | None = None
    ) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``; drop path skips the branches of dropped samples.
        ``grid``: the patch grid of ``x`` when it is not the built one (None: the built one)."""
        if self.compile_mode == "blocks":
            return compiled_block()(self, x, shared_bias, grid)
        return self.forward_region(x, shared_bias, grid)

    def forward_region(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None = None, grid: Grid | None = None
    ) -> torch.Tensor:
        """``forward`` without the whole-block compile: the region ``model.compile: blocks`` compiles."""
        attn_branch, mlp_branch = (
            compiled_branches() if self.compile_mode == "branches" else (Block.attn_branch, Block.mlp_branch)
        )
        attn = partial(attn_branch, self, shared_bias=shared_bias)
        x = self.drop_path.residual(x, attn if grid is None else partial(attn, grid=grid))
        return self.drop_path.residual(x, partial(mlp_branch, self))

    def attn_branch(
        self, x: torch.Tensor, shared_bias: torch.Tensor | None = None, grid: Grid | None = None
    ) -> torch.Tensor:
        """``γ₁ · attn(LN₁(x))``: ``[B, T, D] -> [B, T, D]``."""
        a = self.attn(self.norm1(x), shared_bias, grid)
        return a if self.gamma_1 is None else self.gamma_1 * a

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``γ₂ · mlp(LN₂(x))``: ``[B, T, D] -> [B, T, D]``."""
        m = self.mlp(self.norm2(x))
        return m if self.gamma_2 is None else self.gamma_2 * m


def take_indices(num_blocks: int, indices: Indices) -> tuple[list[int], int]:
    """Sorted absolute block indices for ``indices`` (None: all; int ``n``: the last ``n``;
    a sequence, negative from the end) and the largest; out of range is a ``ValueError``."""
    if indices is None:
        indices = num_blocks
    if isinstance(indices, int):
        if not 0 < indices <= num_blocks:
            raise ValueError(f"last {indices} blocks: expected 1 to {num_blocks}")
        take = list(range(num_blocks - indices, num_blocks))
    else:
        take = sorted({i + num_blocks if i < 0 else i for i in indices})
        if not take or take[0] < 0 or take[-1] >= num_blocks:
            raise ValueError(f"block indices {list(indices)}: expected some in [-{num_blocks}, {num_blocks})")
    return take, take[-1]


@cache
def compiled_branches() -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """``Block.attn_branch`` and ``Block.mlp_branch`` under ``torch.compile``, compiled once for
    all blocks (the block is an argument; a new batch size, as drop path makes, recompiles
    once with a dynamic batch dimension). Drop-path draws and residual adds stay eager."""
    return torch.compile(Block.attn_branch), torch.compile(Block.mlp_branch)


@cache
def compiled_block() -> Callable[..., torch.Tensor]:
    """``Block.forward_region`` under ``torch.compile``: one function for all blocks, the block an
    argument (its parameters graph inputs, so the state dict keeps its keys). Drop path runs in the
    graph as a mask; a second drop-path rate recompiles once with the rate symbolic."""
    return torch.compile(Block.forward_region)


class Beit(nn.Module):
    """BEiT backbone ``[B, 3, H, W] -> [B, 1 + N, D]`` tokens, with optional pooled head.

    ``cfg.global_pool`` decides the final norm: ``"none"``/``"token"`` keep ``norm`` over all
    tokens; ``"avg"`` replaces it with ``fc_norm`` after mean-pooling the patch tokens.

    Initialisation follows unilm per model (``model.init_trunc: auto``): this backbone and the
    classifier as unilm's ``modeling_finetune.py`` (timm's ``trunc_normal_`` cut at ±2 absolute,
    i.e. a plain normal(0.02); the patch convolution keeps PyTorch's default), the MIM model as
    ``modeling_pretrain.py`` (cut at ±1σ, the convolution included).
    """

    INIT_TRUNC = "2abs"  # the truncation ``model.init_trunc: auto`` means for this class
    INIT_CONV = False  # whether init_weights re-initialises the patch-embedding convolution

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = None
        if cfg.use_abs_pos_emb:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, d))
        self.rel_pos_bias = None
        if cfg.rel_pos_bias == "shared":
            self.rel_pos_bias = RelativePositionBias(cfg.grid_size, cfg.num_heads, cfg.rel_pos_resize)
        rates = drop_path_rates(cfg.drop_path_rate, cfg.depth)
        own_bias = cfg.rel_pos_bias == "per_layer"
        self.blocks = nn.ModuleList(Block(cfg, rates[i], own_bias) for i in range(cfg.depth))
        use_fc_norm = cfg.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if use_fc_norm else None
        self.head = nn.Linear(d, cfg.num_classes) if cfg.num_classes > 0 else None
        self.grad_checkpointing = cfg.grad_checkpointing
        self.init_weights()

    # --- initialisation (seed §5) -------------------------------------------------------
    @property
    def init_trunc(self) -> str:
        """The truncation of the trunc-normal init (a key of ``TRUNC_BOUNDS``)."""
        return type(self).INIT_TRUNC if self.cfg.init_trunc == "auto" else self.cfg.init_trunc

    def init_weights(self) -> None:
        """Trunc-normal(std) everywhere, then rescale each block's output projections by
        ``1/sqrt(2·layer_id)`` (seed §5, "proper initialization")."""
        std, trunc = self.cfg.init_std, self.init_trunc
        for module in self.modules():
            init_module(module, std, trunc, conv=type(self).INIT_CONV)
        for name in ("cls_token", "pos_embed", "mask_token"):
            token = getattr(self, name, None)
            if token is not None:
                trunc_normal(token, std, trunc)
        for layer_id, block in enumerate(self.block_list(), start=1):
            scale = 1.0 / math.sqrt(2.0 * layer_id)
            block.attn.proj.weight.data.mul_(scale)
            block.mlp.fc2.weight.data.mul_(scale)

    def block_list(self) -> list[Block]:
        """The blocks, typed (``nn.ModuleList`` items are plain ``nn.Module`` to a type checker)."""
        return [cast(Block, block) for block in self.blocks]

    # --- metadata used by optim.py (house style rule 8) ----------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay besides biases and 1-d weights (norms,
        LayerScale, q/v biases), by ``model.wd_exempt``: unilm's ``{"cls_token", "pos_embed"}``
        (its pre-training and fine-tuning models decay ``mask_token`` and the relative-position
        tables), + the tables (``"unilm_rel_pos"``), + ``mask_token`` too (``"positional"``), or
        none at all (``"none"``: unilm's segmentation decays ``cls_token`` and ``pos_embed`` too)."""
        if self.cfg.wd_exempt == "none":
            return set()
        names = {"cls_token", "pos_embed"}
        if self.cfg.wd_exempt in ("unilm_rel_pos", "positional"):
            names |= {n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")}
        if self.cfg.wd_exempt == "positional":
            names.add("mask_token")
        return names

    @property
    def num_layers(self) -> int:
        """Layer ids used by layer-wise lr decay: 0 = embeddings, 1..depth = blocks, depth+1 = rest."""
        return self.cfg.depth + 2

    def layer_id(self, name: str) -> int:
        """Layer id of parameter ``name`` (see ``num_layers``)."""
        if name.startswith(("cls_token", "mask_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers - 1

    def compile_blocks(self, mode: str | bool = "branches") -> None:
        """Run each block's two residual branches (norm, attention or MLP, LayerScale; ``"branches"``
        or ``True``) or each whole block (``"blocks"``) through ``torch.compile``, or nothing
        (``"none"`` or ``False``); the first step compiles (seconds to tens of seconds on CPU)."""
        mode = ("branches" if mode else "none") if isinstance(mode, bool) else mode
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
        for block in self.modules():  # a head's blocks too (BEiT v2's aggregation layers)
            if isinstance(block, Block):
                block.compile_mode = mode

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations."""
        self.grad_checkpointing = enable

    # --- forward -------------------------------------------------------------------------
    def runtime_grid(self, x: torch.Tensor) -> Grid | None:
        """The patch grid of images ``x [B, C, H, W]``, or None when it is the built one
        (``cfg.grid_size``: the stored tables are used as they are)."""
        grid = self.patch_embed.dynamic_grid(*x.shape[-2:])
        return None if grid == tuple(self.cfg.grid_size) else grid

    def embed(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding + [CLS] (+ absolute positions): ``[B, 3, H, W] -> [B, 1 + N, D]``."""
        if bool_masked_pos is not None:
            raise ValueError("this backbone has no [MASK] token: use BeitForMaskedImageModeling")
        return self._add_cls_and_pos(self.patch_embed(x), self.runtime_grid(x))

    def _add_cls_and_pos(self, x: torch.Tensor, grid: Grid | None = None) -> torch.Tensor:
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat((cls, x), dim=1)
        if self.pos_embed is not None:
            pos = self.pos_embed if grid is None else resize_pos_embed(self.pos_embed, grid)
            x = x + pos.to(x.dtype)
        return x

    def _run_blocks(
        self, x: torch.Tensor, grid: Grid | None, take: Collection[int] = (), stop: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens after blocks ``0..stop`` (all by default) and the outputs of blocks ``take``."""
        shared = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        taken = []
        for i, block in enumerate(self.blocks if stop is None else self.blocks[: stop + 1]):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, shared, grid, use_reentrant=False)
            else:
                x = block(x, shared, grid)
            if i in take:
                taken.append(x)
        return x, taken

    def forward_features(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens after the last block and ``norm``: ``[B, 1 + N, D]``."""
        grid = self.runtime_grid(x)
        x, _ = self._run_blocks(self.embed(x, bool_masked_pos), grid)
        return self.norm(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Indices = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        bool_masked_pos: torch.Tensor | None = None,
    ) -> list[Any] | tuple[torch.Tensor, list[Any]]:
        """The outputs of blocks ``indices`` for images ``x [B, 3, H, W]`` (timm's signature).

        ``indices``: None = every block, an int ``n`` = the last ``n``, a sequence = those blocks
        (negative from the end); returned in block order. Each is ``[B, D, H/p, W/p]``
        (``output_fmt="NCHW"``) or ``[B, N, D]`` (``"NLC"``) patch tokens, after ``norm`` when
        ``norm``; ``return_prefix_tokens`` pairs each with its [CLS] token ``[B, 1, D]``.
        ``stop_early`` runs no block after the last chosen one. Returns the list, or with
        ``intermediates_only=False`` ``(norm(final tokens) [B, 1 + N, D], list)``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: expected 'NCHW' or 'NLC'")
        take, last = take_indices(len(self.blocks), indices)
        b, (gh, gw) = x.shape[0], self.patch_embed.dynamic_grid(*x.shape[-2:])
        grid = self.runtime_grid(x)
        tokens = self.embed(x, bool_masked_pos)
        x, taken = self._run_blocks(tokens, grid, take, last if stop_early else None)
        taken = [self.norm(t) if norm else t for t in taken]
        feats = [t[:, 1:] for t in taken]
        if output_fmt == "NCHW":
            feats = [f.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() for f in feats]
        out: list[Any] = list(zip(feats, (t[:, :1] for t in taken))) if return_prefix_tokens else feats
        return out if intermediates_only else (self.norm(x), out)

    def prune_intermediate_layers(
        self, indices: Indices = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (as ``forward_intermediates``), with
        ``prune_norm`` the final ``norm``, with ``prune_head`` ``fc_norm`` and ``head`` (timm's
        semantics); returns the kept indices. Their keys leave the state dict."""
        take, last = take_indices(len(self.blocks), indices)
        del self.blocks[last + 1 :]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm, self.head = None, None
        return take

    def attention_probs(
        self, x: torch.Tensor, block: int, bool_masked_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention probabilities ``[B, heads, 1 + N, 1 + N]`` of block ``block`` (negative from
        the end) for images ``x``: the blocks before it run as usual (fused SDPA), that block's
        softmax(q kᵀ/√d + relative position bias) is recomputed eagerly in fp32 (rows sum to 1)."""
        (i,), _ = take_indices(len(self.blocks), [block])
        grid = self.runtime_grid(x)
        tokens = self.embed(x, bool_masked_pos)
        if i > 0:
            tokens, _ = self._run_blocks(tokens, grid, stop=i - 1)
        shared = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        target = self.block_list()[i]
        return target.attn.probs(target.norm1(tokens), shared, grid)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, D] -> [B, D]``: mean of patch tokens + ``fc_norm``, or the [CLS] token."""
        if self.fc_norm is not None:
            return self.fc_norm(tokens[:, 1:].mean(dim=1))
        return tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pooled features, then the classifier when ``num_classes > 0``: ``[B, classes or D]``."""
        pooled = self.pool(tokens)
        return self.head(pooled) if self.head is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
