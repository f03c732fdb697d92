"""Decoder building blocks (mmseg's ``ConvModule``) and BatchNorm synchronised over ranks.

``ConvBNReLU`` keeps mmseg's child names (``conv``, ``bn``) so that the unilm / mmseg checkpoint
keys of UperNet, FCN and SETR heads are our keys. unilm trains with SyncBN: statistics over the
whole global batch (2 images per GPU). ``sync_batchnorm`` swaps every ``BatchNorm2d`` for
torch's ``SyncBatchNorm`` on accelerators, and on CPU (where torch's refuses: gloo ranks in tests
and CPU runs) for ``CPUSyncBatchNorm``, which all-reduces the per-channel sums with a
differentiable collective. Either way the state-dict keys stay those of ``BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """``Conv2d`` (no bias: the norm has one) → ``BatchNorm2d`` → ReLU: ``[B, Cin, H, W] -> [B, Cout, H', W']``."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU(inplace=True)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose gradient is the all-reduced gradient (each rank's output feeds
    every rank's loss)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch of every rank together.

    Per channel, the sum, the sum of squares and the pixel count are all-reduced (autograd flows
    through the collective, so the gradient is the synchronised one); the biased variance
    normalises, the unbiased one updates ``running_var`` — as ``nn.SyncBatchNorm``. Without a
    process group, or in eval mode, it is ``BatchNorm2d``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), xf.numel() // c, dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight.float()[None, :, None, None] + self.bias.float()[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` synchronised over ranks (torch's ``SyncBatchNorm``
    on CUDA, ``CPUSyncBatchNorm`` elsewhere); parameters and buffers are carried over."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _swap_cpu(module)


def _swap_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap_cpu(child))
    return module


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (unilm's setting everywhere): ``[B, C, h, w] -> [B, C, *size]``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
