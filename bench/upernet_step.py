"""Time one UperNet-B segmentation training step (forward, loss, backward, AdamW) for beit_ds's
``BeitForSegmentation`` and Hugging Face's ``BeitForSemanticSegmentation`` in the same run, on the
same batch and the same weights (ours exported to HF), interleaved.

    python bench/upernet_step.py                               # 512², batch 2, torch's threads, wall clock
    python bench/upernet_step.py --threads 1 --clock thread    # robust on a shared machine
    python bench/upernet_step.py --size 256 --repeats 2        # a quicker look

Both: BEiT-B (768 wide, 12 blocks, per-layer relative position bias, LayerScale 0.1, drop path
off so that both compute the same thing), UperNet with 768 channels + the FCN auxiliary head
(weight 0.4), 150 classes, BatchNorm (one process). The loss is each library's own (ours:
mmseg's mean over all pixels; HF: mean over non-ignored ones — same cost). HF takes features
after blocks 2/4/6/10 with its ``out_indices`` convention (see segmentation/convert.py), so the
weights are exported with an identity 13th block: HF runs one block more than we do, which is
part of what a user of HF pays. The last line is one JSON object with ``ratio`` = HF step time ÷ ours.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from harness import emit, median, setup_threads, time_interleaved, timing_parser
from safetensors.torch import save_file

from beit_ds.config import ModelConfig
from beit_ds.config.segmentation import DecoderConfig
from beit_ds.segmentation.convert import to_hf_segmentation
from beit_ds.segmentation.model import BeitForSegmentation


def build(size: int, folder: Path) -> tuple[BeitForSegmentation, torch.nn.Module]:
    """Our UperNet-B and HF's, loaded (``from_pretrained``) from our export of the same weights."""
    from transformers import BeitForSemanticSegmentation

    cfg = ModelConfig(img_size=size, drop_path_rate=0.0, rel_pos_bias="per_layer", layer_scale_init=0.1)
    ours = BeitForSegmentation(cfg, DecoderConfig(num_classes=150))
    config, sd = to_hf_segmentation(ours)
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "beit", **config}))
    return ours, BeitForSemanticSegmentation.from_pretrained(folder)


def main() -> None:
    p = timing_parser(__doc__ or "", warmup=1, repeats=3)
    p.add_argument("--size", type=int, default=512, help="crop size (a multiple of 16)")
    p.add_argument("--batch", type=int, default=2, help="images per step (BatchNorm needs >= 2)")
    args = p.parse_args()
    setup_threads(args)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        ours, hf = build(args.size, Path(folder))
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 150, (args.batch, args.size, args.size))
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("beit_ds", ours), ("hf", hf))}

    def ours_step(seed: int) -> None:
        out = ours(images, labels)
        out.loss.backward()  # type: ignore[union-attr]
        opts["beit_ds"].step()
        opts["beit_ds"].zero_grad(set_to_none=True)

    def hf_step(seed: int) -> None:
        out = hf(pixel_values=images, labels=labels)
        out.loss.backward()
        opts["hf"].step()
        opts["hf"].zero_grad(set_to_none=True)

    times = time_interleaved({"beit_ds": ours_step, "hf": hf_step}, args.warmup, args.repeats, args.clock)
    med = {k: median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:8s} {t:8.2f} s/step  ({args.batch} x {args.size}² crops; {len(times[name])} timed)")
    print(f"HF / beit_ds: {med['hf'] / med['beit_ds']:.3f}")
    emit({"size": args.size, "batch": args.batch, "threads": torch.get_num_threads(), "clock": args.clock,
          "seconds": med, "ratio": med["hf"] / med["beit_ds"]})


if __name__ == "__main__":
    main()
