"""The relative position bias handed to SDPA: shape ``[1, heads, T, T]`` (broadcast over the batch),
the query's dtype, and a key dimension whose stride is a multiple of 8 (keys padded in storage) —
what SDPA's memory-efficient kernel checks under ``torch.compile`` — with the outputs and gradients
of the earlier unpadded bias. ``model.compile: blocks`` gives eager's numbers and state-dict keys."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from beit_ds.config import ModelConfig
from beit_ds.models import attention, build_model
from tests.models.conftest import randomise

TINY = {"embed_dim": 32, "num_heads": 2, "depth": 2, "drop_path_rate": 0.0}
AT_224 = ModelConfig(img_size=224, patch_size=16, rel_pos_bias="per_layer", **TINY)  # T = 197
DEMO = ModelConfig(img_size=32, patch_size=4, rel_pos_bias="shared", **TINY)  # the 8x8 grid: T = 65


def _previous_gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The bias as it was built before the keys were padded: a contiguous ``[heads, T, T]``."""
    t = index.shape[0]
    return table[index.view(-1)].view(t, t, -1).permute(2, 0, 1).contiguous()


@contextmanager
def _sdpa_calls(monkeypatch: pytest.MonkeyPatch, previous: bool = False) -> Iterator[list[torch.Tensor]]:
    """Every call goes through SDPA (on CPU a bias that needs a gradient otherwise takes the eager
    path) and the biases it is given are collected; ``previous``: with the unpadded bias."""
    seen: list[torch.Tensor] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask)

    with monkeypatch.context() as patch:
        patch.setattr(attention, "_sdpa_falls_back", lambda q, bias: False)
        patch.setattr(attention.F, "scaled_dot_product_attention", recording)
        if previous:
            patch.setattr(attention, "gather_bias", _previous_gather)
            patch.setattr(attention, "key_aligned", lambda bias, dtype=None: bias.to(dtype))
        yield seen


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.forward_features(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a: tuple, b: tuple) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("cfg", "size", "tokens"),
    [(AT_224, (224, 224), 197), (DEMO, (32, 32), 65), (DEMO.replace(rel_pos_bias="per_layer"), (24, 40), 61)],
    ids=["224_per_layer", "demo_shared", "runtime_grid_per_layer"],
)
def test_sdpa_bias_is_key_aligned_and_changes_no_number(monkeypatch, cfg, size, tokens):
    model = randomise(build_model(cfg)).train()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with _sdpa_calls(monkeypatch) as seen:
        ours = _loss_and_grads(model, x)
    with _sdpa_calls(monkeypatch, previous=True) as before:
        previous = _loss_and_grads(model, x)
    assert len(seen) == len(before) == cfg.depth
    for bias, old in zip(seen, before):
        assert bias.shape == (1, cfg.num_heads, tokens, tokens) and bias.dtype == torch.float32
        assert bias.stride(-1) == 1 and bias.stride(-2) % 8 == 0 and bias.stride(1) % 8 == 0
        assert old.stride(-2) == tokens  # the unpadded layout of before (197, 65, 61: not aligned)
        assert torch.equal(bias, old)
    _assert_same(ours, previous)  # the tables' gradients included
    assert any(name.endswith("relative_position_bias_table") for name in ours[1])


def test_autocast_bias_is_key_aligned_in_the_query_dtype(monkeypatch):
    model = randomise(build_model(DEMO.replace(depth=1)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _sdpa_calls(monkeypatch) as seen:
        model.forward_features(torch.randn(1, 3, 32, 32))
    (bias,) = seen
    assert bias.dtype == torch.bfloat16 and bias.shape == (1, 2, 65, 65) and bias.stride(-2) == 72
    torch.testing.assert_close(bias[0], model.rel_pos_bias().to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.slow  # inductor compiles a block's forward and backward: 15-30 s each on a busy 2-core CPU
@pytest.mark.parametrize(("cfg", "size"), [(AT_224, 224), (DEMO, 32)], ids=["224_per_layer", "demo_shared"])
def test_compiled_blocks_give_eager_numbers_and_keys(cfg, size):
    """Each block compiled as one region (one compile shared by the blocks), forward + backward
    with and without activation checkpointing, against the eager model."""
    torch.compiler.reset()  # a static compile for this model, whichever test compiled before
    eager = randomise(build_model(cfg)).train()
    compiled = build_model(cfg.replace(compile="blocks")).train()
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = _loss_and_grads(eager, x)
    for checkpointing in (False, True):
        compiled.set_grad_checkpointing(checkpointing)
        _assert_same(_loss_and_grads(compiled, x), reference)
    assert not any("_orig_mod" in name for name in compiled.state_dict())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["branches", "blocks"])
def test_compiled_attention_at_197_tokens_trains_on_cuda(mode):
    """The trap itself: under Inductor, SDPA's memory-efficient kernel gets the bias as it is given
    (T = 197 keys, bf16 autocast); forward + backward run and match eager."""
    torch.compiler.reset()
    eager = randomise(build_model(AT_224)).cuda().train()
    compiled = build_model(AT_224.replace(compile=mode)).cuda().train()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours, reference = _loss_and_grads(compiled, x), _loss_and_grads(eager, x)
    torch.testing.assert_close(ours[0], reference[0], rtol=2e-2, atol=1e-3)
    assert ours[1].keys() == reference[1].keys()
    for name, grad in reference[1].items():  # bf16 rounding: each gradient's direction (on CPU ≥ 0.9995)
        assert float(torch.cosine_similarity(ours[1][name].flatten(), grad.flatten(), dim=0)) > 0.99, name
