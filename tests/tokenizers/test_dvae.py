"""Our trainable dVAE (seed App. C): shapes, determinism, save/load, schedules, input checks, and
that training on real photographs lowers the reconstruction loss while the codebook stays used."""

from __future__ import annotations

import math

import pytest
import torch

from beit_ds.config import ConfigError, DVAEConfig
from beit_ds.tokenizers import (
    DiscreteVAE,
    VisualTokenizer,
    code_usage,
    dvae_schedule,
    load_dvae,
    save_dvae,
)

SMALL = DVAEConfig(codebook_size=64, codebook_dim=32, hidden_dim=32, num_res_blocks=1, downsample=4)


def small_dvae(**overrides) -> DiscreteVAE:
    torch.manual_seed(0)
    cfg = DVAEConfig(**{**SMALL.__dict__, **overrides})
    return DiscreteVAE(cfg, input_size=32)


def test_forward_shapes_metrics_and_gradients(photos) -> None:
    model = small_dvae()
    images = photos(4, 32)
    gen = torch.Generator().manual_seed(0)
    out = model(images, temperature=1.0, kl_weight=0.5, diversity_weight=0.2, generator=gen)
    assert out.tokens.shape == (4, 8, 8) and out.reconstruction.shape == (4, 3, 32, 32)
    metrics = out.metrics()
    assert set(metrics) == {"loss", "recon_loss", "kl", "diversity", "perplexity", "usage"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in metrics.values())
    expected = out.recon_loss + 0.5 * out.kl + 0.2 * out.diversity
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0.0 <= out.kl.item() <= math.log(64) and 0.0 <= out.diversity.item() <= 1.0
    assert 1.0 <= out.perplexity.item() <= 64 and 0.0 < out.usage.item() <= 1.0
    out.loss.backward()
    for part in (model.encoder, model.codebook, model.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_gumbel_noise_comes_from_the_generator(photos) -> None:
    model = small_dvae()
    images = photos(2, 32)
    losses = [model(images, 0.5, 0.0, 0.0, torch.Generator().manual_seed(s)).loss.item() for s in (7, 7, 8)]
    assert losses[0] == losses[1] != losses[2]


def test_code_usage_counts() -> None:
    perplexity, usage = code_usage(torch.tensor([[0, 1], [2, 3]]), vocab_size=8)
    assert perplexity.item() == pytest.approx(4.0) and usage.item() == 0.5
    perplexity, usage = code_usage(torch.zeros(10, dtype=torch.long), vocab_size=8)
    assert perplexity.item() == pytest.approx(1.0) and usage.item() == 0.125


def test_tokens_are_deterministic_and_per_image(photos) -> None:
    model = small_dvae().eval()
    images = photos(4, 32)
    tokens = model.encode(images)
    assert tokens.dtype == torch.int64 and tokens.shape == (4, 8, 8)
    assert torch.equal(tokens, model.encode(images.clone()))
    assert torch.equal(tokens[1:2], model.encode(images[1:2]))  # independent of the batch
    decoded = model.decode(tokens)
    assert decoded.shape == (4, 3, 32, 32) and 0.0 <= decoded.min() and decoded.max() <= 1.0


def test_protocol_and_metadata() -> None:
    model = small_dvae()
    assert isinstance(model, VisualTokenizer)
    assert (model.vocab_size, model.input_size, model.in_channels, model.preprocess) == (64, 32, 3, "raw")
    assert model.grid_size == (8, 8)
    assert DiscreteVAE(DVAEConfig(), input_size=112).grid_size == (14, 14)  # the seed's 8x default


def test_save_load_round_trip(photos, tmp_path) -> None:
    model = small_dvae(codebook_size=96).eval()
    images = photos(3, 32)
    path = tmp_path / "dvae.safetensors"
    save_dvae(model, path)
    loaded = load_dvae(path, input_size=32)
    assert loaded.cfg == model.cfg and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images)), model.decode(model.encode(images)))
    fresh = small_dvae(codebook_size=96)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.encode(images), model.encode(images))
    assert load_dvae(path, input_size=64).encode(photos(1, 64)).shape == (1, 16, 16)


