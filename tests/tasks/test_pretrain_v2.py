"""BEiT v2 pre-training on the ``pretrain`` kind: the recipes' values (unilm beit2's command),
VQ-KD reading the model's own view (derived, one resize), patch aggregation's loss parts in
the step's metrics, and the checks that stop a bad recipe in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from beit_ds.config import ConfigError, TransformConfig
from beit_ds.config.seg_data import IMAGENET_MEAN, IMAGENET_STD
from beit_ds.config_io import load_recipe
from beit_ds.data.collate import MIMBatch
from beit_ds.data.decode import open_image
from beit_ds.data.demo import demo_folder
from beit_ds.data.transforms import TwoViewTransform
from beit_ds.models import build_mim_model
from beit_ds.recipe import DinoPretrainRecipe, PretrainRecipe
from beit_ds.tasks.dino import check_dino
from beit_ds.tasks.pretrain import check_views, mim_forward


def test_beitv2_recipes_state_unilms_values():
    long = load_recipe(PretrainRecipe, "pretrain_beitv2_base_in1k_1600ep")
    agg = long.mim.aggregation
    assert (agg.enabled, agg.early_layer, agg.depth, long.model.depth) == (True, 9, 2, 12)
    assert (long.model.rel_pos_bias, long.model.layer_scale_init, long.model.use_abs_pos_emb) == ("shared", 0.1, False)
    assert (long.masking.num_masking_patches, long.masking.min_block_patches, long.mim.max_masked) == (75, 16, 75)
    assert (long.tokenizer.name, long.tokenizer.image_size, long.mim.vocab_size) == ("vqkd", 224, 8192)
    t = long.data.transform
    assert (t.second_input_size, t.second_interpolation, t.tokenizer_view, tuple(t.scale)) == (224, "bicubic", "raw", (0.2, 1.0))
    assert (tuple(t.mean), tuple(t.std), t.color_jitter) == (IMAGENET_MEAN, IMAGENET_STD, 0.4)
    o, s = long.optim, long.schedule
    assert (o.base_lr, o.base_batch, o.min_lr, o.weight_decay, o.eps, o.clip_grad) == (1.5e-3, 2048, 1e-5, 0.05, 1e-8, 3.0)
    assert (tuple(o.betas), long.model.drop_path_rate, s.epochs, s.warmup_epochs) == ((0.9, 0.999), 0.1, 1600, 10)
    short = load_recipe(PretrainRecipe, "pretrain_beitv2_base_in1k_300ep")  # PRETRAINING.md's 300-epoch changes
    assert (tuple(short.optim.betas), short.model.drop_path_rate, short.schedule.epochs) == ((0.9, 0.98), 0.0, 300)
    demo = load_recipe(PretrainRecipe, "pretrain_beitv2_demo_cpu")
    assert (demo.mim.aggregation.enabled, demo.mim.aggregation.early_layer, demo.model.depth) == (True, 3, 4)


def test_vqkd_reads_the_model_view_resized_once():
    r = load_recipe(PretrainRecipe, "pretrain_beitv2_base_in1k_1600ep", ["model.img_size=192"])
    assert (r.tokenizer.image_size, r.data.transform.second_input_size) == (192, 192)
    with pytest.raises(ConfigError, match=r"tokenizer.image_size=112: is model.img_size .* = 224; leave"):
        load_recipe(PretrainRecipe, "pretrain_beitv2_base_in1k_1600ep", ["tokenizer.image_size=112"])
    with pytest.raises(ConfigError, match=r"data.transform.second_interpolation='lanczos': is data.transform.interp"):
        load_recipe(PretrainRecipe, "pretrain_beitv2_base_in1k_1600ep", ["data.transform.second_interpolation=lanczos"])
    cfg = TransformConfig(input_size=48, second_input_size=48, second_interpolation="bicubic", tokenizer_view="raw",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD)
    enc = open_image((demo_folder() / "chelsea.png").read_bytes(), "chelsea.png", 10**8)
    patch, token = TwoViewTransform(cfg)(enc, np.random.default_rng(0))
    unnormalised = patch * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    torch.testing.assert_close(token, unnormalised, atol=1e-6, rtol=0)  # the same pixels, jitter and flip
    assert token.data_ptr() != patch.data_ptr()


def test_a_v2_step_logs_both_mim_losses_and_their_sum_is_trained():
    r = load_recipe(PretrainRecipe, "pretrain_beitv2_demo_cpu")
    torch.manual_seed(0)
    model = build_mim_model(r.model, r.mim).eval()

    class Engine:  # what mim_forward uses of a DeepSpeed engine
        device = torch.device("cpu")

        def __call__(self, *args):
            return model(*args)

    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:6, 2:6] = True
    batch = MIMBatch(torch.randn(2, 3, 32, 32), torch.rand(2, 3, 32, 32), mask, torch.arange(2))
    tokens = torch.randint(0, r.mim.vocab_size, (2, 8, 8))

    class Tokenizer:
        def encode(self, x):
            return tokens

    out = mim_forward(Engine(), batch, Tokenizer(), torch.float32)  # type: ignore[arg-type]
    assert set(out.metrics) == {"mim_accuracy", "mim_loss", "agg_loss", "agg_accuracy"}
    torch.testing.assert_close(out.loss.detach(), out.metrics["mim_loss"] + out.metrics["agg_loss"])
    assert abs(out.metrics["agg_loss"].item() - np.log(r.mim.vocab_size)) < 1.0  # an untrained head


def test_bad_v2_settings_are_one_line():
    deep = load_recipe(PretrainRecipe, "pretrain_beitv2_demo_cpu", ["model.depth=2"])
    with pytest.raises(ConfigError, match=r"^mim.aggregation.early_layer=3: expected at most model.depth=2$"):
        check_views(deep)
    with pytest.raises(ConfigError, match=r"mim.aggregation.depth=0: expected a positive integer"):
        load_recipe(PretrainRecipe, "pretrain_beitv2_demo_cpu", ["mim.aggregation.depth=0"])
    dino = load_recipe(DinoPretrainRecipe, "pretrain_dino_demo_cpu", ["mim.aggregation.enabled=true"])
    with pytest.raises(ConfigError, match=r"^mim.aggregation.enabled=true: not with kind 'dino'"):
        check_dino(dino)
