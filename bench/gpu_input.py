"""Inputs of ``bench/gpu_pretrain.py``: the real pre-training loader on a JPEG archive (repeated),
and a GPU-decoding variant (``torchvision.io.decode_jpeg`` on the device).

``loader_batches`` is the job's own ``build_pretrain_loader`` (workers, pinned memory, two views
and Algorithm-1 masks) on ``data.source: archive``. ``DeviceDecoder`` reads the archive's JPEG
bytes into memory once and, per batch, decodes them on ``device`` and crops/resizes there: a
random-resized crop to both views (bicubic, antialiased), no colour jitter, the same synthetic
masks every step. It measures what moving decoding to the GPU would buy; it is not the job's
augmentation.
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from beit_ds.config import MaskingConfig, ModelConfig
from beit_ds.data.collate import MIMBatch

JPEG = (".jpg", ".jpeg")


def loader_batches(archive: Path, model: ModelConfig, tokenizer_size: int, batch: int, workers: int,
                   repeats: int) -> Iterator[MIMBatch]:
    """Endless ``MIMBatch``es of the job's loader over ``archive`` × ``repeats``, ``workers`` workers."""
    from beit_ds.config import DataConfig, TransformConfig
    from beit_ds.data import LoaderPlace, build_pretrain_loader

    masked = int(0.4 * model.num_patches)
    masking = MaskingConfig(num_masking_patches=masked, min_block_patches=min(16, masked))
    transform = TransformConfig(input_size=model.img_size, second_input_size=tokenizer_size)
    data = DataConfig(source="archive", path=str(archive), repeats=repeats, num_workers=workers, transform=transform)
    loader = build_pretrain_loader(data, masking, model.grid_size, LoaderPlace(batch))
    epoch = 0
    while True:
        yield from loader.at(epoch)
        epoch += 1


class DeviceDecoder:
    """``next(decoder)``: a ``MIMBatch`` decoded and resized on ``device`` from in-memory JPEGs."""

    def __init__(self, archive: Path, size: int, second: int, template: MIMBatch, device: torch.device) -> None:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(JPEG)]
            blobs = [tar.extractfile(m).read() for m in members]  # type: ignore[union-attr]
        self.data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        self.size, self.second, self.template, self.device = size, second, template, device
        self.batch, self.next_index = len(template), 0
        self.gen = torch.Generator().manual_seed(0)

    def __iter__(self) -> DeviceDecoder:
        return self

    def __next__(self) -> MIMBatch:
        from torchvision.io import ImageReadMode, decode_jpeg

        picks = [self.data[(self.next_index + i) % len(self.data)] for i in range(self.batch)]
        self.next_index += self.batch
        device = "cuda" if self.device.type == "cuda" else "cpu"
        images = decode_jpeg(picks, mode=ImageReadMode.RGB, device=device)
        views = [self._views(img) for img in images]
        t = self.template
        return MIMBatch(images=torch.stack([v[0] for v in views]), tokenizer_images=torch.stack([v[1] for v in views]),
                        bool_masked_pos=t.bool_masked_pos.to(self.device), indices=t.indices.to(self.device))

    def _views(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``uint8 [3, H, W]`` -> (normalised ``[3, size, size]``, DALL-E-mapped ``[3, second, second]``)."""
        _, h, w = img.shape
        area = h * w * float(torch.empty(1).uniform_(0.08, 1.0, generator=self.gen))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=self.gen)))
        ch, cw = min(h, int(round(math.sqrt(area / aspect)))), min(w, int(round(math.sqrt(area * aspect))))
        top, left = int(torch.randint(0, h - ch + 1, (1,), generator=self.gen)), int(
            torch.randint(0, w - cw + 1, (1,), generator=self.gen))
        crop = img[None, :, top:top + ch, left:left + cw].float() / 255.0

        def resize(s: int) -> torch.Tensor:
            return F.interpolate(crop, size=(s, s), mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)

        return (resize(self.size) - 0.5) / 0.5, 0.1 + 0.8 * resize(self.second)
