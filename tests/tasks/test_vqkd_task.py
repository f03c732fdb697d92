"""VQ-KD training (kind ``vqkd``): the teacher's features from every source against the reference
libraries (our export vs its own timm and Hugging Face copies; open_clip's ViT-B/16 with random
weights against open_clip's own token output), one-line errors for a teacher that does not fit or
cannot be loaded, and a short real run: export by kind, the tokenizer in a BEiT v2 recipe."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from beit_ds.artifacts import WEIGHTS, ExportDir
from beit_ds.config import ConfigError, MIMConfig, TeacherConfig
from beit_ds.config_io import load_recipe, to_dict
from beit_ds.models import build_mim_model, build_model, model_config
from beit_ds.models.convert import backbone_state_dict
from beit_ds.recipe import PretrainRecipe, VQKDRecipe
from beit_ds.tasks import export as export_checkpoint
from beit_ds.tasks import train
from beit_ds.tasks.exported import load_export
from beit_ds.tasks.formats import write_timm_and_hf
from beit_ds.tasks.teacher import ClipTeacher, check_teacher, load_teacher, open_clip_visual
from beit_ds.tokenizers.vqkd import VQKD
from tests.conftest import require_module

ROOT = Path(__file__).resolve().parents[2]
FP32 = ROOT / "ds_configs/zero2_fp32_cpu.json"


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """An export folder of a (random) debug MIM model, as ``export_mim`` writes it."""
    torch.manual_seed(0)
    cfg = model_config("beit_debug_patch4_32")
    mim = build_mim_model(cfg, MIMConfig(vocab_size=32)).eval()
    out = ExportDir(tmp_path_factory.mktemp("teacher")).create()
    out.write_weights(WEIGHTS, mim.state_dict())
    backbone = build_model(cfg)
    backbone.load_state_dict(backbone_state_dict(mim.state_dict()), strict=True)
    write_timm_and_hf(backbone, out)
    out.finish("pretrain", to_dict(PretrainRecipe(model=cfg, mim=MIMConfig(vocab_size=32))))
    return out.path


def test_our_export_gives_the_features_of_its_timm_and_hf_copies(export):
    transformers = require_module("transformers")
    x = torch.rand(2, 3, 32, 32)
    ours = load_teacher(TeacherConfig(source="beit", path=str(export)))(x)
    assert ours.shape == (2, 64, 32)
    timm = load_teacher(TeacherConfig(source="timm", path=str(export / "timm")))(x)
    assert torch.allclose(ours, timm, atol=1e-5)
    by_preset = load_teacher(TeacherConfig(source="beit", name="beit_debug_patch4_32", path=str(export / "hf")))(x)
    assert torch.allclose(ours, by_preset, atol=1e-5)
    hf = transformers.BeitModel.from_pretrained(export / "hf").eval()
    with torch.no_grad():
        reference = hf(pixel_values=(x - 0.5) / 0.5).last_hidden_state[:, 1:]
    assert torch.allclose(ours, reference, atol=1e-4)


def test_open_clip_vit_b16_features_are_its_projected_final_tokens(tmp_path):
    open_clip = require_module("open_clip")
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-16", pretrained=None).visual.eval()
    teacher = ClipTeacher(visual, tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    x = torch.rand(1, 3, 224, 224)
    ours = teacher(x)
    normalized = (x - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    visual.output_tokens = True  # open_clip's own path: ln_post'ed tokens (then unilm's "@ visual.proj")
    with torch.no_grad():
        pooled, tokens = visual(normalized)
    assert ours.shape == (1, 196, 512)
    assert torch.allclose(ours, tokens @ visual.proj, atol=1e-4)
    check_teacher(teacher, 224, 14, 512)
    with pytest.raises(ConfigError, match=r"^tokenizer.vqkd.decoder_out_dim=768: the teacher's features are 512-d"):
        check_teacher(teacher, 224, 14, 768)


def test_open_clip_weights_load_from_a_local_file(tmp_path):
    open_clip = require_module("open_clip")
    torch.manual_seed(1)
    model = open_clip.create_model("ViT-S-32", pretrained=None)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}, path)
    teacher = load_teacher(TeacherConfig(source="open_clip", name="ViT-S-32", path=str(path)))
    for key, value in model.visual.state_dict().items():
        assert torch.equal(teacher.model.state_dict()[key], value), key
    assert teacher.mean.flatten().tolist() == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    scripted = tmp_path / "ViT-S-32.pt"  # OpenAI's release format: a TorchScript archive of the model
    torch.jit.save(torch.jit.trace(_Clip(model.visual.eval()), torch.rand(1, 3, 224, 224), check_trace=False), scripted)
    assert torch.equal(open_clip_visual("ViT-S-32", scripted).state_dict()["proj"], model.visual.proj)
    with pytest.raises(ConfigError, match=r"positional_embedding has shape \[50, 384\], the teacher model \[197, 384\]"):
        open_clip_visual("ViT-S-16", path)
    with pytest.raises(ConfigError, match="^teacher.name='ViT-Q-99': not an open_clip model"):
        open_clip_visual("ViT-Q-99", None)


class _Clip(torch.nn.Module):
    """What OpenAI's archive holds under ``visual.`` (its text tower left out)."""

    def __init__(self, visual: torch.nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"path": ""}, r"^teacher.path='': expected"),
    ({"path": "/no/such/teacher"}, r"^teacher.path='/no/such/teacher': no such file"),
    ({"source": "beit", "name": "beit_huge_patch3"}, r"model name 'beit_huge_patch3': expected one of"),
    ({"source": "timm", "name": "vit_tiny_patch16_224"}, r"teacher.path=.*: (refused|not a readable)"),
])
def test_a_teacher_that_cannot_be_loaded_is_one_line(tmp_path, overrides, message):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    cfg = TeacherConfig(**{"path": str(junk), **overrides})
    with pytest.raises(ConfigError, match=message) as err:
        load_teacher(cfg)
    assert "\n" not in str(err.value)


