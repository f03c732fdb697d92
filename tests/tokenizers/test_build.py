"""``build_tokenizer(cfg.tokenizer)``: the recipe's name + path give a frozen tokenizer, and bad
sections or files fail with one-line errors."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import ConfigError, DVAEConfig, TokenizerConfig
from beit_ds.config_io import build_dataclass
from beit_ds.tokenizers import (
    DalleEncoder,
    DalleTokenizer,
    DiscreteVAE,
    build_tokenizer,
    map_pixels,
    save_dvae,
)


@pytest.fixture(scope="module")
def dalle_state(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("dalle") / "encoder.pt"
    torch.save(DalleEncoder(n_hid=64, vocab_size=512).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def dvae_file(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("dvae") / "dvae.safetensors"
    cfg = DVAEConfig(codebook_size=128, codebook_dim=16, hidden_dim=16, downsample=4)
    save_dvae(DiscreteVAE(cfg, input_size=32), path)
    return path


def test_dalle_by_name_and_path(dalle_state, photos) -> None:
    tok = build_tokenizer(TokenizerConfig(name="dalle", path=str(dalle_state), image_size=64))
    assert isinstance(tok, DalleTokenizer) and not tok.training
    assert not any(p.requires_grad for p in tok.parameters())
    assert tok.encode(map_pixels(photos(2, 64))).shape == (2, 8, 8)


def test_dvae_by_name_and_path_in_bfloat16(dvae_file, photos) -> None:
    cfg = TokenizerConfig(name="dvae", path=str(dvae_file), image_size=32, dtype="bfloat16")
    tok = build_tokenizer(cfg)
    assert isinstance(tok, DiscreteVAE) and tok.vocab_size == 128 and tok.preprocess == "raw"
    assert {p.dtype for p in tok.parameters()} == {torch.bfloat16}
    tokens = tok.encode(photos(2, 32))
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 8, 8)
    assert tok.decode(tokens).dtype == torch.float32


def test_missing_or_wrong_files(dalle_state, dvae_file, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"tokenizer.path='': expected OpenAI's encoder.pkl"):
        build_tokenizer(TokenizerConfig(name="dalle"))
    with pytest.raises(
        ConfigError, match=r"tokenizer.path='': expected a .safetensors file written by save_dvae"
    ):
        build_tokenizer(TokenizerConfig(name="dvae"))
    with pytest.raises(FileNotFoundError, match=r"encoder.pkl: no such file"):
        build_tokenizer(TokenizerConfig(name="dalle", path=str(tmp_path / "encoder.pkl")))
    with pytest.raises(ValueError, match=r"not a safetensors file"):
        build_tokenizer(TokenizerConfig(name="dvae", path=str(dalle_state), image_size=64))
    with pytest.raises(ValueError, match=r"dvae.safetensors: state dict has no 'blocks.output.conv.w'"):
        build_tokenizer(TokenizerConfig(name="dalle", path=str(dvae_file)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vqgan"}, r"tokenizer.name='vqgan': expected one of 'dalle', 'dvae'"),
        ({"name": "dvae", "decoder_path": "d.pkl"}, r"tokenizer.decoder_path='d.pkl': expected empty unless"),
        ({"dtype": "half"}, r"tokenizer.dtype='half': expected one of 'auto', 'float32', 'bfloat16', 'float16'"),
        ({"name": "dvae", "compile": "yes"}, r"tokenizer.compile='yes': expected true or false"),
        ({"image_size": 0}, r"tokenizer.image_size=0: expected a positive integer"),
    ],
)
def test_config_errors(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TokenizerConfig(**kwargs)


def test_recipe_section_with_nested_dvae() -> None:
    cfg = build_dataclass(TokenizerConfig, {"name": "dvae", "dvae": {"codebook_size": 512}}, "tokenizer")
    assert cfg.dvae.codebook_size == 512 and cfg.dvae.downsample == 8
    with pytest.raises(ConfigError, match=r"tokenizer.dvae.codebok_size: unknown key"):
        build_dataclass(TokenizerConfig, {"dvae": {"codebok_size": 512}}, "tokenizer")
