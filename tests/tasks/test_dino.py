"""The MIM + DINO task (seed App. E) on a real single-rank DeepSpeed engine: the teacher is outside
DeepSpeed and gets no gradient, it follows the student with the scheduled momentum, a few steps
on a fixed batch lower the MIM loss and the student-teacher KL, and the checkpoint state restores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe, to_dict
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.job import loop_plan, preflight
from beit_ds.engine.resume_guard import architecture_diff
from beit_ds.engine.runtime import init_engine
from beit_ds.models.dino import LAST_LAYER
from beit_ds.optim import apply_schedule, base_optimizer
from beit_ds.recipe import DinoPretrainRecipe, PretrainRecipe
from beit_ds.tasks.dino import DinoPretrainTask
from beit_ds.tasks.registry import task_type

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.depth=2", "data.num_workers=0", "schedule.micro_batch_size=4", "optim.lr=2e-3",
         "optim.weight_decay=0.0", "model.drop_path_rate=0.0"]


def _setup(ds_single_rank, tmp_path, *extra: str, ds: str = "zero2_fp32_cpu.json"):
    recipe = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", [*SMALL, f"checkpoint.output_dir={tmp_path}", *extra])
    assert isinstance(recipe, DinoPretrainRecipe)
    task = DinoPretrainTask(recipe, ProcessPlace())
    task.check()
    flight = preflight(recipe, ROOT / "ds_configs" / ds, 1)
    torch.manual_seed(0)
    engine = init_engine(task.build_model(), recipe.optim, flight.ds_config)
    loader = task.build_loader()
    task.attach(engine, torch.bfloat16 if "bf16" in ds else torch.float32, loop_plan(recipe, flight, len(loader), 1))
    return task, engine, loader


def _train_step(task, engine, batch, step, schedule: tuple[float, float] | None = None):
    """One optimizer step as the loop takes it: the schedule (``(lr, wd)``), the task's own
    optimizer changes, forward, backward, step, the after-step hook."""
    if schedule is not None:
        apply_schedule(engine.optimizer, *schedule)
    task.schedule_optimizer(engine.optimizer, step)
    out = task.forward(engine, batch, step)
    engine.backward(out.loss)
    engine.step()
    task.after_optimizer_step(engine, step)
    return {k: float(v) for k, v in {"loss": out.loss, **out.metrics}.items()}


def test_kind_dino_is_registered():
    assert task_type("dino") is DinoPretrainTask


def test_a_dino_section_picks_the_root_and_the_head_is_architecture():
    dino = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu")
    assert isinstance(dino, DinoPretrainRecipe) and type(load_recipe(PretrainRecipe, "pretrain_demo_cpu")) is PretrainRecipe
    paper = load_recipe(PretrainRecipe, "pretrain_base_in1k_dino")
    assert (paper.schedule.epochs, paper.dino.head.out_dim, paper.dino.local_crops, paper.mim.max_masked) == (300, 65536, 8, 75)
    changed = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", ["dino.head.out_dim=2048", "dino.loss_weight=0.5"])
    assert architecture_diff(to_dict(dino), to_dict(changed), "dino") == ["dino.head.out_dim: checkpoint 1024, recipe 2048"]
    bad = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", ["dino.local_crop_size=18"])
    with pytest.raises(ConfigError, match=r"dino.local_crop_size=18: expected a multiple of model.patch_size=4"):
        DinoPretrainTask(bad, ProcessPlace()).check()
    with pytest.raises(ConfigError, match=r"dino.center_momentum=1.5: expected a number in \[0, 1\)"):
        load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", ["dino.center_momentum=1.5"])


def test_teacher_is_outside_deepspeed_and_follows_with_the_momentum(ds_single_rank, tmp_path):
    task, engine, loader = _setup(ds_single_rank, tmp_path)
    teacher = task.teacher
    student_ids = {id(p) for p in engine.module.parameters()}
    assert not any(id(p) in student_ids for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = next(iter(loader.at(0)))
    _train_step(task, engine, batch, step=0)
    assert all(p.grad is None for p in teacher.parameters())  # never back-propagated into
    m = task.momentum_at(0)
    assert m == 0.996
    student = dict(engine.module.named_parameters())
    for name, value in teacher.named_parameters():
        torch.testing.assert_close(value, m * before[name] + (1 - m) * student[name].detach())
    per_epoch = task.plan.steps_per_epoch
    total = task.recipe.schedule.epochs * per_epoch
    assert task.plan.schedule_steps == total
    assert task.momentum_at(total // 2) == pytest.approx(0.998, abs=1e-5) and task.momentum_at(total) == 1.0
    warm = int(task.recipe.dino.warmup_teacher_temp_epochs * per_epoch)
    assert task.temperature_at(0) == 0.04 and task.temperature_at(warm) == 0.07
    assert task.last_layer_frozen(0) and not task.last_layer_frozen(per_epoch)


def test_the_momentum_cosine_spans_schedule_steps_when_the_recipe_sets_them(ds_single_rank, tmp_path):
    """With ``schedule.steps`` the teacher momentum reaches 1 at that step (it used to be sized as
    ``schedule.epochs`` x steps per epoch whatever the recipe said)."""
    task, _, _ = _setup(ds_single_rank, tmp_path, "schedule.steps=40", "schedule.epochs=300", "schedule.max_steps=4")
    assert task.plan.schedule_steps == 40 and task.plan.total_steps == 4
    assert task.momentum_at(20) == pytest.approx(0.998, abs=1e-5) and task.momentum_at(40) == 1.0


def test_a_few_steps_lower_the_mim_loss_and_the_kl(ds_single_rank, tmp_path):
    task, engine, loader = _setup(ds_single_rank, tmp_path, "dino.freeze_last_layer_epochs=0")
    batch = next(iter(loader.at(0)))
    rows = [_train_step(task, engine, batch, step) for step in range(12)]
    kl = [r["dino_loss"] - r["teacher_entropy"] for r in rows]  # H(q, p) = H(q) + KL(q || p)
    assert rows[-1]["mim_loss"] < rows[0]["mim_loss"] - 0.1, [r["mim_loss"] for r in rows]
    assert kl[-1] < kl[0], kl
    assert rows[0]["center_norm"] == 0.0 and rows[-1]["center_norm"] > 0
    assert {"mim_accuracy", "teacher_temp", "teacher_momentum"} <= rows[0].keys()
    assert all(r["loss"] == pytest.approx(r["mim_loss"] + r["dino_loss"], rel=1e-5) for r in rows)  # weight 1


def test_extra_state_restores_teacher_and_centre(ds_single_rank, tmp_path):
    task, engine, loader = _setup(ds_single_rank, tmp_path)
    batch = next(iter(loader.at(0)))
    _train_step(task, engine, batch, 0)
    saved = {k: v.clone() for k, v in task.extra_state()["dino_teacher"].items()}
    client = {"dino_teacher": saved, "dino_center": task.loss.center.clone()}
    other, *_ = _setup(ds_single_rank, tmp_path / "other")
    other.restore(client, tmp_path)
    assert all(torch.equal(v, saved[k]) for k, v in other.teacher.state_dict().items())
    assert torch.equal(other.loss.center, client["dino_center"]) and other.loss.center.abs().sum() > 0


def _master(engine, param: torch.Tensor) -> torch.Tensor:
    """The fp32 weights the optimizer updates for ``param``, the one trained tensor of the DINO last
    layer's group: the parameter (stage 0 in fp32), its fp32 copy (stage 0 in bf16) or the
    group's flat fp32 partition (ZeRO, one rank)."""
    (group,) = [g for g in base_optimizer(engine.optimizer).param_groups if g["group_name"].startswith(LAST_LAYER)]
    (held,) = group["params"]
    return held.detach().flatten()[: param.numel()].view(param.shape).float().clone()


