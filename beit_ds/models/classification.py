"""Image classification on a BEiT backbone (seed §2.6 "image classification", §3.1, App. D).

``BeitForImageClassification`` is the backbone plus a linear head: mean of the patch tokens +
``fc_norm`` LayerNorm (the seed's choice, ``model.global_pool="avg"``) or the [CLS] token after
``norm`` (``"token"``). The head starts at trunc-normal(0.02) × ``head_init_scale`` (unilm's
0.001), so fine-tuning starts from near-uniform predictions. With ``probe_layer=k`` it is the
linear probe of App. D: the backbone is frozen and the head reads block ``k``'s tokens from
``forward_intermediates`` (the blocks after ``k`` and the final norms are pruned with
``prune_intermediate_layers``, so they neither run nor enter the state dict): the plain mean of
its patch tokens (no norm, no BatchNorm), or with ``probe_pool="cls_mean"`` the [CLS] token
concatenated with that mean (unilm's linear probe).

``load_backbone`` is ``loading.load_backbone`` (MIM keys dropped, positions adapted, head
policy, one-line errors), the free function any task calls.
State-dict keys stay timm's / unilm's (``fc_norm``, ``head``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import ModelConfig
from beit_ds.models.beit import Beit, init_module, trunc_normal
from beit_ds.models.loading import HEAD_KEYS, load_backbone

Tensors = dict[str, torch.Tensor]
__all__ = ["HEAD_KEYS", "BeitForImageClassification", "ClassifierOutput", "soft_target_cross_entropy"]


@dataclass
class ClassifierOutput:
    """``loss`` (soft-target cross-entropy, scalar), ``logits`` ``[B, classes]``."""

    loss: torch.Tensor
    logits: torch.Tensor


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_b Σ_c -targets[b, c] · log softmax(logits)[b, c]`` for ``[B, C]`` targets summing to 1."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class BeitForImageClassification(Beit):
    """``[B, 3, H, W] -> logits [B, num_classes]``; ``forward(x, targets)`` also computes the loss."""

    def __init__(
        self,
        cfg: ModelConfig,
        head_init_scale: float = 0.001,
        probe_layer: int | None = None,
        probe_pool: str = "mean",
    ) -> None:
        if cfg.global_pool not in ("avg", "token") or cfg.num_classes < 1:
            raise ValueError(
                f"classification needs model.global_pool 'avg' or 'token' (got {cfg.global_pool!r}) and"
                f" model.num_classes >= 1 (got {cfg.num_classes})"
            )
        if probe_layer is not None and not 1 <= probe_layer <= cfg.depth:
            raise ValueError(f"probe.layer={probe_layer}: expected a block in [1, model.depth={cfg.depth}]")
        if probe_pool not in ("mean", "cls_mean") or (probe_pool != "mean" and probe_layer is None):
            raise ValueError(f"probe.pool={probe_pool!r}: expected 'mean', or 'cls_mean' for a linear probe")
        if probe_layer is not None:
            cfg = cfg.replace(drop_path_rate=0.0)  # a frozen backbone: no stochastic depth
        super().__init__(cfg)
        self.probe_pool = probe_pool
        if probe_pool == "cls_mean":  # [CLS] ‖ mean: a head over 2·D features
            self.head = nn.Linear(2 * cfg.embed_dim, cfg.num_classes)
            init_module(self.head, cfg.init_std, self.init_trunc)
        head = cast(nn.Linear, self.head)  # a classifier always has one (model.num_classes >= 1)
        trunc_normal(head.weight, 0.02, self.init_trunc)
        with torch.no_grad():
            head.weight.mul_(head_init_scale)
            head.bias.mul_(head_init_scale)
        self.probe_layer = probe_layer
        if probe_layer is not None:
            self.prune_intermediate_layers([probe_layer - 1], prune_norm=True, prune_head=False)
            self.fc_norm = None  # the probe pools block k itself
            for name, p in self.named_parameters():
                p.requires_grad_(name in HEAD_KEYS)

    def forward_features(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[B, 1 + N, D]`` after the last block and ``norm`` (after block ``probe_layer``
        without norm for a probe, computed without autograd: nothing before the head trains)."""
        if self.probe_layer is None:
            return super().forward_features(x, bool_masked_pos)
        with torch.no_grad():
            ((patches, cls),) = self.forward_intermediates(  # type: ignore[misc]  # (patches, [CLS]) per block
                x, [self.probe_layer - 1], True, stop_early=True, output_fmt="NLC", intermediates_only=True
            )
        return torch.cat((cls, patches), dim=1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, D] -> [B, D]``; a probe takes the plain mean of the patch tokens
        (``[B, 2·D]``: [CLS] then the mean, with ``probe_pool="cls_mean"``)."""
        if self.probe_layer is not None:
            mean = tokens[:, 1:].mean(dim=1)
            return torch.cat((tokens[:, 0], mean), dim=-1) if self.probe_pool == "cls_mean" else mean
        return super().pool(tokens)

    def forward(  # type: ignore[override]  # the classifier's own optional targets
        self, x: torch.Tensor, targets: torch.Tensor | None = None
    ) -> torch.Tensor | ClassifierOutput:
        """Logits ``[B, C]``; with ``targets`` (``[B, C]`` soft targets) a ``ClassifierOutput``."""
        logits = self.forward_head(self.forward_features(x))
        if targets is None:
            return logits
        return ClassifierOutput(soft_target_cross_entropy(logits, targets), logits)

    def train(self, mode: bool = True) -> BeitForImageClassification:
        """A probe's frozen backbone stays in eval mode."""
        super().train(mode and self.probe_layer is None)
        return self

    # --- loading ---------------------------------------------------------------------------
    def load_backbone(self, sd: Tensors, head: str = "auto", source: str = "weights") -> list[str]:
        """Load ``sd`` (our layout) for fine-tuning; returns the keys left at their initial value
        (``loading.load_backbone``: ``head`` is ``"auto"``, ``"reset"`` or ``"keep"``)."""
        return load_backbone(self, sd, head, source)