def test_channels_last_and_compiled_encode_match_the_nchw_logits(photos) -> None:
    """The shipped demo dVAE: channels-last (the default) and compiled encoders give the NCHW
    encoder's logits to float rounding, and its tokens on photographs."""
    from beit_ds.assets import resolve

    tokenizer = load_dvae(resolve("package:demo_dvae.safetensors"), input_size=32)
    assert tokenizer.encoder.layers[0].weight.is_contiguous(memory_format=torch.channels_last)
    images = photos(4, 32)
    nchw = DiscreteVAE(tokenizer.cfg, 32)
    nchw.load_state_dict({k: v.contiguous() for k, v in tokenizer.state_dict().items()})
    with torch.no_grad():
        reference = nchw.encoder(images.contiguous())
    tokens = tokenizer.encode(images)
    assert torch.equal(tokens, reference.argmax(1))
    tokenizer.compile_encoder()
    assert set(tokenizer.state_dict()) == set(nchw.state_dict())
    assert torch.equal(tokenizer.encode(images), tokens)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing.safetensors: no such file"):
        load_dvae(tmp_path / "missing.safetensors", 32)
    pickled = tmp_path / "model.pt"
    torch.save(small_dvae().state_dict(), pickled)
    with pytest.raises(
        ValueError, match=r"model.pt: not a safetensors file .*expected a dVAE saved by save_dvae"
    ):
        load_dvae(pickled, 32)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match=r"format None, expected 'beit_ds.dvae/1'"):
        load_dvae(foreign, 32)
    save_dvae(small_dvae(), tmp_path / "ok.safetensors")
    with pytest.raises(ValueError, match=r"input_size=30: expected a multiple of downsample=4"):
        load_dvae(tmp_path / "ok.safetensors", 30)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.rand(2, 3, 64, 64), r"dVAE: expected images \[B, 3, 32, 32\], got \[2, 3, 64, 64\]"),
        (torch.rand(2, 4, 32, 32), r"expected images \[B, 3, 32, 32\], got \[2, 4, 32, 32\]"),
        (torch.rand(2, 3, 32, 32) * 255, r"expected values in \[0, 1\] \(\[0, 1\] pixels\), got min"),
        (torch.randn(2, 3, 32, 32), r"expected values in \[0, 1\]"),
    ],
)
def test_bad_images_are_rejected(images, message) -> None:
    model = small_dvae()
    with pytest.raises(ValueError, match=message):
        model(images, 1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=message.replace("dVAE:", "dVAE tokenizer:")):
        model.encode(images)


def test_schedules_are_pure_functions_of_the_step() -> None:
    cfg = DVAEConfig(temperature_start=1.0, temperature_end=1 / 16, temperature_steps=100)
    cfg.kl_weight, cfg.diversity_weight, cfg.prior_warmup_steps = 2.0, 0.4, 10
    temps = [dvae_schedule(s, cfg)["temperature"] for s in range(0, 121, 10)]
    assert temps[0] == 1.0 and temps[10] == pytest.approx(1 / 16) and temps[12] == pytest.approx(1 / 16)
    assert all(a >= b for a, b in zip(temps, temps[1:]))
    assert temps[5] == pytest.approx((1 + 1 / 16) / 2)
    kls = [dvae_schedule(s, cfg)["kl_weight"] for s in range(12)]
    assert kls[0] == 0.0 and kls[5] == pytest.approx(1.0) and kls[10] == kls[11] == 2.0
    assert dvae_schedule(5, cfg)["diversity_weight"] == pytest.approx(0.2)
    assert dvae_schedule(7, cfg) == dvae_schedule(7, cfg)
    no_warmup = DVAEConfig(kl_weight=3.0, prior_warmup_steps=0)
    assert dvae_schedule(0, no_warmup)["kl_weight"] == 3.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"downsample": 6}, r"tokenizer.dvae.downsample=6: expected a power of two"),
        ({"codebook_size": 1}, r"tokenizer.dvae.codebook_size=1: expected an integer >= 2"),
        ({"temperature_end": 0.0}, r"tokenizer.dvae.temperature_end=0.0: expected a positive number"),
        ({"kl_weight": -1.0}, r"tokenizer.dvae.kl_weight=-1.0: expected a number >= 0"),
        ({"num_res_blocks": -1}, r"tokenizer.dvae.num_res_blocks=-1: expected an integer >= 0"),
        ({"prior_warmup_steps": 1.5}, r"tokenizer.dvae.prior_warmup_steps=1.5: expected an integer >= 0"),
    ],
)
def test_config_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DVAEConfig(**overrides)


