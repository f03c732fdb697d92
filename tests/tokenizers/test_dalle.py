"""DALL-E compatibility: OpenAI's ``dall_e`` package (test dependency only) with random weights,
saved the way OpenAI's ``encoder.pkl`` / ``decoder.pkl`` are, must give the same logits and
tokens through our re-implementation on real photographs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from beit_ds.tokenizers import (
    VisualTokenizer,
    load_dalle_decoder,
    load_dalle_encoder,
    load_dalle_tokenizer,
    map_pixels,
)
from tests.conftest import require_module

dall_e = require_module("dall_e")  # the dall-e package (dev extra) is the parity reference


@pytest.fixture(scope="module")
def openai_files(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, torch.nn.Module, torch.nn.Module]:
    """Full-size DALL-E encoder and decoder (n_hid 256, vocab 8192) with random weights, each
    ``torch.save``d as a whole pickled module, exactly like OpenAI's distributed files."""
    torch.manual_seed(1234)
    encoder, decoder = dall_e.Encoder(), dall_e.Decoder()
    folder = tmp_path_factory.mktemp("openai")
    torch.save(encoder, folder / "encoder.pkl")
    torch.save(decoder, folder / "decoder.pkl")
    return folder / "encoder.pkl", folder / "decoder.pkl", encoder.eval(), decoder.eval()


@pytest.fixture(scope="module")
def small_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A narrow DALL-E encoder (n_hid 64, vocab 512) for the cheaper format tests."""
    torch.manual_seed(99)
    encoder = dall_e.Encoder(n_hid=64, vocab_size=512).eval()
    path = tmp_path_factory.mktemp("small") / "encoder.pkl"
    torch.save(encoder, path)
    return path, encoder


@pytest.fixture(scope="module")
def small_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(98)
    path = tmp_path_factory.mktemp("small_dec") / "decoder.pkl"
    torch.save(dall_e.Decoder(n_hid=64, vocab_size=512), path)
    return path


def test_encoder_parity_on_photos(openai_files, photos) -> None:
    enc_path, _, reference, _ = openai_files
    tokenizer = load_dalle_tokenizer(enc_path, input_size=112)
    images = map_pixels(photos(2, 112))
    with torch.no_grad():
        expected = reference(images)
    logits = tokenizer.logits(images)
    assert logits.shape == (2, 8192, 14, 14)
    assert (logits - expected).abs().max().item() <= 1e-5
    tokens = tokenizer.encode(images)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 14, 14)
    assert torch.equal(tokens, expected.argmax(1))
    assert tokens.unique().numel() > 5  # real photos: not one constant token


def test_decoder_parity(openai_files, photos) -> None:
    enc_path, dec_path, _, reference = openai_files
    tokenizer = load_dalle_tokenizer(enc_path, dec_path, input_size=112)
    tokens = tokenizer.encode(map_pixels(photos(2, 112)))
    one_hot = F.one_hot(tokens, 8192).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = dall_e.unmap_pixels(torch.sigmoid(reference(one_hot)[:, :3]))
    images = tokenizer.decode(tokens)
    assert images.shape == (2, 3, 112, 112)
    assert (images - expected).abs().max().item() <= 1e-5
    assert 0.0 <= images.min().item() and images.max().item() <= 1.0


def test_hyper_parameters_read_off_the_weights(small_reference) -> None:
    path, reference = small_reference
    ours = load_dalle_encoder(path)
    assert (ours.group_count, ours.n_hid, ours.n_blk_per_group, ours.vocab_size) == (4, 64, 2, 512)
    assert ours.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors"])
def test_plain_state_dicts_load(small_reference, photos, tmp_path, fmt) -> None:
    _, reference = small_reference
    if fmt == "state_dict":
        path = tmp_path / "encoder.pt"
        torch.save(reference.state_dict(), path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "encoder.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    tokenizer = load_dalle_tokenizer(path, input_size=64)
    images = map_pixels(photos(3, 64))
    with torch.no_grad():
        expected = reference(images).argmax(1)
    assert torch.equal(tokenizer.encode(images), expected)


def test_inference_fast_path_computes_the_same_function(small_reference, photos) -> None:
    """Under no_grad the blocks run in place with post_gain folded into conv_4; with autograd
    they run the reference formulation. Same logits, and the caller's images are untouched."""
    encoder = load_dalle_encoder(small_reference[0])
    images = map_pixels(photos(2, 64))
    before = images.clone()
    with torch.enable_grad():
        slow = encoder(images)
    with torch.no_grad():
        fast = encoder(images)
    assert (slow - fast).abs().max().item() <= 1e-5
    assert torch.equal(images, before)


def test_compiled_encoder_matches_and_keeps_openai_keys(small_reference, photos) -> None:
    tokenizer = load_dalle_tokenizer(small_reference[0], input_size=64)
    images = map_pixels(photos(2, 64))
    eager, keys = tokenizer.logits(images), set(tokenizer.state_dict())
    tokenizer.compile_encoder()
    assert (tokenizer.logits(images) - eager).abs().max().item() <= 1e-5
    assert set(tokenizer.state_dict()) == keys


