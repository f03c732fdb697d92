"""Weights and images for the pictures: file sources, random init, finetune.init files, CamVid."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from beit_ds.models import build_model, model_config
from beit_ds.tasks.weights import model_to_inspect as load_model
from beit_ds.visualize.attention import Query, attention_maps, jaccard, keep_mass
from beit_ds.visualize.canvas import upsample
from beit_ds.visualize.inputs import image_paths, read_images


def test_weights_file_gives_the_same_attention(tmp_path) -> None:
    cfg = model_config("beit_debug_patch4_32")
    torch.manual_seed(3)
    ref = build_model(cfg).eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = load_model(str(tmp_path / "w.safetensors"), cfg)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(
        attention_maps(loaded, x, [Query()]), attention_maps(ref, x, [Query()]), atol=0, rtol=0
    )
    torch.manual_seed(3)
    assert torch.equal(load_model("", cfg).blocks[0].attn.qkv.weight, ref.blocks[0].attn.qkv.weight)


def test_image_sources(tmp_path) -> None:
    for i in range(3):
        Image.fromarray(np.full((10, 14, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "list.txt").write_text("2.png,1\n0.png\n")
    assert [p.name for p in image_paths(tmp_path)] == ["0.png", "1.png", "2.png"]
    assert [p.name for p in image_paths(tmp_path / "list.txt")] == ["2.png", "0.png"]
    names, images = read_images(tmp_path / "list.txt", (8, 12))
    assert names == ["2", "0"] and images.shape == (2, 3, 8, 12)
    assert images[0].mean().item() == pytest.approx(120 / 255, abs=1e-6)
    assert len(image_paths("demo")) >= 8
    with pytest.raises(FileNotFoundError):
        image_paths(tmp_path / "missing.png")


def test_camvid_object_masks_against_thresholded_attention(datasets_dir, tmp_path) -> None:
    from beit_ds.visualize.objects import label_pairs, object_jaccards, patch_labels, reference_patches

    archive = datasets_dir / "camvid" / "camvid_segnet_480x360.tar.gz"
    with tarfile.open(archive) as tar:
        names = [n for n in tar.getnames() if n.startswith("camvid/val/") and n.endswith((".jpg", ".png"))]
        stems = sorted({n.rsplit("/", 1)[1].rsplit(".", 1)[0] for n in names})[:2]
        tar.extractall(
            tmp_path, members=[tar.getmember(n) for n in names if any(s in n for s in stems)], filter="data"
        )
    pairs = label_pairs(tmp_path / "camvid" / "val")
    assert len(pairs) == 2
    labels = torch.stack([patch_labels(lab, (12, 16), 11) for _, lab in pairs])
    assert labels.shape == (2, 12, 16) and int(labels.max()) <= 11
    refs = reference_patches(labels[0], 11, 0.05, 0.5)
    assert refs and all(labels[0, q.row, q.col] == c for c, q in refs)
    _, images = read_images(tmp_path / "camvid" / "val" / "images", (48, 64))
    torch.manual_seed(0)
    model = build_model(model_config("beit_debug_patch4_32")).eval()
    scores = object_jaccards(model, images * 2 - 1, labels)
    assert len(scores) == sum(len(reference_patches(lab, 11, 0.05, 0.5)) for lab in labels)
    assert all(0.0 <= s <= 1.0 for s in scores)
    # a map that is the object's own mask scores 1
    lab = labels[0]
    c, _ = refs[0]
    assert jaccard(keep_mass((lab == c).float()[None], 0.99)[0], lab == c) == 1.0
    assert upsample((lab == c).float(), (48, 64)).shape == (48, 64)
