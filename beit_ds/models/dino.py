"""DINO self-distillation beside masked image modeling (seed App. E, Table 10; Caron et al. 2021).

* ``DinoHead``: DINO's projection head — an MLP (GELU) to a bottleneck, L2-normalised, then a
  weight-normalised linear layer ``W_i = g_i · v_i / ‖v_i‖`` to K prototypes; with
  ``norm_last_layer`` every ``g_i`` is fixed to 1 (DINO's frozen ``weight_g``). Keys follow DINO
  (``mlp.{0,2,4}``, ``last_layer.weight_g``, ``last_layer.weight_v``).
* ``DinoLoss``: cross-entropy between the centred, sharpened teacher distribution of each global
  view and the student's distribution of every other view; the centre (a buffer) moves with
  momentum; ``teacher_temperature`` is a pure function of the step.
* ``BeitDinoStudent``: the MIM model and a ``DinoHead`` composed (no subclassing): one forward
  of the masked global views gives the MIM loss and, from the same pass, the [CLS] token for the
  head (as iBOT does: the student's global views are the masked ones); local crops run unmasked
  at their own patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config.dino import DinoHeadConfig
from beit_ds.models.beit import trunc_normal
from beit_ds.models.mim import BeitForMaskedImageModeling, MIMOutput

LAST_LAYER = "dino_last_layer"  # the label of the prototype layer's optimizer groups


class WeightNormLinear(nn.Module):
    """``x [.., I] -> [.., O]`` through ``W = g · v / ‖v‖`` (row-wise norm, no bias): weight
    normalisation written out (``torch.nn.utils.weight_norm``'s layout, ``dim=0``). With
    ``fixed_norm`` ``g`` is a frozen ones vector."""

    def __init__(self, in_features: int, out_features: int, fixed_norm: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default, as DINO leaves it
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not fixed_norm)

    def weight(self) -> torch.Tensor:
        """``[O, I]``: each row of ``v`` scaled to norm ``g``."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """``frozen``: no gradient reaches the weights (DINO's ``freeze_last_layer`` epochs)."""
        w = self.weight()
        return F.linear(x, w.detach() if frozen else w)


class DinoHead(nn.Module):
    """``[B, D] -> [B, K]`` prototype scores: MLP → L2-normalised bottleneck → ``WeightNormLinear``."""

    def __init__(self, in_dim: int, cfg: DinoHeadConfig, init_std: float = 0.02) -> None:
        super().__init__()
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [cfg.bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < cfg.num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):  # DINO: trunc_normal_(std=.02), zero bias
                trunc_normal(layer.weight, init_std, "2abs")
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(cfg.bottleneck_dim, cfg.out_dim, cfg.norm_last_layer)

    def forward(self, x: torch.Tensor, freeze_last_layer: bool = False) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(z, frozen=freeze_last_layer)


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear ``start`` → ``end`` over ``warmup_steps`` optimizer steps, then ``end``."""
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@dataclass
class DinoLossOutput:
    """``loss``: mean cross-entropy over the (teacher global, other student view) pairs;
    ``teacher_entropy``: mean entropy (nats) of the teacher's centred, sharpened distribution;
    ``batch_center``: ``[K]`` mean teacher logits of this batch (for ``DinoLoss.update_center``)."""

    loss: torch.Tensor
    teacher_entropy: torch.Tensor
    batch_center: torch.Tensor


class DinoLoss(nn.Module):
    """DINO's loss over ``V = 2 + L`` student views and the teacher's two global views.

    ``forward(student [V·B, K], teacher [2·B, K], teacher_temp)``, views stacked view-major
    (rows ``v·B … v·B + B - 1`` are view ``v``; the two global views first). Pairs of the same
    global view are left out: ``2·V - 2`` pairs. No host synchronisation.
    """

    center: torch.Tensor  # [1, K], a buffer

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, teacher_temp: float) -> DinoLossOutput:
        teacher = teacher.detach().float()
        b = teacher.shape[0] // 2
        views = student.shape[0] // b
        if views * b != student.shape[0] or views < 2 or teacher.shape[0] != 2 * b:
            raise ValueError(f"student {tuple(student.shape)} / teacher {tuple(teacher.shape)}: expected [V·B, K] / [2·B, K]")
        log_p = F.log_softmax(student.float() / self.student_temp, dim=-1).reshape(views, b, -1)  # [V, B, K]
        q = F.softmax((teacher - self.center) / teacher_temp, dim=-1).reshape(2, b, -1)  # [2, B, K]
        ce = -torch.einsum("tbk,vbk->tv", q, log_p) / b  # [2, V]: mean over the batch
        same = ce.diagonal().sum()  # teacher view t against student view t
        loss = (ce.sum() - same) / (2 * views - 2)
        entropy = -(q * torch.log(q.clamp_min(1e-30))).sum(-1).mean()
        return DinoLossOutput(loss, entropy, teacher.mean(dim=0))

    @torch.no_grad()
    def update_center(self, batch_center: torch.Tensor) -> None:
        """``center ← m · center + (1 - m) · batch_center`` (``[K]``, averaged over ranks by the caller)."""
        self.center.mul_(self.center_momentum).add_(batch_center.reshape(1, -1), alpha=1 - self.center_momentum)


@dataclass
class DinoStudentOutput:
    """``mim``: the MIM result of the masked global views; ``logits``: ``[V·B, K]`` head outputs of
    the two global views then the L local crops, view-major."""

    mim: MIMOutput
    logits: torch.Tensor


class BeitDinoStudent(nn.Module):
    """The MIM model (``mim``) with a ``DinoHead`` (``dino_head``) on its final [CLS] token.

    ``forward(global_images [2·B, 3, H, W], bool_masked_pos [2·B, N] or [2·B, H', W'],
    target [2·B, ...], local_images [L·B, 3, h, w] or None) -> DinoStudentOutput``.
    The optimizer's groups come from the backbone inside (``optim.param_groups`` composes); the
    head's last layer has groups of its own (``own_param_groups``), whose AdamW state restarts when
    its freezing ends.
    """

    def __init__(self, mim: BeitForMaskedImageModeling, head: DinoHeadConfig) -> None:
        super().__init__()
        self.mim = mim
        self.dino_head = DinoHead(mim.cfg.embed_dim, head, mim.cfg.init_std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.mim.set_grad_checkpointing(enable)

    def own_param_groups(self) -> dict[str, str]:
        """``{name prefix: group label}``: the prototype layer's optimizer groups (``LAST_LAYER``)."""
        return {"dino_head.last_layer.": LAST_LAYER}

    def cls_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, D]``: the final (normed) [CLS] token of unmasked images at their own grid."""
        return self.mim.forward_features(images)[:, 0]

    def forward(
        self,
        global_images: torch.Tensor,
        bool_masked_pos: torch.Tensor,
        target: torch.Tensor,
        local_images: torch.Tensor | None = None,
        freeze_last_layer: bool = False,
    ) -> DinoStudentOutput:
        features = self.mim.forward_features(global_images, bool_masked_pos)  # [2·B, 1 + N, D]
        mask = self.mim.flat_mask(bool_masked_pos, global_images)
        mim = self.mim.forward_loss(features, mask, target)
        cls = features[:, 0]
        if local_images is not None and local_images.shape[0]:
            cls = torch.cat([cls, self.cls_tokens(local_images)])
        return DinoStudentOutput(mim, self.dino_head(cls, freeze_last_layer))

    @torch.no_grad()
    def teacher_logits(self, global_images: torch.Tensor) -> torch.Tensor:
        """``[2·B, 3, H, W] -> [2·B, K]``: what this module computes as the teacher (unmasked views)."""
        return self.dino_head(self.cls_tokens(global_images))
