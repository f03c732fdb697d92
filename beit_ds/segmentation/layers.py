"""Decoder building blocks (mmseg's ``ConvModule``) and BatchNorm synchronised over ranks.

``ConvBNReLU`` keeps mmseg's child names (``conv``, ``bn``) so that the unilm / mmseg checkpoint
keys of UperNet, FCN and SETR heads are our keys. unilm trains with SyncBN: statistics over the
whole global batch (2 images per GPU). ``sync_batchnorm`` swaps every ``BatchNorm2d`` for
torch's ``SyncBatchNorm`` on accelerators, and on CPU (where torch's refuses: gloo ranks in tests
and CPU runs) for ``CPUSyncBatchNorm``, which all-reduces the per-channel sums with a
differentiable collective. Either way the state-dict keys stay those of ``BatchNorm2d``.

Every BatchNorm here computes in fp32, as mmcv's and apex's mixed precision keep it: DeepSpeed's
bf16 / fp16 modes cast each parameter (the optimizer holds fp32 masters) and leave buffers as they
are (unless its ``buffer_dtype`` says otherwise), so a norm meets a low-precision input, weight and bias beside fp32 running statistics. The
input and the affine parameters are cast up for the call (gradients flow back to the low-precision
parameters), the statistics are kept fp32, the output is cast back to the input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

_STATISTICS = ("running_mean", "running_var")


def _in_fp32(norm: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``forward(x)`` of the BatchNorm ``norm`` with input, weight, bias and running statistics in
    fp32; the output in ``x.dtype``: ``[B, C, H, W] -> [B, C, H, W]``."""
    for name in _STATISTICS:  # e.g. a module cast with .half(): the statistics become fp32 for good
        stat = getattr(norm, name, None)
        if stat is not None and stat.dtype != torch.float32:
            setattr(norm, name, stat.float())
    low = {n: p.float() for n, p in norm.named_parameters(recurse=False) if p.dtype != torch.float32}
    if low:  # the same module with fp32 copies of its parameters: comes back here with none low
        return functional_call(norm, low, (x,))  # (a forward hook on the norm itself runs twice)
    return forward(x.float()).to(x.dtype)


class FP32BatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` that normalises and keeps its statistics in fp32 whatever the input's and
    the parameters' dtype (module docstring); the output has the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(self, super().forward, x)


class FP32SyncBatchNorm(nn.SyncBatchNorm):
    """torch's ``SyncBatchNorm`` computing in fp32 as ``FP32BatchNorm2d`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(self, super().forward, x)


class ConvBNReLU(nn.Sequential):
    """``Conv2d`` (no bias: the norm has one) → ``BatchNorm2d`` → ReLU: ``[B, Cin, H, W] -> [B, Cout, H', W']``."""

    def __init__(self, cin: int, cout: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = FP32BatchNorm2d(cout)
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


class CPUSyncBatchNorm(FP32BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch of every rank together.

    Per channel, the sum, the sum of squares and the pixel count are all-reduced (autograd flows
    through the collective, so the gradient is the synchronised one); the biased variance
    normalises, the unbiased one updates ``running_var`` — as ``nn.SyncBatchNorm``. Without a
    process group, or in eval mode, it is ``BatchNorm2d``. All of it in fp32 (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_fp32(self, self._synchronised, x)

    def _synchronised(self, xf: torch.Tensor) -> torch.Tensor:
        """The forward of fp32 ``xf [B, C, H, W]`` with fp32 parameters and statistics."""
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return nn.BatchNorm2d.forward(self, xf)
        c = xf.shape[1]
        count = torch.full((1,), xf.numel() // c, dtype=torch.float32, device=xf.device)
        stats = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count])
        stats = _SumOverRanks.apply(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every ``BatchNorm2d`` synchronised over ranks (torch's ``SyncBatchNorm``
    on CUDA, ``CPUSyncBatchNorm`` elsewhere), both in fp32; parameters and buffers are carried over."""
    return _swap(module, FP32SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm)


def _swap(module: nn.Module, cls: type[FP32SyncBatchNorm] | type[CPUSyncBatchNorm]) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, cls):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _swap(child, cls))
    return module


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize with ``align_corners=False`` (unilm's setting everywhere): ``[B, C, h, w] -> [B, C, *size]``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
