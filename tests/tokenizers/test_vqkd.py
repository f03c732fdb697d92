"""The VQ-KD tokenizer (BEiT v2 §2.1): its cosine loss, a training pass against its pieces, the
file round trip through ``tokenizer.name=vqkd``, and the strict import of a checkpoint built in
unilm's key layout (``beit2/modeling_vqkd.py``: encoder / decoder ``VisionTransformer`` of
``modeling_finetune.py`` with absolute positions, q/v biases, no LayerScale, ``fc_norm``;
``NormEMAVectorQuantizer``), whose teacher / scaling / loss keys are dropped."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from beit_ds.config import TokenizerConfig, VQKDConfig
from beit_ds.config.tokenizer import vqkd_vocab
from beit_ds.tokenizers import build_tokenizer
from beit_ds.tokenizers.vqkd import VQKD, cosine_loss, load_vqkd, save_vqkd

TINY = VQKDConfig(patch_size=4, embed_dim=32, depth=2, num_heads=2, decoder_depth=1, decoder_embed_dim=32,
                  decoder_num_heads=2, decoder_out_dim=24, codebook_size=16, code_dim=8, kmeans_init=False)


def test_cosine_loss_is_one_minus_cosine_per_patch():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]]])
    b = torch.tensor([[[5.0, 0.0], [1.0, 0.0], [-1.0, 0.0]]])
    assert torch.isclose(cosine_loss(a, b), torch.tensor((0.0 + 1.0 + 2.0) / 3))


def test_training_pass_is_cosine_loss_plus_commitment():
    model = VQKD(TINY, 32).eval()  # eval: no EMA update, the pieces can be recomputed
    x, target = torch.rand(2, 3, 32, 32), torch.randn(2, 64, 24)
    out = model(x, target)
    z = model.code_vectors(x)
    index = model.quantize.lookup(z)
    codes = model.quantize.embedding.weight[index]
    expected_rec = (1 - F.cosine_similarity(model.reconstruct(codes), target, dim=-1)).mean()
    assert torch.allclose(out.rec_loss, expected_rec, atol=1e-6)
    assert torch.allclose(out.quant_loss, F.mse_loss(codes, F.normalize(z, dim=-1)), atol=1e-7)
    assert torch.allclose(out.loss, out.rec_loss + out.quant_loss)
    assert torch.equal(out.tokens, index.view(2, 8, 8)) and torch.equal(model.encode(x), out.tokens)
    with pytest.raises(ValueError, match=r"teacher features \[2, 64, 12\], the decoder gives \[2, 64, 24\]"):
        model(x, target[..., :12])
    with pytest.raises(NotImplementedError, match="no image decoder"):
        model.decode(out.tokens)
    assert model.decode_features(out.tokens).shape == (2, 64, 24)


def test_file_round_trip_as_a_pretraining_tokenizer(tmp_path):
    model = VQKD(TINY, 32).train()
    model(torch.rand(4, 3, 32, 32), torch.randn(4, 64, 24))  # move the EMA state off its init
    path = tmp_path / "vqkd.safetensors"
    save_vqkd(model, path)
    assert vqkd_vocab(str(path)) == 16
    tok = build_tokenizer(TokenizerConfig(name="vqkd", path=str(path), image_size=32))
    assert tok.preprocess == "raw" and tok.vocab_size == 16 and tok.grid_size == (8, 8)
    for key, value in model.state_dict().items():
        assert torch.equal(tok.state_dict()[key], value), key
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(tok.encode(x), model.eval().encode(x))
    assert load_vqkd(path, 48).encode(torch.rand(1, 3, 48, 48)).shape == (1, 12, 12)  # positions resized
    with pytest.raises(ValueError, match="multiple of tokenizer.vqkd.patch_size=4"):
        load_vqkd(path, 30)


def _vit(sd: dict, prefix: str, in_chans: int, patch: int, tokens: int, dim: int, depth: int) -> None:
    """unilm's modeling_finetune.VisionTransformer keys (use_abs_pos_emb, qkv_bias, init_values=0,
    use_mean_pooling, num_classes=0)."""
    sd[f"{prefix}.cls_token"] = torch.randn(1, 1, dim)
    sd[f"{prefix}.pos_embed"] = torch.randn(1, tokens + 1, dim)
    sd[f"{prefix}.patch_embed.proj.weight"] = torch.randn(dim, in_chans, patch, patch)
    sd[f"{prefix}.patch_embed.proj.bias"] = torch.randn(dim)
    for i in range(depth):
        b = f"{prefix}.blocks.{i}"
        for name, shape in {"norm1.weight": [dim], "norm1.bias": [dim], "attn.q_bias": [dim], "attn.v_bias": [dim],
                            "attn.qkv.weight": [3 * dim, dim], "attn.proj.weight": [dim, dim], "attn.proj.bias": [dim],
                            "norm2.weight": [dim], "norm2.bias": [dim], "mlp.fc1.weight": [4 * dim, dim],
                            "mlp.fc1.bias": [4 * dim], "mlp.fc2.weight": [dim, 4 * dim], "mlp.fc2.bias": [dim]}.items():
            sd[f"{b}.{name}"] = torch.randn(shape)
    sd[f"{prefix}.fc_norm.weight"] = torch.randn(dim)
    sd[f"{prefix}.fc_norm.bias"] = torch.randn(dim)


def unilm_checkpoint() -> dict:
    """What unilm's run_vqkd_training.py saves for a tiny VQ-KD (teacher and all)."""
    sd: dict[str, torch.Tensor] = {}
    _vit(sd, "encoder", 3, 4, 64, 64, 2)
    _vit(sd, "decoder", 8, 1, 64, 64, 1)
    for name, shape in {"encode_task_layer.0.weight": [64, 64], "encode_task_layer.0.bias": [64],
                        "encode_task_layer.2.weight": [8, 64], "encode_task_layer.2.bias": [8],
                        "decode_task_layer.0.weight": [64, 64], "decode_task_layer.0.bias": [64],
                        "decode_task_layer.2.weight": [24, 64], "decode_task_layer.2.bias": [24]}.items():
        sd[name] = torch.randn(shape)
    sd["quantize.embedding.weight"] = F.normalize(torch.randn(16, 8), dim=1)
    sd["quantize.embedding.cluster_size"] = torch.rand(16)
    sd["quantize.embedding.embed_avg"] = torch.randn(16, 8)
    sd["quantize.embedding.initted"] = torch.tensor([1.0])
    sd["quantize.cluster_size"] = torch.rand(16)
    extra = {"teacher_model.visual.proj": torch.randn(64, 24), "teacher_model.visual.class_embedding": torch.randn(64),
             "scaling_layer.shift": torch.randn(1, 3, 1, 1), "scaling_layer.scale": torch.randn(1, 3, 1, 1),
             "loss.weight": torch.randn(1)}
    return {"model": {**sd, **extra}, "epoch": 99, "args": argparse.Namespace(model="vqkd_encoder_base_decoder_1x768x12_clip")}


