"""Our trainable discrete VAE (seed App. C: "we re-train the image tokenizer"), following the
DALL-E dVAE recipe: a conv encoder predicts logits over a codebook for each cell of a grid
downsampled ``downsample``×; training relaxes the discrete choice with Gumbel-softmax at an
annealed temperature, adds a KL term to the uniform prior whose weight is warmed up, and a
codebook-usage term against collapse; at inference a cell's token is the argmax code.

``model(images, **dvae_schedule(step, cfg))`` returns a ``DVAEOutput`` (loss + metrics) so a
generic training loop can drive it; the schedule is a pure function of the step. Pixels are
``preprocess = "raw"``: [0, 1] images ``[B, C, S, S]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import DVAEConfig, TokenizerConfig
from beit_ds.safe_write import replacing
from beit_ds.schedules import cosine
from beit_ds.tokenizers.inference import compile_frozen
from beit_ds.tokenizers.protocol import check_images, check_tokens
from beit_ds.tokenizers.quantizer import usage


class ResBlock(nn.Module):
    """``x + conv1×1(relu(conv3×3(relu(x))))`` at constant width ``[B, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _stages(cfg: DVAEConfig) -> int:
    return int(math.log2(cfg.downsample))


class DVAEEncoder(nn.Module):
    """``[B, C, S, S]`` in [0, 1] -> code logits ``[B, K, S/d, S/d]``: stride-2 4×4 convs, then
    residual blocks, then a 1×1 projection to the ``codebook_size`` K logits."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        hid = cfg.hidden_dim
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, hid, 3, padding=1)]
        for _ in range(_stages(cfg)):
            layers += [nn.ReLU(), nn.Conv2d(hid, hid, 4, stride=2, padding=1)]
        layers += [ResBlock(hid) for _ in range(cfg.num_res_blocks)]
        layers += [nn.ReLU(), nn.Conv2d(hid, cfg.codebook_size, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(2.0 * x - 1.0)


class DVAEDecoder(nn.Module):
    """Code vectors ``[B, D, h, w]`` -> pixels ``[B, C, h·d, w·d]`` (unclamped, ~[0, 1])."""

    def __init__(self, cfg: DVAEConfig) -> None:
        super().__init__()
        hid = cfg.hidden_dim
        layers: list[nn.Module] = [nn.Conv2d(cfg.codebook_dim, hid, 1)]
        layers += [ResBlock(hid) for _ in range(cfg.num_res_blocks)]
        for _ in range(_stages(cfg)):
            layers += [nn.ReLU(), nn.ConvTranspose2d(hid, hid, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(hid, cfg.in_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z) * 0.5 + 0.5


@dataclass
class DVAEOutput:
    """One training forward pass. Scalars are 0-d tensors; ``loss`` carries the graph.

    ``loss = recon_loss + kl_weight · kl + diversity_weight · diversity``; ``recon_loss`` is the
    MSE of the relaxed reconstruction in [0, 1] pixel units, ``kl`` KL(q ‖ uniform) per cell in
    nats, ``diversity`` the codebook-usage term of ``prior_terms`` (in [0, 1], lower = better).
    ``perplexity`` / ``usage``: of the batch's argmax tokens (``usage`` = fraction of the codebook
    used at least once). ``tokens`` ``[B, h, w]`` and ``reconstruction`` ``[B, C, S, S]`` are
    detached.
    """

    loss: torch.Tensor
    recon_loss: torch.Tensor
    kl: torch.Tensor
    diversity: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor
    tokens: torch.Tensor
    reconstruction: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """The scalars a training loop logs (detached)."""
        names = ("loss", "recon_loss", "kl", "diversity", "perplexity", "usage")
        return {name: getattr(self, name).detach() for name in names}


def code_usage(tokens: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(perplexity, fraction of codes used) of the token histogram of ``tokens`` (any shape)."""
    return usage(torch.bincount(tokens.flatten(), minlength=vocab_size))