def test_tokenizer_is_frozen_and_satisfies_protocol(small_reference, photos) -> None:
    tokenizer = load_dalle_tokenizer(small_reference[0], input_size=64)
    assert isinstance(tokenizer, VisualTokenizer)
    assert (tokenizer.vocab_size, tokenizer.input_size, tokenizer.preprocess) == (512, 64, "dalle")
    assert tokenizer.grid_size == (8, 8)
    assert not tokenizer.training
    assert not any(p.requires_grad for p in tokenizer.parameters())
    tokens = tokenizer.encode(map_pixels(photos(1, 64)))
    assert tokens.grad_fn is None


def test_bfloat16_encode_mostly_agrees(small_reference, photos) -> None:
    fp32 = load_dalle_tokenizer(small_reference[0], input_size=64)
    bf16 = load_dalle_tokenizer(small_reference[0], input_size=64).to(torch.bfloat16)
    images = map_pixels(photos(3, 64))
    tokens = bf16.encode(images)
    assert tokens.dtype == torch.int64
    agreement = (tokens == fp32.encode(images)).float().mean().item()
    assert agreement > 0.8, agreement


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 32, 32), 0.5), r"expected images \[B, 3, 64, 64\], got \[1, 3, 32, 32\]"),
        (torch.full((1, 1, 64, 64), 0.5), r"expected images \[B, 3, 64, 64\]"),
        (torch.rand(1, 3, 64, 64), r"expected values in \[0.1, 0.9\] \(map_pixels"),
        (torch.full((1, 3, 64, 64), 128.0), r"got min 128, max 128"),
        (torch.full((1, 3, 64, 64), float("nan")), r"expected values in"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"floating-point image tensor, got a torch.uint8"),
    ],
)
def test_encode_rejects_bad_images(small_reference, images, message) -> None:
    tokenizer = load_dalle_tokenizer(small_reference[0], input_size=64)
    with pytest.raises(ValueError, match=message) as info:
        tokenizer.encode(images)
    assert "\n" not in str(info.value)


def test_decode_needs_decoder_and_valid_ids(small_reference, small_decoder) -> None:
    tokenizer = load_dalle_tokenizer(small_reference[0], input_size=64)
    with pytest.raises(NotImplementedError, match="decoder_path"):
        tokenizer.decode(torch.zeros(1, 8, 8, dtype=torch.long))
    tokenizer = load_dalle_tokenizer(small_reference[0], small_decoder, input_size=64)
    assert tokenizer.decode(torch.zeros(1, 8, 8, dtype=torch.long)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\), got min 512, max 512"):
        tokenizer.decode(torch.full((1, 8, 8), 512, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected integer token ids \[B, h, w\]"):
        tokenizer.decode(torch.zeros(1, 64, dtype=torch.long))


def test_wrong_files_give_one_line_errors(small_reference, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope.pkl: no such file \(expected DALL-E encoder weights"):
        load_dalle_encoder(tmp_path / "nope.pkl")
    with pytest.raises(
        ValueError, match=r"holds a pickled dall_e.encoder.Encoder, expected a dall_e.decoder"
    ):
        load_dalle_decoder(small_reference[0])
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a weights file at all")
    with pytest.raises(ValueError, match=r"garbage.pkl: not a DALL-E weights file"):
        load_dalle_encoder(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"no 'blocks.output.conv.w': not DALL-E encoder weights"):
        load_dalle_encoder(other)
    torch.save([torch.zeros(1)], other)
    with pytest.raises(ValueError, match=r"holds a list"):
        load_dalle_encoder(other)


def test_state_dicts_of_the_wrong_part_or_incomplete(small_reference, small_decoder, tmp_path) -> None:
    encoder_state = small_reference[1].state_dict()
    path = tmp_path / "encoder.pt"
    torch.save(encoder_state, path)
    with pytest.raises(
        ValueError, match=r"blocks.input.w has a \(7, 7\) kernel, a DALL-E DalleDecoder has \(1, 1\)"
    ):
        load_dalle_decoder(path)
    decoder_state = load_dalle_decoder(small_decoder).state_dict()
    torch.save(decoder_state, path)
    with pytest.raises(
        ValueError, match=r"blocks.input.w has a \(1, 1\) kernel, a DALL-E DalleEncoder has \(7, 7\)"
    ):
        load_dalle_encoder(path)
    del encoder_state["blocks.group_2.block_1.res_path.conv_3.b"]
    torch.save(encoder_state, path)
    with pytest.raises(ValueError, match=r"weights do not fit a DalleEncoder: Missing key\(s\).*conv_3.b"):
        load_dalle_encoder(path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_never_run(tmp_path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "encoder.pkl"
    torch.save({"blocks.output.conv.w": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match=r"refers to (posix|os|nt)\.system"):
        load_dalle_encoder(path)
    assert not marker.exists()


def test_product_loads_openai_pickle_without_dall_e(small_reference) -> None:
    """In a fresh interpreter where ``import dall_e`` fails, ``encoder.pkl`` still loads."""
    script = (
        "import sys; sys.modules['dall_e'] = None\n"
        "from beit_ds.tokenizers import load_dalle_encoder\n"
        f"enc = load_dalle_encoder({str(small_reference[0])!r})\n"
        "print(type(enc).__module__, enc.n_hid)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["beit_ds.tokenizers.dalle", "64"]
