"""Pre-training samples at each checkpoint: pictures written, training RNG stream unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from beit_ds.config_io import load_recipe
from beit_ds.distributed import ProcessPlace
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.pretrain import PretrainTask


class Recorder:
    def __init__(self) -> None:
        self.images: dict[str, torch.Tensor] = {}

    def images_(self, step: int, tag: str, images: torch.Tensor) -> None:
        self.images[tag] = images


def test_samples_hook_draws_pictures_and_leaves_the_rng_stream(monkeypatch) -> None:
    recipe = load_recipe(
        PretrainRecipe,
        "pretrain_demo_cpu",
        ["model.depth=1", "data.num_workers=0", "schedule.micro_batch_size=4"],
    )
    task = PretrainTask(recipe, ProcessPlace())
    assert task.has_samples
    model = task.build_model().train()
    task.build_loader()
    task.attach(SimpleNamespace(device=torch.device("cpu")), torch.float32, SimpleNamespace())  # type: ignore[arg-type]
    rec = Recorder()
    writer = SimpleNamespace(images=rec.images_)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    task.samples(model, writer, 100)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training  # mode restored
    att, mim = rec.images["pretrain/attention"], rec.images["pretrain/mim"]
    assert att.shape[:2] == (1, 3) and mim.shape[:2] == (1, 3)
    assert mim.shape[2] == 2 + 4 * (64 + 12 + 2)  # 4 fixed images, panels x2
    assert att.std() > 0.05 and mim.std() > 0.05
    first = att.clone()
    task.samples(model, writer, 200)  # type: ignore[arg-type]
    assert torch.equal(rec.images["pretrain/attention"], first)  # the same fixed images, same weights
    assert torch.equal(torch.get_rng_state(), before)