def gumbel_softmax(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Relaxed one-hot samples over dim 1 of ``logits`` ``[B, K, h, w]`` (same shape), with noise
    from ``generator`` (the global generator when None)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    return F.softmax((logits + gumbel) / temperature, dim=1)


def prior_terms(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(q ‖ uniform) per cell in nats, codebook-usage term) of code logits ``[B, K, h, w]``.

    The usage term is ``1 - H(mean q) / log K`` in [0, 1]: 0 when the batch's average code
    distribution is uniform over the codebook, 1 when every cell picks the same code. It and the
    KL term are warmed up from 0 (``dvae_schedule``): applied from step 0, both reward uniform
    per-cell distributions before the code carries information, and training collapsed to the
    mean image in our runs; without the usage term the codebook collapses to a few codes
    (``bench/dvae_demo.py``).
    """
    log_k = math.log(logits.shape[1])
    log_q = F.log_softmax(logits, dim=1)
    q = log_q.exp()
    kl = (q * log_q).sum(1).mean() + log_k
    mean_q = q.mean(dim=(0, 2, 3))
    marginal_entropy = -(mean_q * torch.log(mean_q.clamp_min(1e-12))).sum()
    return kl, 1.0 - marginal_entropy / log_k


class DiscreteVAE(nn.Module):
    """The dVAE and a ``VisualTokenizer``: ``encode`` ``[B, C, S, S]`` [0, 1] pixels ->
    ``LongTensor[B, S/d, S/d]``, ``decode`` back to [0, 1] pixels; ``S = input_size``."""

    preprocess = "raw"

    def __init__(self, cfg: DVAEConfig, input_size: int) -> None:
        super().__init__()
        if input_size % cfg.downsample != 0:
            raise ValueError(
                f"dVAE input_size={input_size}: expected a multiple of downsample={cfg.downsample}"
            )
        self.cfg, self.input_size = cfg, input_size
        self.vocab_size, self.in_channels = cfg.codebook_size, cfg.in_channels
        self.encoder = DVAEEncoder(cfg)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.codebook_dim)
        self.decoder = DVAEDecoder(cfg)
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None

    def compile_encoder(self) -> None:
        """Encode through ``torch.compile`` with the weights frozen (``tokenizer.compile``;
        inference only: ``forward``, the training pass, stays eager)."""
        object.__setattr__(self, "_compiled", compile_frozen(self.encoder))  # not a submodule

    @property
    def grid_size(self) -> tuple[int, int]:
        n = self.input_size // self.cfg.downsample
        return (n, n)

    def forward(
        self,
        images: torch.Tensor,
        temperature: float,
        kl_weight: float,
        diversity_weight: float,
        generator: torch.Generator | None = None,
    ) -> DVAEOutput:
        """Training pass on [0, 1] images ``[B, C, S, S]`` at Gumbel ``temperature``; the three
        floats come from ``dvae_schedule(step, cfg)``, the noise from ``generator``."""
        check_images(images, self.input_size, self.in_channels, self.preprocess, "dVAE")
        logits = self.encoder(images).float()  # [B, K, h, w]
        soft = gumbel_softmax(logits, temperature, generator)
        z = torch.einsum("bkhw,kd->bdhw", soft.to(self.codebook.weight.dtype), self.codebook.weight)
        recon = self.decoder(z)
        recon_loss = F.mse_loss(recon.float(), images.float())
        kl, diversity = prior_terms(logits)
        loss = recon_loss + kl_weight * kl + diversity_weight * diversity
        tokens = logits.detach().argmax(dim=1)
        perplexity, usage = code_usage(tokens, self.vocab_size)
        return DVAEOutput(loss, recon_loss, kl, diversity, perplexity, usage, tokens, recon.detach())

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``[B, C, S, S]`` -> token ids ``LongTensor[B, S/d, S/d]``.

        The convolutions run channels-last (as the DALL-E encoder's): on the 2-core CPU the demo
        dVAE encodes 1.6x as many images per second as in NCHW (``bench/small_pretrain.py``)."""
        check_images(images, self.input_size, self.in_channels, self.preprocess, "dVAE tokenizer", self)
        x = images.to(self.codebook.weight.dtype).contiguous(memory_format=torch.channels_last)
        return (self.encoder if self._compiled is None else self._compiled)(x).argmax(dim=1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> [0, 1] images ``[B, C, h·d, w·d]`` (fp32)."""
        check_tokens(tokens, self.vocab_size, "dVAE tokenizer decode")
        z = self.codebook(tokens).permute(0, 3, 1, 2)  # [B, D, h, w]
        return self.decoder(z).float().clamp(0.0, 1.0)


def dvae_schedule(step: int, cfg: DVAEConfig) -> dict[str, float]:
    """``temperature``, ``kl_weight`` and ``diversity_weight`` at optimizer ``step`` (a pure
    function; pass as ``model(images, **dvae_schedule(step, cfg))``): the Gumbel temperature
    follows a cosine from ``temperature_start`` to ``temperature_end`` over
    ``temperature_steps``; both prior weights rise on a cosine from 0 to their configured value
    over ``prior_warmup_steps``; all stay constant afterwards."""
    ramp = 1.0 if step >= cfg.prior_warmup_steps else cosine(step, cfg.prior_warmup_steps, 0.0, 1.0)
    return {
        "temperature": cosine(step, cfg.temperature_steps, cfg.temperature_start, cfg.temperature_end),
        "kl_weight": ramp * cfg.kl_weight,
        "diversity_weight": ramp * cfg.diversity_weight,
    }


DVAE_FORMAT = "beit_ds.dvae/1"


def save_dvae(model: DiscreteVAE, path: str | Path) -> None:
    """Write ``model``'s weights and its ``DVAEConfig`` to a ``.safetensors`` file (written beside
    it and renamed into place: a link at ``path`` is replaced, never written through)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": DVAE_FORMAT, "dvae_config": json.dumps(dataclasses.asdict(model.cfg))}
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def load_dvae(path: str | Path, input_size: int) -> DiscreteVAE:
    """A frozen, eval-mode ``DiscreteVAE`` for ``input_size``² views from a ``save_dvae`` file.

    Missing file: ``FileNotFoundError``; any other kind of file: one-line ``ValueError``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected a dVAE .safetensors file written by save_dvae)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: not a safetensors file ({err}); expected a dVAE saved by save_dvae"
        ) from None
    if meta.get("format") != DVAE_FORMAT:
        raise ValueError(
            f"{path}: format {meta.get('format')!r}, expected {DVAE_FORMAT!r} (a file from save_dvae)"
        )
    model = DiscreteVAE(DVAEConfig(**json.loads(meta["dvae_config"])), input_size)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise ValueError(f"{path}: weights do not fit its dvae_config: {detail}") from None
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def load_tokenizer(path: Path, cfg: TokenizerConfig) -> DiscreteVAE:
    """``tokenizer.name: dvae`` (a ``TokenizerLoader``): the ``save_dvae`` file at ``path`` for
    ``tokenizer.image_size``² views (its architecture is the file's, not ``tokenizer.dvae``)."""
    tokenizer = load_dvae(path, cfg.image_size)
    if cfg.compile:
        tokenizer.compile_encoder()
    return tokenizer