def _train(model: DiscreteVAE, photo_crops, steps: int, seed: int) -> list[float]:
    """Adam on fresh random crops each step, with the config's schedules; returns the
    reconstruction losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg, losses = model.cfg, []
    for step in range(steps):
        images = photo_crops(16, 32, seed * 1000 + step)
        out = model(images, **dvae_schedule(step, cfg), generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.recon_loss.item())
    return losses


def _hard_mse_and_usage(model: DiscreteVAE, images: torch.Tensor) -> tuple[float, float]:
    model.eval()
    tokens = model.encode(images)
    mse = torch.nn.functional.mse_loss(model.decode(tokens), images).item()
    return mse, code_usage(tokens, model.vocab_size)[1].item()


SCHEDULE = {"temperature_steps": 50, "temperature_end": 0.25, "prior_warmup_steps": 10}


def test_training_on_photos_lowers_reconstruction_loss(photo_crops) -> None:
    model = small_dvae(**SCHEDULE)
    losses = _train(model, photo_crops, steps=50, seed=1)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    images = photo_crops(64, 32, 999)
    mean_mse = torch.nn.functional.mse_loss(images.mean(0, keepdim=True).expand_as(images), images).item()
    recon_mse, usage = _hard_mse_and_usage(model, images)
    assert recon_mse < 0.75 * mean_mse, (recon_mse, mean_mse)
    assert usage > 0.3, usage


def test_usage_terms_prevent_codebook_collapse(photo_crops) -> None:
    """Without the KL and usage terms the same run ends up using a handful of codes."""
    model = small_dvae(**SCHEDULE, kl_weight=0.0, diversity_weight=0.0)
    _train(model, photo_crops, steps=50, seed=1)
    _, usage = _hard_mse_and_usage(model, photo_crops(64, 32, 999))
    assert usage < 0.15, usage


def test_range_check_runs_on_the_first_batch_only(monkeypatch) -> None:
    """No host sync per batch (issue 13 §3): after one batch passed the value check, encode checks
    shapes only; ``BEIT_DS_CHECK_EVERY_BATCH=1`` range-checks every batch again."""
    model = small_dvae()
    bad = torch.rand(2, 3, 32, 32) * 255
    with pytest.raises(ValueError, match="expected values in"):
        model.encode(bad)  # a bad first batch still fails, and leaves the check armed
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8)
    assert model.encode(bad).shape == (2, 8, 8)  # not range-checked again
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 32, 32\]"):
        model.encode(torch.rand(2, 3, 64, 64))  # shapes are still checked every batch
    monkeypatch.setenv("BEIT_DS_CHECK_EVERY_BATCH", "1")
    with pytest.raises(ValueError, match="expected values in"):
        model.encode(bad)


def test_saving_replaces_a_planted_link_not_its_target(tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "tokenizer.safetensors").symlink_to(victim)
    save_dvae(small_dvae(), tmp_path / "tokenizer.safetensors")
    assert victim.read_text() == "precious"
    assert load_dvae(tmp_path / "tokenizer.safetensors", 32).cfg == small_dvae().cfg
