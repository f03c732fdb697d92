"""The VQ-KD quantizer (BEiT v2 §2.1, Eq. 1-3): encoder outputs and codes are l2-normalised and a
vector's code is the one of highest cosine similarity; the codebook is no parameter but an
exponential moving average (unilm ``norm_ema_quantizer.py``), initialised by spherical k-means on
the first batch; the straight-through estimator passes the decoder's gradient to the encoder, and
the commitment term ``beta · ‖sg[e] − z‖²`` (mean over elements) pulls the encoder to its codes.

EMA update of one training forward (``ema_update``), with ``n_k`` the vectors assigned to code k
and ``s_k`` their sum: codes with ``n_k > 0`` become ``l2(λ e_k + (1 − λ) l2(s_k / n_k))``, the
others stay. The state is buffers, saved with every checkpoint under unilm's keys so that its
released checkpoints load strictly:

* ``embedding.weight [K, D]``: the codebook (unit rows);
* ``embedding.cluster_size [K]``: the EMA (decay λ) of each code's assignments per update, set to
  the k-means bin counts at initialisation (unilm sets it there and leaves it); dead codes are
  those under ``dead_threshold``;
* ``embedding.embed_avg [K, D]``: unilm's layout only, neither read nor updated (as in unilm);
* ``embedding.initted [1]``: 1 once the codebook holds k-means (or random unit) codes;
* ``cluster_size [K]``: assignments since the epoch began (the task resets it each epoch).

Distributed (rule: identical replicas): each update's counts and sums are all-reduced in one
collective before anyone uses them (as unilm does); k-means runs on the first batches of all
ranks gathered and rank 0's result is broadcast (unilm clusters each rank's own batch, so its
replicas start from different codebooks); a dead-code restart draws from the gathered outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.distributed import all_gather_cat, all_reduce_sum, broadcast_

KMEANS_SEED = 0
"""Seed of the generator that picks k-means' initial centres (the global stream is not drawn)."""


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x [..., D]`` scaled to unit length."""
    return F.normalize(x, p=2, dim=-1)


def nearest_code(vectors: torch.Tensor, codes: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index ``[M]`` of the code of highest dot product (cosine for unit rows) of each of
    ``vectors [M, D]`` in ``codes [K, D]``, ``chunk`` rows at a time (an ``[M, K]`` table of
    100k × 8192 would hold 3 GB)."""
    return torch.cat([(part @ codes.t()).argmax(1) for part in vectors.split(chunk)])


def kmeans(samples: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of unit ``samples [M, D]``: ``k`` centres drawn from the samples (without
    replacement when ``M >= k``), ``iters`` rounds of assigning by cosine and moving each centre to
    its samples' normalised mean (an empty cluster keeps its centre). Returns (centres ``[k, D]``,
    samples per centre ``[k]`` of the last assignment), as unilm's ``kmeans(use_cosine_sim=True)``."""
    m = samples.shape[0]
    if m >= k:
        pick = torch.randperm(m, generator=generator, device=generator.device)[:k]
    else:
        pick = torch.randint(0, m, (k,), generator=generator, device=generator.device)
    means = samples[pick.to(samples.device)]
    bins = torch.zeros(k, device=samples.device)
    for _ in range(iters):
        assign = nearest_code(samples, means)
        bins = torch.bincount(assign, minlength=k).to(samples.dtype)
        sums = torch.zeros_like(means).index_add_(0, assign, samples)
        moved = l2norm(sums / bins.clamp_min(1.0)[:, None])
        means = torch.where(bins[:, None] == 0, means, moved)
    return means, bins


def usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, fraction of codes used) of the code histogram ``counts [K]``."""
    p = counts.float() / counts.float().sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()


class CodebookEMA(nn.Module):
    """The codebook and its EMA statistics (buffers; keys as unilm's ``EmbeddingEMA``)."""

    def __init__(self, num_codes: int, dim: int, kmeans_init: bool) -> None:
        super().__init__()
        weight = torch.zeros(num_codes, dim) if kmeans_init else l2norm(torch.randn(num_codes, dim))
        self.register_buffer("weight", weight)
        self.register_buffer("cluster_size", torch.zeros(num_codes))
        self.register_buffer("embed_avg", weight.clone())
        self.register_buffer("initted", torch.tensor([0.0 if kmeans_init else 1.0]))
        self._ready: bool | None = None  # ``initted`` read once on the host, not per step

    weight: torch.Tensor
    cluster_size: torch.Tensor
    embed_avg: torch.Tensor
    initted: torch.Tensor

    @property
    def ready(self) -> bool:
        """Whether the codebook is initialised (one device read, then cached until a load)."""
        if self._ready is None:
            self._ready = bool(self.initted.item() > 0)
        return self._ready

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._ready = None  # the loaded ``initted`` decides
        super()._load_from_state_dict(*args, **kwargs)


@dataclass
class QuantizerOutput:
    """``quantized``: the codes of the inputs with the straight-through gradient, shaped and typed
    as the input ``[..., D]``; ``loss``: the commitment term (0-d); ``indices [...]``; ``counts
    [K]``: assignments per code in this forward (all ranks' when training)."""

    quantized: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor
    counts: torch.Tensor


class NormEMAQuantizer(nn.Module):
    """``forward(z [..., D]) -> QuantizerOutput``; in training mode it initialises the codebook
    on its first batch and updates it (EMA, all ranks alike); ``lookup`` only reads it."""

    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, beta: float = 1.0,
                 kmeans_iters: int | None = 10, dead_threshold: float = 1.0, restart_dead: bool = False) -> None:
        """``kmeans_iters=None``: random unit codes instead of k-means initialisation."""
        super().__init__()
        self.num_codes, self.dim, self.decay, self.beta = num_codes, dim, decay, beta
        self.kmeans_iters, self.dead_threshold, self.restart_dead = kmeans_iters, dead_threshold, restart_dead
        self.embedding = CodebookEMA(num_codes, dim, kmeans_iters is not None)
        self.register_buffer("cluster_size", torch.zeros(num_codes))

    cluster_size: torch.Tensor

    def _apply(self, fn: Any, recurse: bool = True) -> NormEMAQuantizer:
        """Moves keep the EMA state in its own dtype: a half-precision copy of the model
        (``.half()``, ``.to(torch.bfloat16)``) would round the codebook and its counts."""
        for module in (self, self.embedding):
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.to(fn(buf.new_empty(0)).device)
        return self

    def unit(self, z: torch.Tensor) -> torch.Tensor:
        """``z [..., D]`` as unit rows ``[M, D]`` in the codebook's dtype."""
        return l2norm(z.reshape(-1, self.dim).to(self.embedding.weight.dtype))

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """The code index ``[...]`` of each vector of ``z [..., D]`` (no update)."""
        return nearest_code(self.unit(z), self.embedding.weight).view(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        flat = self.unit(z)
        if self.training and not self.embedding.ready:
            self.init_codebook(flat.detach())
        weight = self.embedding.weight
        index = nearest_code(flat, weight)
        codes = weight.index_select(0, index)  # read before the update, as unilm
        if self.training:
            counts = self.ema_update(flat.detach(), index)
            if self.restart_dead:
                self.restart_dead_codes(flat.detach(), (flat.detach() * codes).sum(1))
        else:
            counts = torch.bincount(index, minlength=self.num_codes).float()
        loss = self.beta * F.mse_loss(codes, flat)
        quantized = flat + (codes - flat).detach()  # straight-through
        return QuantizerOutput(quantized.view(z.shape).to(z.dtype), loss, index.view(z.shape[:-1]), counts)

    @torch.no_grad()
    def init_codebook(self, flat: torch.Tensor) -> None:
        """k-means of every rank's ``flat [M, D]`` gathered; rank 0's centres and bins everywhere."""
        assert self.kmeans_iters is not None, "a random codebook is initialised at construction"
        generator = torch.Generator(device=flat.device).manual_seed(KMEANS_SEED)
        means, bins = kmeans(all_gather_cat(flat), self.num_codes, self.kmeans_iters, generator)
        emb = self.embedding
        emb.weight.copy_(broadcast_(means.contiguous()))
        emb.cluster_size.copy_(broadcast_(bins.contiguous()))
        emb.initted.fill_(1.0)
        emb._ready = True

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One EMA step from unit ``flat [M, D]`` assigned ``index [M]`` (every rank's, summed in
        one all-reduce); returns the assignments per code ``[K]``."""
        k, emb = self.num_codes, self.embedding
        sums = torch.zeros(k, self.dim, device=flat.device, dtype=flat.dtype).index_add_(0, index, flat)
        counts = torch.bincount(index, minlength=k).to(flat.dtype)
        stats = all_reduce_sum(torch.cat([counts[:, None], sums], dim=1))
        counts, sums = stats[:, 0], stats[:, 1:]
        self.cluster_size.add_(counts)
        emb.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        means = torch.where(counts[:, None] > 0, l2norm(sums / counts.clamp_min(1.0)[:, None]), emb.weight)
        emb.weight.copy_(l2norm(emb.weight * self.decay + means * (1.0 - self.decay)))
        return counts

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, similarity: torch.Tensor) -> None:
        """Move each dead code onto one of the gathered encoder outputs least similar to their own
        code (``similarity [M]``), the i-th dead code onto the i-th worst (cycling), and give it the
        average count. Shapes do not depend on how many codes are dead (no host sync)."""
        emb = self.embedding
        dead = emb.cluster_size < self.dead_threshold
        samples, score = all_gather_cat(flat), all_gather_cat(similarity)
        worst = samples[torch.topk(score, min(self.num_codes, score.shape[0]), largest=False).indices]
        slot = (dead.long().cumsum(0) - 1).clamp_min(0) % worst.shape[0]
        emb.weight.copy_(torch.where(dead[:, None], worst[slot], emb.weight))
        average = torch.full_like(emb.cluster_size, samples.shape[0] / self.num_codes)
        emb.cluster_size.copy_(torch.where(dead, average, emb.cluster_size))

    def health(self) -> dict[str, torch.Tensor]:
        """``epoch_codes_used`` (fraction of codes assigned since the epoch began) and
        ``dead_codes`` (how many are under the dead threshold), as 0-d tensors."""
        return {
            "epoch_codes_used": (self.cluster_size > 0).float().mean(),
            "dead_codes": (self.embedding.cluster_size < self.dead_threshold).float().sum(),
        }

    def reset_usage(self) -> None:
        """Start counting a new epoch's assignments."""
        self.cluster_size.zero_()
