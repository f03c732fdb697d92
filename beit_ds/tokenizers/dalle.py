"""DALL-E's discrete VAE (seed §2.1: "we directly use the publicly available image tokenizer"),
re-implemented so that OpenAI's weights load without the ``dall_e`` package.

The architecture and the state-dict names (``blocks.input.w``,
``blocks.group_1.block_1.res_path.conv_1.w``, ``blocks.output.conv.b``, …) follow the published
``dall_e`` encoder and decoder exactly, so their ``state_dict()`` loads here unchanged. The
encoder maps a map_pixels'ed image ``[B, 3, 8h, 8w]`` to logits ``[B, vocab, h, w]``; the
decoder maps one-hot tokens back to ``[B, 2·3, 8h, 8w]`` logit-Laplace parameters. Inference
is faster than the reference (channels-last, in-place activations, fused residual add; see
``bench/tokenizer.py``) while computing the same function.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import TokenizerConfig
from beit_ds.tokenizers.inference import compile_frozen
from beit_ds.tokenizers.openai_pickle import load_weights
from beit_ds.tokenizers.protocol import check_images, check_tokens, unmap_pixels


class Conv2d(nn.Module):
    """A same-padded ``kw × kw`` convolution with DALL-E's parameter names ``w`` and ``b``."""

    def __init__(self, n_in: int, n_out: int, kw: int) -> None:
        super().__init__()
        if kw % 2 != 1:
            raise ValueError(f"Conv2d kernel width must be odd, got {kw}")
        self.kw = kw
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / math.sqrt(n_in * kw**2))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n_in, H, W] -> [B, n_out, H, W]``."""
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class ResBlock(nn.Module):
    """``x -> id_path(x) + post_gain · res_path(x)``, with the DALL-E encoder or decoder kernel
    layout (``kernels`` = widths of conv_1..conv_4: encoder 3,3,3,1; decoder 1,3,3,3)."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        if n_out % 4 != 0:
            raise ValueError(f"ResBlock n_out must be divisible by 4, got {n_out}")
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers**2
        self.id_path = Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers: list[tuple[str, nn.Module]] = []
        for i, kw in enumerate(kernels):
            # In place except on the block input, which the identity path still reads.
            layers.append((f"relu_{i + 1}", nn.ReLU(inplace=i > 0)))
            layers.append((f"conv_{i + 1}", Conv2d(widths[i], widths[i + 1], kw)))
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n_in, H, W] -> [B, n_out, H, W]``. Without autograd, the fast path may
        overwrite ``x`` (inside the encoder / decoder it is always an intermediate)."""
        if torch.is_grad_enabled():
            return torch.add(self.id_path(x), self.res_path(x), alpha=self.post_gain)
        return self._inference(x)

    def _inference(self, x: torch.Tensor) -> torch.Tensor:
        # The same function with fewer full-size tensors (on CPU each is a fresh, page-faulted
        # allocation): ReLU in place once the identity path is computed, post_gain folded into
        # conv_4's small weights, residual added in place into conv_4's output.
        identity = self.id_path(x)
        h = x.relu_() if identity is not x else F.relu(x)
        *inner, last = list(self.res_path.children())[1:]
        for layer in inner:
            h = layer(h)
        g = self.post_gain
        last = cast(Conv2d, last)
        return F.conv2d(h, last.w * g, last.b * g, padding=(last.kw - 1) // 2).add_(identity)


def _group(blocks: Sequence[nn.Module], tail: tuple[str, nn.Module] | None) -> nn.Sequential:
    named = [(f"block_{i + 1}", b) for i, b in enumerate(blocks)]
    return nn.Sequential(OrderedDict(named + ([tail] if tail else [])))


class DalleEncoder(nn.Module):
    """DALL-E's encoder: ``[B, in, S, S] -> logits [B, vocab, S/2^(G-1), S/2^(G-1)]``.

    ``group_count`` G groups of ``n_blk_per_group`` residual blocks with widths
    ``n_hid · 2^g``, a 2× max-pool after all but the last; OpenAI's: G=4, n_hid=256, 2 blocks,
    vocab 8192 (downsampling 8).
    """

    def __init__(
        self,
        group_count: int = 4,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        input_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        self.group_count, self.n_hid, self.n_blk_per_group = group_count, n_hid, n_blk_per_group
        self.input_channels, self.vocab_size = input_channels, vocab_size
        n_layers = group_count * n_blk_per_group
        layers: list[tuple[str, nn.Module]] = [("input", Conv2d(input_channels, n_hid, 7))]
        width = n_hid
        for g in range(group_count):
            out = n_hid * 2**g
            blocks = [
                ResBlock(width if i == 0 else out, out, n_layers, (3, 3, 3, 1))
                for i in range(n_blk_per_group)
            ]
            pool = ("pool", nn.MaxPool2d(kernel_size=2)) if g < group_count - 1 else None
            layers.append((f"group_{g + 1}", _group(blocks, pool)))
            width = out
        head = OrderedDict([("relu", nn.ReLU(inplace=True)), ("conv", Conv2d(width, vocab_size, 1))])
        layers.append(("output", nn.Sequential(head)))
        self.blocks = nn.Sequential(OrderedDict(layers))

    @property
    def downsample(self) -> int:
        return 2 ** (self.group_count - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, S, S]`` (map_pixels'ed) -> logits ``[B, vocab, S/d, S/d]``."""
        return self.blocks(x)