def test_unilm_checkpoint_imports_strictly(tmp_path):
    ckpt = unilm_checkpoint()
    path = tmp_path / "vqkd_unilm.pth"
    torch.save(ckpt, path)
    assert vqkd_vocab(str(path)) == 16  # read without torch, before any process group
    model = load_vqkd(path)
    cfg = model.cfg
    assert (cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.decoder_depth, cfg.code_dim, cfg.decoder_out_dim) == (4, 64, 2, 1, 8, 24)
    assert model.input_size == 32 and model.vocab_size == 16 and cfg.mlp_ratio == 4.0
    ours = model.state_dict()
    expected = {k: v for k, v in ckpt["model"].items() if not k.startswith(("teacher", "scaling", "loss"))}
    assert set(ours) == set(expected)
    assert all(torch.equal(ours[k], v) for k, v in expected.items())
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8)

    broken = {"model": {k: v for k, v in ckpt["model"].items() if k != "encoder.fc_norm.bias"}}
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"does not fit its VQ-KD architecture: missing 1 keys \(encoder.fc_norm.bias\)"):
        load_vqkd(path)
    torch.save({"model": {**expected, "encoder.head.weight": torch.zeros(3, 64)}}, path)
    with pytest.raises(ValueError, match=r"unexpected 1 keys \(encoder.head.weight\)"):
        load_vqkd(path)
    torch.save({"model": {k: v for k, v in expected.items() if not k.startswith("quantize")}}, path)
    with pytest.raises(ValueError, match="not a VQ-KD checkpoint in unilm's layout"):
        load_vqkd(path)


class Payload:
    def __reduce__(self):
        return (math.sqrt, (4.0,))  # any callable: the restricted unpickler refuses it


def test_unilm_import_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match="not a readable torch file of plain tensors"):
        load_vqkd(path)
    assert vqkd_vocab(str(path)) is None  # and the torch-free reader does not run it either


def test_checkpointed_and_half_precision_passes():
    torch.manual_seed(0)
    x, target = torch.rand(2, 3, 32, 32), torch.randn(2, 64, 24)
    grads = []
    for checkpointed in (False, True):
        torch.manual_seed(1)
        model = VQKD(TINY, 32)
        model.set_grad_checkpointing(checkpointed)
        model(x, target).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    half = VQKD(TINY, 32).to(torch.bfloat16)  # as DeepSpeed's bf16 engine holds it
    out = half(x.bfloat16(), target)
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    assert all(b.dtype == torch.float32 for b in half.quantize.buffers())  # the EMA state stays exact