@pytest.mark.parametrize("ds", ["zero2_fp32_cpu.json", "zero0_fp32_cpu.json",
                                "zero0_bf16.json", "zero2_bf16.json"])
def test_last_layer_starts_a_fresh_adamw_when_it_unfreezes(ds_single_rank, tmp_path, ds):
    """DINO cancels the last layer's gradient (``p.grad = None``) while it is frozen: AdamW neither
    moves nor decays it and starts its moments and step count at the first free step, whose update
    is then ``lr · g / (|g| + eps)``: ``lr`` per element (after k zero-gradient steps AdamW's bias
    corrections would give ``0.1 / (1 - 0.9^(k+1)) / sqrt(0.001 / (1 - 0.999^(k+1))) · lr``:
    0.52 · lr after 5 steps, 2.2 · lr after 30, 3.2 · lr after many)."""
    lr, wd = 2e-3, 0.05
    task, engine, loader = _setup(ds_single_rank, tmp_path, "dino.freeze_last_layer_epochs=0.02",
                                  "dino.local_crops=2", f"optim.weight_decay={wd}", "optim.clip_grad=0", ds=ds)
    batch = next(iter(loader.at(0)))
    weight = engine.module.dino_head.last_layer.weight_v
    frozen = next(step for step in range(100) if not task.last_layer_frozen(step))
    assert frozen >= 2
    start = _master(engine, weight)
    for step in range(frozen):
        _train_step(task, engine, batch, step, (lr, wd))
    assert torch.equal(_master(engine, weight), start)  # neither moved nor decayed while frozen
    apply_schedule(engine.optimizer, lr, wd)
    task.schedule_optimizer(engine.optimizer, frozen)
    engine.backward(task.forward(engine, batch, frozen).loss)
    g = ds_single_rank.utils.safe_get_full_grad(weight).float()  # the gradient the optimizer steps with
    engine.step()
    update = (_master(engine, weight) - start * (1 - lr * wd)) / lr  # decoupled decay, then the Adam step
    fresh = -g / (g.abs() + 1e-8)  # a fresh AdamW's first step: m = g, v = g² after bias correction
    assert g.abs().max() > 1e-4
    torch.testing.assert_close(update, fresh, atol=2e-3, rtol=0)
    second = _master(engine, weight)
    _train_step(task, engine, batch, frozen + 1, (lr, wd))
    assert not torch.equal(_master(engine, weight), second)  # and it keeps training