class DalleDecoder(nn.Module):
    """DALL-E's decoder: one-hot tokens ``[B, vocab, h, w] -> [B, 2·out, h·2^(G-1), w·2^(G-1)]``
    (first ``out`` channels: logit-Laplace means; ``decode_tokens`` takes ids directly)."""

    def __init__(
        self,
        group_count: int = 4,
        n_init: int = 128,
        n_hid: int = 256,
        n_blk_per_group: int = 2,
        output_channels: int = 3,
        vocab_size: int = 8192,
    ) -> None:
        super().__init__()
        self.group_count, self.n_init, self.n_hid = group_count, n_init, n_hid
        self.n_blk_per_group, self.output_channels, self.vocab_size = (
            n_blk_per_group,
            output_channels,
            vocab_size,
        )
        n_layers = group_count * n_blk_per_group
        layers: list[tuple[str, nn.Module]] = [("input", Conv2d(vocab_size, n_init, 1))]
        width = n_init
        for g in range(group_count):
            out = n_hid * 2 ** (group_count - 1 - g)
            blocks = [
                ResBlock(width if i == 0 else out, out, n_layers, (1, 3, 3, 3))
                for i in range(n_blk_per_group)
            ]
            up = ("upsample", nn.Upsample(scale_factor=2, mode="nearest")) if g < group_count - 1 else None
            layers.append((f"group_{g + 1}", _group(blocks, up)))
            width = out
        head = OrderedDict([("relu", nn.ReLU(inplace=True)), ("conv", Conv2d(width, 2 * output_channels, 1))])
        layers.append(("output", nn.Sequential(head)))
        self.blocks = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot (or soft) codes ``[B, vocab, h, w] -> [B, 2·out, h·d, w·d]``."""
        return self.blocks(x)

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Ids ``[B, h, w] -> [B, 2·out, h·d, w·d]``; the 1×1 input conv of a one-hot code is a
        column lookup, so no ``[B, vocab, h, w]`` one-hot is built."""
        conv = cast(Conv2d, self.blocks.input)
        x = conv.w[:, :, 0, 0].t()[tokens] + conv.b  # [B, h, w, n_init]
        x = x.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


