"""The VQ-KD visual tokenizer of BEiT v2 (Peng et al. 2022, §2.1, Fig. 2): a ViT encoder turns
the image into patch vectors, a task layer (Linear-Tanh-Linear) maps them to a low-dimensional
code space, the ``NormEMAQuantizer`` replaces each by its nearest l2-normalised code, and a
shallow ViT decoder on the code grid (patch size 1) with its task layer reconstructs the
teacher's feature of every patch; the loss is ``1 − cos(reconstruction, teacher feature)`` per
patch, averaged, plus the quantizer's commitment term (unilm ``beit2/modeling_vqkd.py``).

The encoder and decoder are our ``Beit`` with absolute positions, no relative-position bias, no
LayerScale and the mean-pooling layout (``norm`` is the identity, ``fc_norm`` normalises each
patch token), so state-dict keys are unilm's and its released tokenizers load strictly
(``vqkd_format.py``). Pixels are ``preprocess = "raw"``: [0, 1] views ``[B, 3, S, S]``, mapped to
[-1, 1] as unilm's ``process_type="default"``. ``encode`` gives the ids BEiT v2 pre-trains on.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import ModelConfig, TokenizerConfig, VQKDConfig
from beit_ds.models import Beit
from beit_ds.models.beit import init_module
from beit_ds.models.convert import key_report
from beit_ds.safe_write import replacing
from beit_ds.tokenizers.protocol import check_images, check_tokens
from beit_ds.tokenizers.quantizer import NormEMAQuantizer, usage
from beit_ds.tokenizers.vqkd_format import read_unilm, unilm_config

VQKD_FORMAT = "beit_ds.vqkd/1"
UNILM_SUFFIXES = (".pth", ".pt", ".bin")


def transformer_config(cfg: VQKDConfig, image_size: int, decoder: bool) -> ModelConfig:
    """The encoder (``decoder=False``: ``image_size``² pixels) or the decoder (the code grid,
    patch size 1, ``code_dim`` channels) as a ``Beit`` of unilm's VQ-KD layout."""
    grid = cfg.grid(image_size)
    encoder = ModelConfig(img_size=image_size, patch_size=cfg.patch_size, in_chans=3, embed_dim=cfg.embed_dim,
                          depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True,
                          drop_path_rate=cfg.drop_path_rate, layer_scale_init=0.0, use_abs_pos_emb=True,
                          rel_pos_bias="none", global_pool="avg", num_classes=0,
                          grad_checkpointing=cfg.grad_checkpointing)
    if not decoder:
        return encoder
    return encoder.replace(img_size=grid, patch_size=1, in_chans=cfg.code_dim, embed_dim=cfg.decoder_embed_dim,
                           depth=cfg.decoder_depth, num_heads=cfg.decoder_num_heads)


def task_layer(width: int, out: int) -> nn.Sequential:
    """Linear(width, width) - Tanh - Linear(width, out), weights trunc-normal(0.02), zero biases."""
    layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out))
    for module in layer:
        init_module(module, 0.02, "2abs")
    return layer