def test_a_teacher_of_another_patch_grid_is_one_line(export):
    teacher = load_teacher(TeacherConfig(source="beit", path=str(export)))
    with pytest.raises(ConfigError, match=r"^teacher: 64 patch features for 32x32 views, the VQ-KD code grid is 4x4"):
        check_teacher(teacher, 32, 4, 32)


SMALL = ["tokenizer.vqkd.depth=1", "tokenizer.vqkd.codebook_size=32", "schedule.micro_batch_size=8",
         "data.repeats=1", "data.num_workers=0", "log.progress_bar=false", "log.tensorboard=false",
         "log.every_steps=1", "checkpoint.save_every_steps=2"]


def test_a_short_run_exports_a_tokenizer_for_beit_v2(ds_single_rank, export, tmp_path):
    out, teacher = tmp_path / "run", tmp_path / "teacher"
    shutil.copytree(export, teacher)
    recipe = load_recipe(VQKDRecipe, "tokenizer_vqkd_demo_cpu", [
        *SMALL, f"teacher.path={teacher}", "tokenizer.vqkd.decoder_out_dim=32", "schedule.max_steps=3",
        f"checkpoint.output_dir={out}"])
    train(recipe, FP32, resume="none")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert {"train/rec_loss", "train/quant_loss", "train/perplexity", "train/epoch_codes_used", "train/dead_codes"} <= rows[0].keys()
    assert 0 < rows[0]["train/rec_loss"] < 2 and 1 <= rows[0]["train/perplexity"] <= 32
    manifest = json.loads((out / "export/export.json").read_text())
    assert manifest["kind"] == "vqkd" and "tokenizer.safetensors" in manifest["files"]
    report = json.loads((out / "export/report.json").read_text())
    assert 0 < report["codes_used"] <= 1 and report["codebook_size"] == 32
    tokenizer = load_export(out / "export")
    assert isinstance(tokenizer, VQKD) and tokenizer.quantize.embedding.initted.item() == 1
    shutil.rmtree(teacher)  # exporting the checkpoint again needs no teacher
    export_checkpoint(out / "checkpoints" / "step_00000003", tmp_path / "again")
    again, first = (load_file(d / "tokenizer.safetensors") for d in (tmp_path / "again", out / "export"))
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    v2 = tmp_path / "v2"  # BEiT v2 pre-training on its codes; no pixel decoder: attention pictures only
    pretrain = load_recipe(PretrainRecipe, "pretrain_demo_cpu", [
        "tokenizer.name=vqkd", f"tokenizer.path={out / 'export/tokenizer.safetensors'}", "schedule.max_steps=1",
        "schedule.micro_batch_size=8", "data.repeats=1", "data.num_workers=0", "log.progress_bar=false",
        "checkpoint.export_at_end=false", f"checkpoint.output_dir={v2}"])
    assert pretrain.mim.vocab_size == 32 and pretrain.data.transform.tokenizer_view == "raw"
    train(pretrain, FP32, resume="none")
    first = json.loads((v2 / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["train/loss"] - math.log(32)) < 1.0  # an untrained head: about ln V
    with pytest.raises(ConfigError, match=r"^mim.vocab_size=8192: is the vocabulary of tokenizer.path="):
        load_recipe(PretrainRecipe, "pretrain_demo_cpu", [
            "tokenizer.name=vqkd", f"tokenizer.path={out / 'export/tokenizer.safetensors'}", "mim.vocab_size=8192"])