def _infer_encoder_args(state: dict[str, torch.Tensor]) -> dict[str, int]:
    groups = {k.split(".")[1] for k in state if k.startswith("blocks.group_")}
    blocks = {k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")}
    return {
        "group_count": len(groups),
        "n_hid": state["blocks.input.w"].shape[0],
        "n_blk_per_group": len(blocks),
        "input_channels": state["blocks.input.w"].shape[1],
        "vocab_size": state["blocks.output.conv.w"].shape[0],
    }


def _infer_decoder_args(state: dict[str, torch.Tensor]) -> dict[str, int]:
    groups = sorted({k.split(".")[1] for k in state if k.startswith("blocks.group_")})
    blocks = {k.split(".")[2] for k in state if k.startswith("blocks.group_1.block_")}
    return {
        "group_count": len(groups),
        "n_init": state["blocks.input.w"].shape[0],
        "n_hid": state[f"blocks.{groups[-1]}.block_1.res_path.conv_4.w"].shape[0],
        "n_blk_per_group": len(blocks),
        "output_channels": state["blocks.output.conv.w"].shape[0] // 2,
        "vocab_size": state["blocks.input.w"].shape[1],
    }


# The input convolution tells the two apart: 7×7 on pixels (encoder), 1×1 on codes (decoder).
_INPUT_KERNEL = {DalleEncoder: 7, DalleDecoder: 1}


def _from_state(cls: type, state: dict[str, torch.Tensor], path: str | Path) -> nn.Module:
    """``cls`` with hyper-parameters read off ``state``, loaded strictly, frozen, channels-last."""
    kernel = tuple(state["blocks.input.w"].shape[2:]) if "blocks.input.w" in state else None
    expected = (_INPUT_KERNEL[cls],) * 2
    if kernel != expected:
        raise ValueError(
            f"{path}: blocks.input.w has a {kernel} kernel, a DALL-E {cls.__name__} has {expected}"
        )
    try:
        infer = _infer_encoder_args if cls is DalleEncoder else _infer_decoder_args
        model = cls(**infer(state))
        model.load_state_dict(state, strict=True)
    except (KeyError, IndexError, RuntimeError, ValueError) as err:
        lines = str(err).strip().splitlines()
        detail = lines[1].strip() if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        raise ValueError(f"{path}: weights do not fit a {cls.__name__}: {detail}") from None
    return model.eval().requires_grad_(False).to(memory_format=torch.channels_last)


def load_dalle_encoder(path: str | Path) -> DalleEncoder:
    """OpenAI's ``encoder.pkl`` (a pickled ``dall_e`` module), or a state dict of one (``.pt`` /
    ``.safetensors``), as our ``DalleEncoder``; hyper-parameters are read off the weights."""
    state = load_weights(path, "dall_e.encoder.Encoder", required="blocks.output.conv.w")
    return cast(DalleEncoder, _from_state(DalleEncoder, state, path))


def load_dalle_decoder(path: str | Path) -> DalleDecoder:
    """OpenAI's ``decoder.pkl`` or a state dict of one, as our ``DalleDecoder``."""
    state = load_weights(path, "dall_e.decoder.Decoder", required="blocks.output.conv.w")
    return cast(DalleDecoder, _from_state(DalleDecoder, state, path))


class DalleTokenizer(nn.Module):
    """``VisualTokenizer`` around a ``DalleEncoder`` (and optionally a ``DalleDecoder``).

    Expects map_pixels'ed images (``preprocess = "dalle"``, values in [0.1, 0.9]) of
    ``input_size²`` pixels; the token grid is ``input_size / 8`` for OpenAI's weights (14×14 for
    the seed's 112² view). Frozen (``requires_grad=False``) and in eval mode from construction.
    """

    preprocess = "dalle"

    def __init__(
        self, encoder: DalleEncoder, decoder: DalleDecoder | None = None, input_size: int = 112
    ) -> None:
        super().__init__()
        if input_size % encoder.downsample != 0:
            raise ValueError(
                f"DALL-E tokenizer input_size={input_size}: expected a multiple of {encoder.downsample}"
            )
        if decoder is not None and decoder.vocab_size != encoder.vocab_size:
            raise ValueError(
                f"DALL-E decoder vocabulary {decoder.vocab_size} != encoder vocabulary {encoder.vocab_size}"
            )
        self.encoder, self.decoder, self.input_size = encoder, decoder, input_size
        self.vocab_size, self.in_channels = encoder.vocab_size, encoder.input_channels
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.eval().requires_grad_(False)

    def compile_encoder(self) -> None:
        """Run the encoder through ``torch.compile`` with its weights frozen as constants (conv +
        ReLU fusion, pre-packed weights); compiled on first use, recompiled on a dtype change."""
        # a plain attribute, not a submodule: the state dict keeps OpenAI's key names
        object.__setattr__(self, "_compiled", compile_frozen(self.encoder))

    @property
    def grid_size(self) -> tuple[int, int]:
        n = self.input_size // self.encoder.downsample
        return (n, n)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [0.1, 0.9] -> logits ``[B, vocab, S/8, S/8]`` (fp32)."""
        check_images(images, self.input_size, self.in_channels, self.preprocess, "DALL-E tokenizer", self)
        dtype = cast(Conv2d, self.encoder.blocks.input).w.dtype
        x = images.to(dtype=dtype).contiguous(memory_format=torch.channels_last)
        return (self.encoder if self._compiled is None else self._compiled)(x).float()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, S, S]`` in [0.1, 0.9] -> token ids ``LongTensor[B, S/8, S/8]``."""
        return self.logits(images).argmax(dim=1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> images ``[B, 3, 8h, 8w]`` in [0, 1] (fp32)."""
        if self.decoder is None:
            raise NotImplementedError("DALL-E tokenizer has no decoder: set tokenizer.decoder_path")
        check_tokens(tokens, self.vocab_size, "DALL-E tokenizer decode")
        out = self.decoder.decode_tokens(tokens).float()
        return unmap_pixels(torch.sigmoid(out[:, : self.decoder.output_channels]))


def load_dalle_tokenizer(
    encoder_path: str | Path, decoder_path: str | Path | None = None, input_size: int = 112
) -> DalleTokenizer:
    """A frozen DALL-E tokenizer from OpenAI's ``encoder.pkl`` (+ ``decoder.pkl``) or state dicts."""
    decoder = load_dalle_decoder(decoder_path) if decoder_path is not None else None
    return DalleTokenizer(load_dalle_encoder(encoder_path), decoder, input_size)


def load_tokenizer(path: Path, cfg: TokenizerConfig) -> DalleTokenizer:
    """``tokenizer.name: dalle`` (a ``TokenizerLoader``): the encoder at ``path``, the decoder at
    ``tokenizer.decoder_path`` when set, for ``tokenizer.image_size``² views."""
    tokenizer = load_dalle_tokenizer(path, cfg.decoder_path or None, cfg.image_size)
    if cfg.compile:
        tokenizer.compile_encoder()
    return tokenizer
