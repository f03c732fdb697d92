"""Fine-tuning on a real single-rank DeepSpeed engine: every loading path, layer-wise lr decay in
the engine's optimizer, Mixup / CutMix targets, evaluation numbers, exact resume (EMA included),
and one-line errors for bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.data.collate import ClassBatch
from beit_ds.engine.ds_setup import resolve_ds_config
from beit_ds.engine.runtime import init_engine
from beit_ds.models import build_classifier
from beit_ds.optim import apply_schedule
from beit_ds.recipe import FinetuneRecipe, LinearProbeRecipe, OptimConfig, PretrainRecipe, ScheduleConfig
from beit_ds.tasks import train
from beit_ds.tasks.finetune import build_finetune_model, evaluate
from beit_ds.tasks.weights import read_init_weights as read_weights

ROOT = Path(__file__).resolve().parents[2]
FP32 = ROOT / "ds_configs/zero2_fp32_cpu.json"
TINY = [
    "model.depth=2",
    "data.num_workers=0",
    "data.repeats=2",
    "schedule.micro_batch_size=8",
    "log.progress_bar=false",
    "log.tensorboard=false",
    "log.every_steps=1",
]


@pytest.fixture(scope="module")
def pretrained(ds_single_rank, tmp_path_factory) -> Path:
    """A real pre-training run (demo recipe, 2 steps): ZeRO checkpoint + exports."""
    out = tmp_path_factory.mktemp("pretrain")
    recipe = load_recipe(
        PretrainRecipe, "pretrain_demo_cpu", [*TINY, "schedule.max_steps=2", f"checkpoint.output_dir={out}"]
    )
    train(recipe, FP32, resume="none")
    return out


def _recipe(out: Path, init: str, *extra: str, cls=FinetuneRecipe, name="finetune_demo_cpu"):
    return load_recipe(
        cls,
        name,
        [
            *TINY,
            f"finetune.init={init}",
            f"checkpoint.output_dir={out}",
            "schedule.epochs=2",
            "checkpoint.save_every_steps=3",
            *extra,
        ],
    )


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def test_every_loading_path_gives_the_same_backbone(pretrained, tmp_path):
    export = pretrained / "export"
    ours, _ = read_weights(str(export / "model.safetensors"))
    assert "mask_token" in ours and "rel_pos_bias.relative_position_bias_table" in ours
    tag = sorted((pretrained / "checkpoints").glob("step_*"))[-1]
    unilm = tmp_path / "unilm.pth"
    torch.save(
        {"model": ours | {"blocks.0.attn.relative_position_index": torch.zeros(3, dtype=torch.long)}}, unilm
    )
    sources = [
        pretrained,
        pretrained / "checkpoints",
        tag,
        export / "timm" / "model.safetensors",
        export / "hf",
        export / "hf" / "model.safetensors",
        unilm,
    ]
    for source in sources:
        sd, where = read_weights(str(source))
        for key, value in sd.items():
            assert torch.equal(value, ours[key]), (source, key)
        assert set(ours) - set(sd) <= {
            "mask_token",
            "lm_head.weight",
            "lm_head.bias",
            "norm.weight",
            "norm.bias",
        }
    assert "DeepSpeed checkpoint" in read_weights(str(pretrained))[1]
    recipe = _recipe(tmp_path, str(pretrained))
    model = build_finetune_model(recipe)
    for i in range(2):  # shared pre-training bias -> every block's own table
        assert torch.equal(
            model.blocks[i].attn.relative_position_bias_table,
            ours["rel_pos_bias.relative_position_bias_table"],
        )


def test_layer_decay_lr_of_each_block_in_the_engine(ds_single_rank):
    model = build_classifier(load_recipe(FinetuneRecipe, "finetune_demo_cpu", ["finetune.init="]).model)
    optim = OptimConfig(lr=1e-3, layer_decay=0.65)
    ds = resolve_ds_config(json.loads(FP32.read_text()), ScheduleConfig(micro_batch_size=2), optim, 1, 1e-3)
    engine = init_engine(model, optim, ds)
    apply_schedule(engine.optimizer, lr=1e-3, weight_decay=0.05)
    depth = model.cfg.depth  # 4 blocks: layer ids 0 (embeddings), 1..4 (blocks), 5 (head, norms)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = {}
    for group, params in zip(engine.optimizer.param_groups, engine.optimizer.bit16_groups, strict=True):
        for p in params:
            seen[names[id(p)]] = group["lr"]
    for i in range(depth):
        for suffix in ("attn.qkv.weight", "mlp.fc2.bias", "attn.relative_position_bias_table"):
            assert seen[f"blocks.{i}.{suffix}"] == pytest.approx(1e-3 * 0.65 ** (depth - i))
    assert seen["patch_embed.proj.weight"] == pytest.approx(1e-3 * 0.65 ** (depth + 1))
    assert seen["head.weight"] == seen["fc_norm.weight"] == pytest.approx(1e-3)


class _FixedLogits(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        return images[:, :, 0, 0]  # the first pixel of each channel: 3 classes


def test_evaluate_counts_top1_top5_and_loss():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 5.0]])
    labels = torch.tensor([0, 2, 1, 2])
    images = logits.view(4, 3, 1, 1).expand(4, 3, 2, 2).contiguous()
    loader = [
        ClassBatch(images[:3], labels[:3], torch.arange(3)),
        ClassBatch(images[3:], labels[3:], torch.arange(3, 4)),
    ]
    metrics = evaluate(_FixedLogits(), loader, torch.float32)
    ce = torch.nn.functional.cross_entropy(logits, labels).item()
    assert metrics == pytest.approx({"top1": 50.0, "top5": 100.0, "loss": ce, "images": 4.0})


def test_resume_is_exact_with_ema_mixup_and_randaugment(pretrained, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("finetune.ema_decay=0.9", "augment.rand_augment_ops=2", "augment.random_erasing=0.5")
    state = train(_recipe(full, str(pretrained), *extra), FP32, resume="auto")
    assert state.step == 6  # 28 images, batch 8: 3 steps an epoch, 2 epochs
    train(_recipe(part, str(pretrained), *extra, "schedule.max_steps=3"), FP32, resume="auto")
    train(_recipe(part, str(pretrained), *extra), FP32, resume="auto")
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(a[s] == b[s] for s in range(1, 7)), (a, b)
    for name in ("model.safetensors", "model_ema.safetensors"):
        ea, eb = load_file(full / "export" / name), load_file(part / "export" / name)
        assert all(torch.equal(ea[k], eb[k]) for k in ea)
    ema, model = (
        load_file(full / "export/model_ema.safetensors"),
        load_file(full / "export/model.safetensors"),
    )
    assert not torch.equal(ema["head.weight"], model["head.weight"])
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/top1" in r]
    assert [r["step"] for r in val] == [3, 6] and all(r["val/images"] == 14 for r in val)
    assert any("val_ema/top1" in r for r in rows)
    # an earlier fine-tuning run is a starting point too: its head fits and is kept
    again = build_finetune_model(_recipe(tmp_path / "again", str(full)))
    assert torch.equal(again.head.weight, model["head.weight"])


def test_linear_probe_trains_only_the_head(pretrained, tmp_path):
    out = tmp_path / "probe"
    recipe = load_recipe(
        LinearProbeRecipe,
        "linprobe_demo_cpu",
        [
            *TINY,
            f"finetune.init={pretrained}",
            f"checkpoint.output_dir={out}",
            "schedule.max_steps=3",
            "probe.layer=1",
        ],
    )
    train(recipe, FP32, resume="none")
    exported = load_file(out / "export/model.safetensors")
    start, _ = read_weights(str(pretrained))
    assert sorted(k for k in exported if k.startswith("blocks.1")) == []  # blocks after the tap dropped
    assert torch.equal(exported["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])  # frozen
    # trained: Adam moves weights by ~lr (1.25e-4) a step from an init of at most 4e-5 (0.02 x 0.001 x 2)
    assert exported["head.weight"].abs().max() > 2e-4


def test_bad_inputs_are_one_line_errors(pretrained, tmp_path):
    def error(fn) -> str:
        with pytest.raises(ConfigError) as err:
            fn()
        assert "\n" not in str(err.value)
        return str(err.value)

    assert "finetune.init='/nope': no such file or directory" in error(lambda: read_weights("/nope"))
    keep = _recipe(tmp_path, str(pretrained), "finetune.head=keep")
    assert "has no classifier head, model.num_classes=14 (set finetune.head=reset" in error(
        lambda: build_finetune_model(keep)
    )
    odd = _recipe(tmp_path, "", "model.img_size=48")
    assert odd.data.transform.input_size == 48  # derived from the model (issue 13), not restated
    assert error(lambda: _recipe(tmp_path, "", "model.img_size=48", "data.transform.input_size=32")).startswith(
        "data.transform.input_size=32: is model.img_size = 48; leave data.transform.input_size out"
    )
    patch8 = _recipe(tmp_path, str(pretrained), "model.patch_size=8")
    assert "the weights have 4x4 patches: expected model.patch_size=8" in error(
        lambda: build_finetune_model(patch8)
    )
    wide = _recipe(tmp_path, str(pretrained), "model.embed_dim=32", "model.num_heads=2")
    assert "cls_token has shape [1, 1, 64], the model [1, 1, 32]" in error(lambda: build_finetune_model(wide))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    assert "not a readable torch file" in error(lambda: read_weights(str(garbage)))
    vit = tmp_path / "vit.safetensors"
    save_file({"blocks.0.attn.qkv.bias": torch.zeros(3)}, vit)
    assert "not a beit_ds/timm/unilm BEiT state dict" in error(lambda: read_weights(str(vit)))
    classes = _recipe(tmp_path / "c", "", "model.num_classes=10")
    assert "model.num_classes=10: the training set has 14 classes" in error(lambda: train(classes, FP32))


def test_paper_recipes_have_the_seed_settings():

    b = load_recipe(None, "finetune_base_in1k", [])
    assert (b.optim.base_lr, b.optim.base_batch, b.optim.layer_decay, b.optim.min_lr) == (
        4e-3,
        1024,
        0.65,
        1e-6,
    )
    assert (b.schedule.epochs, b.schedule.warmup_epochs, b.model.drop_path_rate, b.optim.weight_decay) == (
        100,
        20,
        0.1,
        0.05,
    )
    assert (b.finetune.label_smoothing, b.augment.mixup, b.augment.cutmix, b.augment.random_erasing) == (
        0.1,
        0.8,
        1.0,
        0.25,
    )
    assert (b.augment.rand_augment_ops, b.augment.rand_augment_magnitude, b.model.global_pool) == (
        2,
        9,
        "avg",
    )
    hi = load_recipe(None, "finetune_base_in1k_384", [])
    assert (hi.model.img_size, hi.data.transform.input_size, hi.schedule.epochs) == (384, 384, 10)
    # DeiT's 384² setting (seed §3.1): lr 5e-6 at batch 512, constant (min-lr 5e-6), wd 1e-8, no layer decay
    assert (hi.optim.base_lr, hi.optim.base_batch, hi.optim.min_lr) == (5e-6, 512, 5e-6)
    assert (hi.optim.weight_decay, hi.optim.layer_decay) == (1e-8, 1.0)
    inter = load_recipe(None, "finetune_base_in22k_intermediate", [])
    assert (inter.model.num_classes, inter.schedule.epochs, inter.model.rel_pos_bias) == (
        21841,
        90,
        "per_layer",
    )
    assert load_recipe(None, "finetune_base_in22k_to_1k", []).finetune.init == inter.checkpoint.output_dir
    assert load_recipe(None, "finetune_large_in1k", []).optim.layer_decay == 0.75
    assert load_recipe(None, "finetune_cifar100", []).model.num_classes == 100
    probe = load_recipe(None, "linprobe_base", [])
    assert isinstance(probe, LinearProbeRecipe) and probe.probe.layer == 9
    assert (probe.optim.base_lr, probe.optim.base_batch, probe.optim.weight_decay, probe.schedule.epochs) == (
        4e-3,
        1024,
        1e-4,
        50,
    )
