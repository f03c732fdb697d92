"""The VQ-KD quantizer against its formulas (BEiT v2 §2.1, Eq. 1-3; unilm norm_ema_quantizer.py):
l2-normalised cosine look-up, the normalised EMA update, spherical k-means initialisation, the
straight-through gradient and commitment term, dead-code restarts, and identical replicas on two
ranks (the EMA statistics all-reduced, k-means of the gathered batches)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F

from beit_ds.tokenizers.quantizer import NormEMAQuantizer, kmeans, usage


def _quantizer(k: int = 6, d: int = 4, **kw) -> NormEMAQuantizer:
    q = NormEMAQuantizer(k, d, kmeans_iters=None, **kw)  # random unit codes, already initialised
    return q.train()


def test_lookup_is_cosine_on_unit_vectors_and_the_state_stays_fp32():
    q = _quantizer().eval()
    z = torch.randn(2, 5, 4) * 7.0  # lengths must not matter
    e = q.embedding.weight
    assert torch.allclose(e.norm(dim=1), torch.ones(6), atol=1e-6)
    expected = (F.normalize(z, dim=-1) @ e.t()).argmax(-1)
    out = q(z)
    assert torch.equal(out.indices, expected) and torch.equal(q.lookup(z), expected)
    assert torch.allclose(out.quantized, e[expected], atol=1e-6)
    q.to(torch.bfloat16)  # a half-precision copy of the model keeps the EMA state exact
    assert all(b.dtype == torch.float32 for b in q.buffers())


def test_ema_update_follows_the_formula():
    decay = 0.9
    q = _quantizer(decay=decay)
    before = q.embedding.weight.clone()
    z = torch.randn(12, 4)
    flat = F.normalize(z, dim=-1)
    index = (flat @ before.t()).argmax(1)
    out = q(z)
    for k in range(6):
        members = flat[index == k]
        if len(members) == 0:
            expected = before[k]  # an unused code stays
        else:
            mean = F.normalize(members.mean(0), dim=0)
            expected = F.normalize(decay * before[k] + (1 - decay) * mean, dim=0)
        assert torch.allclose(q.embedding.weight[k], expected, atol=1e-6), k
    counts = torch.bincount(index, minlength=6).float()
    assert torch.equal(out.counts, counts) and torch.equal(q.cluster_size, counts)  # this epoch's counts
    assert torch.allclose(q.embedding.cluster_size, (1 - decay) * counts)  # EMA from 0
    assert torch.allclose(out.quantized, before[index], atol=1e-6)  # codes read before the update
    q.eval()(z)  # no update outside training
    assert torch.equal(q.cluster_size, counts)


def test_straight_through_gradient_and_commitment_term():
    q = _quantizer(beta=0.25)
    e = q.embedding.weight.clone()
    z = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4)
    out = q(z)
    flat = F.normalize(z, dim=-1)
    codes = e[out.indices]
    assert torch.allclose(out.quantized, codes, atol=1e-6)
    assert torch.allclose(out.loss, 0.25 * ((codes - flat) ** 2).mean(), atol=1e-7)
    # straight-through: the decoder's gradient reaches z as if the codes were l2(z) itself
    (grad,) = torch.autograd.grad((out.quantized * w).sum(), z, retain_graph=True)
    (identity,) = torch.autograd.grad((flat * w).sum(), z, retain_graph=True)
    assert torch.allclose(grad, identity, atol=1e-6)
    # commitment: beta · mean(‖sg[e] − l2(z)‖²) pulls z only; the codes are buffers, no gradient
    (commit,) = torch.autograd.grad(out.loss, z)
    (ref,) = torch.autograd.grad(0.25 * ((codes - flat) ** 2).mean(), z)
    assert torch.allclose(commit, ref, atol=1e-7)
    assert not any(b.requires_grad for b in q.buffers()) and not list(q.parameters())


def test_kmeans_finds_separated_clusters_and_initialises_the_codebook():
    centres = F.normalize(torch.eye(4) + 0.05, dim=1)
    gen = torch.Generator().manual_seed(1)
    samples = F.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(200, 4, generator=gen), dim=1)
    means, bins = kmeans(samples, 4, 10, torch.Generator().manual_seed(0))
    assign = (samples @ means.t()).argmax(1)
    for k in range(4):  # a fixed point: every centre is the normalised mean of its samples
        assert torch.allclose(means[k], F.normalize(samples[assign == k].mean(0), dim=0), atol=1e-5)
    assert sorted(bins.tolist()) == [50.0] * 4
    q = NormEMAQuantizer(4, 4, kmeans_iters=10).train()
    assert q.embedding.initted.item() == 0 and not q.embedding.ready
    q(samples)
    assert q.embedding.initted.item() == 1 and sorted(q.embedding.cluster_size.tolist()) != [0.0] * 4
    assert torch.allclose(q.embedding.weight.norm(dim=1), torch.ones(4), atol=1e-6)
    assert (q.embedding.weight @ centres.t()).max(1).values.min() > 0.99  # one code per cluster


def test_dead_codes_restart_on_the_worst_served_outputs():
    q = _quantizer(k=4, d=3, dead_threshold=0.5, restart_dead=True)
    q.embedding.cluster_size.copy_(torch.tensor([5.0, 0.0, 5.0, 0.0]))  # after the EMA: 1 and 3 dead
    z = torch.randn(8, 3)
    flat = F.normalize(z, dim=-1)
    similarity = (flat @ q.embedding.weight.t()).max(1).values  # to each output's own code
    worst = flat[similarity.argsort()]
    counts = torch.bincount((flat @ q.embedding.weight.t()).argmax(1), minlength=4).float()
    q(z)
    emb = q.embedding
    assert torch.allclose(emb.weight[1], worst[0], atol=1e-6) and torch.allclose(emb.weight[3], worst[1], atol=1e-6)
    assert emb.cluster_size[1].item() == emb.cluster_size[3].item() == 8 / 4  # the average count
    assert torch.allclose(emb.cluster_size[[0, 2]], 0.99 * 5.0 + 0.01 * counts[[0, 2]])  # live codes: the EMA only
    assert q.health()["dead_codes"].item() == 0


def test_usage_counts():
    perplexity, used = usage(torch.tensor([2.0, 2.0, 0.0, 0.0]))
    assert torch.isclose(perplexity, torch.tensor(2.0)) and used.item() == 0.5


def _rank(rank: int, port: int, batches: list[torch.Tensor], folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    q = NormEMAQuantizer(8, 4, kmeans_iters=3).train()
    for b in batches:
        q(b[rank * 16 : (rank + 1) * 16])
    torch.save(q.state_dict(), os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes (each imports torch)
def test_two_ranks_hold_one_codebook_equal_to_one_rank_on_the_union(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    batches = [torch.randn(32, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    mp.start_processes(_rank, args=(port, batches, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = NormEMAQuantizer(8, 4, kmeans_iters=3).train()
    for b in batches:
        single(b)
    for key, value in single.state_dict().items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicas identical
        assert torch.allclose(ranks[0][key], value, atol=1e-5), key  # = one process on the union


def test_kmeans_with_fewer_samples_than_codes():
    samples = F.normalize(torch.randn(3, 4), dim=1)
    means, bins = kmeans(samples, 5, 1, torch.Generator().manual_seed(0))
    assert means.shape == (5, 4) and bins.sum().item() == 3
