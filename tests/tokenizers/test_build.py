"""``build_tokenizer(cfg.tokenizer)``: the recipe's name + path give a frozen tokenizer, and bad
sections or files fail with one-line errors. The table ``TOKENIZERS`` names each tokenizer's view,
file and vocabulary; its module ``beit_ds.tokenizers.<name>`` loads it."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from beit_ds.assets import resolve
from beit_ds.config import TOKENIZER_NAMES, TOKENIZER_VIEWS, ConfigError, DVAEConfig, TokenizerConfig
from beit_ds.config.tokenizer import TOKENIZERS, TokenizerSpec, fixed_vocab
from beit_ds.config_io import build_dataclass, load_recipe
from beit_ds.recipe import PretrainRecipe
from beit_ds.tokenizers import (
    DalleEncoder,
    DalleTokenizer,
    DiscreteVAE,
    VisualTokenizer,
    build_tokenizer,
    dvae,
    map_pixels,
    save_dvae,
)

DEMO_DVAE = str(resolve("package:demo_dvae.safetensors"))
ROOT = Path(__file__).resolve().parents[2]


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


def test_each_table_entry_is_a_module_with_its_loader(dalle_state, dvae_file) -> None:
    files = {"dalle": dalle_state, "dvae": dvae_file, "vqkd": resolve("package:demo_vqkd.safetensors")}
    assert set(TOKENIZERS) == set(files) == set(TOKENIZER_NAMES)
    for name, spec in TOKENIZERS.items():
        assert callable(importlib.import_module(f"beit_ds.tokenizers.{name}").load_tokenizer)
        tok = build_tokenizer(TokenizerConfig(name=name, path=str(files[name]), image_size=32))
        assert tok.preprocess == spec.view and spec.view in TOKENIZER_VIEWS
        assert isinstance(tok, VisualTokenizer)


def test_vocabulary_read_without_loading_the_weights(dalle_state, dvae_file, tmp_path) -> None:
    assert TOKENIZERS["dvae"].vocab(str(dvae_file)) == 128  # the codebook_size in the safetensors metadata
    assert TOKENIZERS["dvae"].vocab(str(DEMO_DVAE)) == 512
    assert TOKENIZERS["dalle"].vocab(str(dalle_state)) == TOKENIZERS["dalle"].vocab("") == 8192
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))  # a safetensors file with no dvae_config
    for path in (tmp_path / "missing.safetensors", tmp_path / "junk.safetensors", plain, dalle_state):
        assert TOKENIZERS["dvae"].vocab(str(path)) is None
    recipe = load_recipe(PretrainRecipe, "pretrain_demo_cpu")
    assert (recipe.mim.vocab_size, recipe.data.transform.tokenizer_view) == (512, "raw")


def test_a_new_tokenizer_is_one_module_and_one_line(dvae_file, monkeypatch) -> None:
    module = types.ModuleType("beit_ds.tokenizers.mine")
    module.__dict__["load_tokenizer"] = dvae.load_tokenizer  # the one module: its loader
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(TOKENIZERS, "mine", TokenizerSpec("raw", "a file of mine", fixed_vocab(128)))
    cfg = TokenizerConfig(name="mine", path=str(dvae_file), image_size=32)
    assert build_tokenizer(cfg).vocab_size == 128
    recipe = load_recipe(PretrainRecipe, "pretrain_demo_cpu", ["tokenizer.name=mine", f"tokenizer.path={dvae_file}"])
    assert (recipe.mim.vocab_size, recipe.data.transform.tokenizer_view) == (128, "raw")
    with pytest.raises(ConfigError, match=r"^tokenizer.path='': expected a file of mine$"):
        build_tokenizer(TokenizerConfig(name="mine"))


def test_the_table_keeps_recipes_torch_free() -> None:
    code = ("import sys; from beit_ds.config_io import load_recipe; r = load_recipe(None, 'pretrain_demo_cpu');"
            " assert r.mim.vocab_size == 512 and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