def test_a_dino_run_initialises_fine_tuning_probing_and_segmentation(ds_single_rank, tmp_path):
    """``finetune.init`` = a MIM + DINO run folder or one of its ``step_*`` folders gives the
    student's MIM model, as the export's ``model.safetensors`` does (``dino_head.*`` dropped), to
    fine-tuning, the linear probe and segmentation (which reads it as a backbone)."""
    from safetensors.torch import load_file

    from beit_ds.recipe import FinetuneRecipe, LinearProbeRecipe
    from beit_ds.segmentation.loading import is_segmentation_state_dict
    from beit_ds.tasks import train
    from beit_ds.tasks.finetune import build_finetune_model
    from beit_ds.tasks.weights import read_init_raw as read_raw_weights
    from beit_ds.tasks.weights import read_init_weights as read_weights

    run = tmp_path / "dino"
    recipe = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", [
        *SMALL, "model.depth=4", "schedule.max_steps=1", f"checkpoint.output_dir={run}", "log.progress_bar=false",
        "log.tensorboard=false"])
    train(recipe, ROOT / "ds_configs/zero2_fp32_cpu.json", resume="none")
    exported = load_file(run / "export/model.safetensors")
    tag = sorted((run / "checkpoints").glob("step_*"))[-1]
    for source in (run, tag):
        sd, where = read_weights(str(source))
        assert "DeepSpeed checkpoint" in where and not any(k.startswith(("mim.", "dino_head.")) for k in sd)
        assert all(torch.equal(value, exported[key]) for key, value in sd.items()), source
    backbone = {k: v for k, v in exported.items() if k.startswith("blocks.3.")}
    common = ["model.depth=4", f"finetune.init={run}", f"checkpoint.output_dir={tmp_path / 'out'}"]
    for cls, name in ((FinetuneRecipe, "finetune_demo_cpu"), (LinearProbeRecipe, "linprobe_demo_cpu")):
        model = build_finetune_model(load_recipe(cls, name, common))
        own = model.state_dict()
        assert all(torch.equal(own[k], v) for k, v in backbone.items() if k in own), name
    raw, _ = read_raw_weights(str(run))  # what segmentation's build_segmenter reads
    assert set(raw) == set(exported) and not is_segmentation_state_dict(raw)