def cosine_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over patches of ``1 − cos(reconstruction, target)``, both ``[B, N, C]`` (fp32)."""
    return (1.0 - F.cosine_similarity(reconstruction.float(), target.float(), dim=-1)).mean()


@dataclass
class VQKDOutput:
    """One training forward pass; scalars are 0-d tensors and ``loss = rec_loss + quant_loss``
    carries the graph. ``perplexity`` / ``codes_used``: of this update's assignments (all ranks);
    ``epoch_codes_used``: fraction of the codebook assigned since the epoch began; ``dead_codes``:
    codes under the dead threshold. ``tokens [B, h, w]`` are detached."""

    loss: torch.Tensor
    rec_loss: torch.Tensor
    quant_loss: torch.Tensor
    perplexity: torch.Tensor
    codes_used: torch.Tensor
    epoch_codes_used: torch.Tensor
    dead_codes: torch.Tensor
    tokens: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """The scalars a training loop logs besides the loss (detached)."""
        names = ("rec_loss", "quant_loss", "perplexity", "codes_used", "epoch_codes_used", "dead_codes")
        return {name: getattr(self, name).detach() for name in names}


class VQKD(nn.Module):
    """The VQ-KD tokenizer and a ``VisualTokenizer``: ``encode`` ``[B, 3, S, S]`` [0, 1] pixels ->
    ``LongTensor[B, S/p, S/p]``; ``forward(images, target)`` trains it against teacher features
    ``target [B, N, decoder_out_dim]``; ``decode_features`` maps ids to the teacher's feature
    space (there is no pixel decoder: ``decode`` raises ``NotImplementedError``)."""

    preprocess = "raw"
    in_channels = 3

    def __init__(self, cfg: VQKDConfig, input_size: int) -> None:
        super().__init__()
        self.cfg, self.input_size, self.vocab_size = cfg, input_size, cfg.codebook_size
        self.encoder = Beit(transformer_config(cfg, input_size, decoder=False))
        self.encode_task_layer = task_layer(cfg.embed_dim, cfg.code_dim)
        self.quantize = NormEMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.beta,
                                         cfg.kmeans_iters if cfg.kmeans_init else None, cfg.dead_code_threshold,
                                         cfg.restart_dead_codes)
        self.decoder = Beit(transformer_config(cfg, input_size, decoder=True))
        self.decode_task_layer = task_layer(cfg.decoder_embed_dim, cfg.decoder_out_dim)

    @property
    def grid_size(self) -> tuple[int, int]:
        n = self.input_size // self.cfg.patch_size
        return (n, n)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.set_grad_checkpointing(enable)

    @staticmethod
    def patch_tokens(backbone: Beit, x: torch.Tensor) -> torch.Tensor:
        """``fc_norm`` of the patch tokens after the last block: ``[B, N, D]``."""
        assert backbone.fc_norm is not None, "built with global_pool='avg'"
        return backbone.fc_norm(backbone.forward_features(x)[:, 1:])

    def code_vectors(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``[B, 3, S, S]`` -> encoder outputs in code space ``[B, N, code_dim]``."""
        return self.encode_task_layer(self.patch_tokens(self.encoder, images * 2.0 - 1.0))

    def reconstruct(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors ``[B, N, code_dim]`` -> teacher-space features ``[B, N, decoder_out_dim]``."""
        b, n, d = codes.shape
        side = math.isqrt(n)
        grid = codes.transpose(1, 2).reshape(b, d, side, side)
        return self.decode_task_layer(self.patch_tokens(self.decoder, grid))

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> VQKDOutput:
        """Training pass on [0, 1] images ``[B, 3, S, S]`` against teacher features ``target [B, N, C]``."""
        check_images(images, self.input_size, 3, self.preprocess, "VQ-KD", self)
        q = self.quantize(self.code_vectors(images))
        reconstruction = self.reconstruct(q.quantized)
        if reconstruction.shape != target.shape:
            raise ValueError(f"VQ-KD: teacher features {list(target.shape)}, the decoder gives"
                             f" {list(reconstruction.shape)} (tokenizer.vqkd.decoder_out_dim and the code grid)")
        rec_loss = cosine_loss(reconstruction, target)
        perplexity, used = usage(q.counts)
        health = self.quantize.health()
        tokens = q.indices.detach().view(-1, *self.grid_size)
        return VQKDOutput(rec_loss + q.loss, rec_loss, q.loss, perplexity, used, health["epoch_codes_used"],
                          health["dead_codes"], tokens)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``[B, 3, S, S]`` -> token ids ``LongTensor[B, S/p, S/p]``."""
        check_images(images, self.input_size, 3, self.preprocess, "VQ-KD tokenizer", self)
        weight = next(self.encode_task_layer.parameters())
        codes = self.code_vectors(images.to(weight.device, weight.dtype))
        return self.quantize.lookup(codes).view(-1, *self.grid_size)

    @torch.no_grad()
    def decode_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, h, w]`` -> the decoder's teacher-space features ``[B, h·w, decoder_out_dim]``."""
        check_tokens(tokens, self.vocab_size, "VQ-KD decode_features")
        codes = self.quantize.embedding.weight[tokens.flatten(1)]
        return self.reconstruct(codes.to(next(self.decode_task_layer.parameters()).dtype))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("VQ-KD reconstructs teacher features, not pixels: it has no image decoder")


def save_vqkd(model: VQKD, path: str | Path) -> None:
    """``model``'s weights and EMA codebook with its ``VQKDConfig`` and view size, as ``.safetensors``
    (written beside ``path`` and renamed into place)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": VQKD_FORMAT, "vqkd_config": json.dumps(dataclasses.asdict(model.cfg)),
            "image_size": str(model.input_size)}
    with replacing(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def _read_ours(path: Path) -> tuple[VQKDConfig, int, dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a safetensors file ({err}); expected a VQ-KD saved by save_vqkd") from None
    if meta.get("format") != VQKD_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {VQKD_FORMAT!r} (a file from save_vqkd)")
    return VQKDConfig(**json.loads(meta["vqkd_config"])), int(meta["image_size"]), state


def load_vqkd(path: str | Path, input_size: int | None = None) -> VQKD:
    """A frozen, eval-mode ``VQKD`` from a ``save_vqkd`` file or unilm's released ``.pth``
    (``vqkd_format``), loaded strictly, encoding ``input_size``² views (default: the trained size;
    another multiple of the patch size resizes the absolute positions at run time).
    Missing file: ``FileNotFoundError``; any other problem: one-line ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a VQ-KD .safetensors or unilm's .pth)")
    if path.suffix in UNILM_SUFFIXES:
        state = read_unilm(path)
        cfg, size = unilm_config(state, str(path))
    else:
        cfg, size, state = _read_ours(path)
    model = VQKD(cfg, size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit its VQ-KD architecture: {key_report(missing, unexpected)}")
    if input_size is not None:
        cfg.grid(input_size)
        model.input_size = input_size
    return model.eval().requires_grad_(False)


def load_tokenizer(path: Path, cfg: TokenizerConfig) -> VQKD:
    """``tokenizer.name: vqkd`` (a ``TokenizerLoader``): the VQ-KD of ``path`` for
    ``tokenizer.image_size``² views (its architecture is the file's, not ``tokenizer.vqkd``);
    ``tokenizer.compile`` compiles the encoder's blocks."""
    tokenizer = load_vqkd(path, cfg.image_size)
    if cfg.compile:
        tokenizer.encoder.compile_blocks()
    return tokenizer
