"""Masked image modeling (seed §2.3): replace masked patch embeddings by a learnable [MASK]
embedding and predict the visual token of each masked patch.

``BeitForMaskedImageModeling`` is a ``Beit`` backbone plus ``mask_token`` and ``lm_head`` (the
backbone's final ``norm`` is the head's LayerNorm), so its state dict is unilm's pre-training
layout. The loss counts **only masked positions** unless ``predict_all`` (ablation). With
``mim.max_masked = K`` (pre-training recipes derive it from the masking target) each image's
positions are ordered masked-first by a stable sort and the first K rows go through the LM head,
padding rows weighted 0; without it the head runs on every position. Either way a mask-weighted
mean replaces gathering a data-dependent number of tokens, so no shape depends on the mask and
nothing waits for the device (house style rule 24; the step compiles with
``torch.compile(fullgraph=True)``).
The pixel-regression ablation (Table 4) regresses the raw pixels of the patches with an MSE loss
(``mim.pixel_target: raw``; ``normalized`` standardises each patch first, as MAE does).

BEiT v2's patch aggregation (arXiv 2208.06366 §2.3, ``mim.aggregation``) adds ``cls_pt_layers``
(unilm's name): the last block's [CLS] and the patch tokens after block ``early_layer`` go through
those blocks, the shared ``norm`` and the shared ``lm_head``; the loss is the sum of both MIM
losses. The head serves pre-training only: backbone exports and ``finetune.init`` drop it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from beit_ds.config import MIMConfig, ModelConfig
from beit_ds.config.model import AggregationConfig
from beit_ds.models.beit import Beit, Block, init_module, trunc_normal
from beit_ds.models.layers import drop_path_rates


@dataclass
class MIMOutput:
    """Result of a MIM forward pass.

    ``logits``: ``[B·R, V]`` token logits (or predicted pixels ``[B·R, p·p·C]``) of R rows per
    image: every patch (R = N) or, with ``mim.max_masked``, the patches ``positions`` ``[B, R]``
    names (masked ones first); ``predicted_tokens()`` maps them back to ``[B, N]``. ``accuracy``:
    fraction of masked patches whose token is predicted exactly (NaN for pixel targets);
    ``num_masked``: M, a 0-d tensor on the model's device (``int()`` it off the hot path).
    ``parts``: with patch aggregation, ``loss`` is the sum of two MIM losses and ``parts`` holds
    them detached — ``mim_loss`` (the last layer's; ``logits`` and ``accuracy`` are its too),
    ``agg_loss`` and ``agg_accuracy`` (the aggregation head's); empty otherwise.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    accuracy: torch.Tensor
    num_masked: torch.Tensor
    positions: torch.Tensor | None = None
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def predicted_tokens(self, num_patches: int) -> torch.Tensor:
        """``[B, N]`` argmax tokens; -1 where no logits were computed."""
        if self.positions is None:
            return self.logits.argmax(-1).reshape(-1, num_patches)
        rows = self.logits.argmax(-1).reshape(self.positions.shape)
        out = torch.full((rows.shape[0], num_patches), -1, dtype=rows.dtype, device=rows.device)
        return out.scatter(1, self.positions, rows)


def patchify(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[B, C, H, W] -> [B, N, p·p·C]`` with ``N = grid[0]·grid[1]``, patches in raster order."""
    b, c, h, w = images.shape
    gh, gw = grid
    if h % gh or w % gw or h // gh != w // gw:
        raise ValueError(f"pixel target {h}x{w} does not split into a {gh}x{gw} grid of square patches")
    p = h // gh
    x = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, p * p * c)


class BeitForMaskedImageModeling(Beit):
    """``forward(images [B,3,H,W], bool_masked_pos [B,N] or [B,H',W'], target) -> MIMOutput``.

    ``target``: token ids ``[B, N]`` / ``[B, h, w]`` (``mim.target="tokens"``) or an image
    ``[B, C, H'', W'']`` whose patches on the model's grid are regressed (``"pixels"``).
    """

    INIT_TRUNC = "1std"  # unilm modeling_pretrain.py: trunc_normal_(std) with a=-std, b=std
    INIT_CONV = True

    def __init__(self, cfg: ModelConfig, mim: MIMConfig) -> None:
        if cfg.global_pool != "none" or cfg.num_classes:
            raise ValueError("MIM pre-training needs model.global_pool='none' and model.num_classes=0")
        self.mim = mim
        super().__init__(cfg)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        out = mim.vocab_size if mim.target == "tokens" else cfg.patch_size**2 * cfg.in_chans
        self.lm_head = nn.Linear(cfg.embed_dim, out)
        trunc_normal(self.mask_token, cfg.init_std, self.init_trunc)
        init_module(self.lm_head, cfg.init_std, self.init_trunc)
        self.cls_pt_layers = aggregation_head(cfg, mim.aggregation) if mim.aggregation.enabled else None
        if self.cls_pt_layers is not None:
            self.compile_blocks(cfg.compile)  # the head's blocks compile as the backbone's (model.compile)

    def embed(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Patch embedding with masked positions replaced by ``mask_token``, + [CLS]."""
        grid = self.runtime_grid(x)
        patches = self.patch_embed(x)
        if bool_masked_pos is not None:
            mask = self.flat_mask(bool_masked_pos, x)
            patches = torch.where(mask.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
        return self._add_cls_and_pos(patches, grid)

    def flat_mask(self, bool_masked_pos: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """``bool_masked_pos`` (``[B, h, w]`` or ``[B, N]``) as ``[B, N]`` bool for the patch grid of
        ``images``; another shape is a one-line ``ValueError``."""
        mask = bool_masked_pos.reshape(bool_masked_pos.shape[0], -1)
        batch, (gh, gw) = images.shape[0], self.patch_embed.dynamic_grid(*images.shape[-2:])
        if mask.shape != (batch, gh * gw):
            raise ValueError(
                f"bool_masked_pos has shape {tuple(bool_masked_pos.shape)}: expected"
                f" [{batch}, {gh * gw}] (or [{batch}, {gh}, {gw}]) for this model's patch grid"
            )
        return mask.bool()

    def forward(  # type: ignore[override]  # the head's own inputs: masks and targets
        self, images: torch.Tensor, bool_masked_pos: torch.Tensor, target: torch.Tensor
    ) -> MIMOutput:
        mask = self.flat_mask(bool_masked_pos, images)
        if self.cls_pt_layers is None:
            return self.forward_loss(self.forward_features(images, bool_masked_pos), mask, target)
        features, aggregated = self.forward_aggregation(images, bool_masked_pos)
        last = self.forward_loss(features, mask, target)
        agg = self.forward_loss(aggregated, mask, target)
        parts = {"mim_loss": last.loss.detach(), "agg_loss": agg.loss.detach(), "agg_accuracy": agg.accuracy}
        return dataclasses.replace(last, loss=last.loss + agg.loss, parts=parts)

    def forward_aggregation(
        self, images: torch.Tensor, bool_masked_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(last tokens), norm(aggregated tokens))``, both ``[B, 1 + N, D]``: the aggregation
        head reads the last block's [CLS] and block ``early_layer``'s patch tokens (before ``norm``)."""
        if self.cls_pt_layers is None:
            raise ValueError("this model has no patch-aggregation head (mim.aggregation.enabled=false)")
        depth, early = len(self.blocks), self.mim.aggregation.early_layer - 1
        taken = self.forward_intermediates(
            images, [early, depth - 1], return_prefix_tokens=True, output_fmt="NLC",
            intermediates_only=True, bool_masked_pos=bool_masked_pos,
        )
        (early_patches, _), (last_patches, last_cls) = taken[0], taken[-1]
        h = torch.cat((last_cls, early_patches), dim=1)  # [B, 1 + N, D]
        grid = self.runtime_grid(images)
        shared = self.rel_pos_bias(grid) if self.rel_pos_bias is not None else None
        for block in self.cls_pt_layers:
            if self.grad_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, shared, grid, use_reentrant=False)
            else:
                h = block(h, shared, grid)
        return self.norm(torch.cat((last_cls, last_patches), dim=1)), self.norm(h)

    def forward_loss(self, features: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> MIMOutput:
        """The MIM loss of ``features`` ``[B, 1 + N, D]`` (``forward_features`` of the masked
        images; the [CLS] row is left to other heads, e.g. DINO's) with ``mask`` ``[B, N]`` bool."""
        tokens = features[:, 1:]  # [B, N, D]
        positions = self._masked_first(mask)
        if positions is not None:  # K rows per image, masked first: a fixed shape
            tokens = torch.gather(tokens, 1, positions.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if self.mim.target == "pixels":
            return self._pixel_loss(tokens, mask, target, positions)
        return self._token_loss(tokens, mask, target, positions)

    def _masked_first(self, mask: torch.Tensor) -> torch.Tensor | None:
        """``[B, K]`` patch indices, each image's masked patches first (in order), K = ``max_masked``;
        None when every position is computed (``predict_all``, no bound, or K >= N)."""
        k = self.mim.max_masked
        if self.mim.predict_all or k is None or k >= mask.shape[1]:
            return None
        order = torch.sort(mask.to(torch.int32), dim=1, descending=True, stable=True).indices
        return order[:, :k]

    @staticmethod
    def _rows(x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """``x`` ``[B, N, ...]`` at ``positions`` (all of it when None), flattened to ``[B·R, ...]``."""
        if positions is not None:
            index = positions.reshape(*positions.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
            x = torch.gather(x, 1, index)
        return x.flatten(0, 1)

    def _token_loss(
        self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, positions: torch.Tensor | None
    ) -> MIMOutput:
        labels = target.reshape(target.shape[0], -1)
        if labels.shape != mask.shape:
            raise ValueError(f"token target has shape {tuple(target.shape)}: expected {tuple(mask.shape)}")
        logits = self.lm_head(tokens).flatten(0, 1)  # [B·R, V]
        labels, weight = self._rows(labels, positions), self._rows(mask, positions).float()
        num_masked = mask.sum().float()
        if self.mim.predict_all:
            loss = F.cross_entropy(logits.float(), labels)
        else:  # the mean over masked positions, without gathering a data-dependent number of them
            ce = F.cross_entropy(logits.float(), labels, reduction="none")
            loss = (ce * weight).sum() / num_masked
        hit = (logits.detach().argmax(-1) == labels).float()
        accuracy = (hit * weight).sum() / num_masked
        return MIMOutput(loss, logits, accuracy, num_masked.long(), positions)

    def _pixel_loss(
        self, tokens: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, positions: torch.Tensor | None
    ) -> MIMOutput:
        patches = patchify(target, self.cfg.grid_size).float()
        if patches.shape[-1] != self.lm_head.out_features:
            raise ValueError(
                f"pixel target patches have {patches.shape[-1]} values: expected"
                f" {self.lm_head.out_features} (target image size = model.img_size)"
            )
        if self.mim.pixel_target == "normalized":
            mean = patches.mean(dim=-1, keepdim=True)
            var = patches.var(dim=-1, keepdim=True)
            patches = (patches - mean) / (var + self.mim.pixel_norm_eps).sqrt()
        pred = self.lm_head(tokens).flatten(0, 1)  # [B·R, p·p·C]
        patches, weight = self._rows(patches, positions), self._rows(mask, positions).float()
        num_masked = mask.sum().float()
        if self.mim.predict_all:
            loss = F.mse_loss(pred.float(), patches)
        else:  # mean over the masked patches' values, as MSE on the gathered rows
            per_patch = (pred.float() - patches).square().mean(dim=-1)
            loss = (per_patch * weight).sum() / num_masked
        nan = torch.full((), float("nan"), device=pred.device)
        return MIMOutput(loss, pred, nan, num_masked.long(), positions)


def aggregation_head(cfg: ModelConfig, agg: AggregationConfig) -> nn.ModuleList:
    """``agg.depth`` blocks after block ``agg.early_layer``, initialised as unilm's ``cls_pt_layers``:
    stochastic depth continues the backbone's ramp (``drop_path_rates`` over ``max(depth,
    early_layer + agg.depth)`` blocks, entries ``early_layer…``), weights keep PyTorch's default
    init (unilm builds them after its weight init ran), output projections are scaled by
    ``1/sqrt(2·layer)`` with layer = ``early_layer + i + 1``. An ``early_layer`` beyond the model's
    depth is a one-line ``ValueError``."""
    if agg.early_layer > cfg.depth:
        raise ValueError(f"mim.aggregation.early_layer={agg.early_layer}: expected at most model.depth={cfg.depth}")
    end = agg.early_layer + agg.depth
    rates = drop_path_rates(cfg.drop_path_rate, max(cfg.depth, end))[agg.early_layer : end]
    blocks = [Block(cfg, rate, cfg.rel_pos_bias == "per_layer") for rate in rates]
    for layer, block in enumerate(blocks, start=agg.early_layer + 1):
        for proj in (block.attn.proj.weight, block.mlp.fc2.weight):
            proj.data.div_(math.sqrt(2.0 * layer))
    return nn.ModuleList(blocks)
