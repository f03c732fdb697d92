"""Robust decoding: each kind of odd or broken file is converted or skipped with its reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from beit_ds.data import LoaderPlace, build_pretrain_loader
from beit_ds.data.decode import decode, open_image
from beit_ds.data.skips import DataError, SkipSample

LIMIT = 1_000_000  # max_image_pixels used by these tests
GRID = (8, 8)


def _png(image: Image.Image, **save_args) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **save_args)
    return buf.getvalue()


def _cmyk_jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), from uint16 [H, W, 3]."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def broken_files(photo: np.ndarray, jpeg_bytes) -> dict[str, tuple[bytes, str]]:
    """name → (bytes, the reason it must be skipped for)."""
    good = jpeg_bytes(photo)
    huffman = bytearray(good)
    at = good.find(b"\xff\xc4")
    huffman[at + 4 : at + 30] = b"\xff" * 26
    return {
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "corrupt.jpg": (bytes(huffman), "corrupt"),
        "empty.jpg": (b"", "empty"),
        "not_image.jpg": (b"these are not the pixels you are looking for\n", "not_an_image"),
        "bomb.png": (_png(Image.new("L", (1200, 1000), 7)), "too_large"),
    }


def _decode(data: bytes) -> np.ndarray:
    image, scale = decode(open_image(data, "test", LIMIT))
    assert image.mode == "RGB" and scale == 1.0
    return np.asarray(image).astype(np.int64)


@pytest.mark.parametrize("name", ["truncated.jpg", "corrupt.jpg", "empty.jpg", "not_image.jpg", "bomb.png"])
def test_broken_file_is_skipped_with_its_reason(photos, jpeg_bytes, name):
    data, reason = broken_files(photos[0], jpeg_bytes)[name]
    with pytest.raises(SkipSample) as info:
        decode(open_image(data, name, LIMIT))
    assert info.value.reason == reason


def test_odd_modes_become_rgb_with_the_expected_pixels(photos, jpeg_bytes):
    rgb = photos[1][:40, :50]
    rng = np.random.default_rng(0)
    cmyk = _decode(_cmyk_jpeg(rgb))
    assert np.abs(cmyk - rgb).mean() < 6  # CMYK JPEG → RGB, JPEG loss only
    gray = _decode(_png(Image.fromarray(rgb).convert("L")))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent = int(np.asarray(palette)[0, 0])
    decoded = _decode(_png(palette, transparency=transparent))
    assert (decoded[np.asarray(palette) == transparent] == 255).all()  # transparent → white
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0
    decoded = _decode(_png(Image.fromarray(rgba, "RGBA")))
    assert (decoded[:10] == 255).all() and (decoded[10:] == rgb[10:]).all()
    deep = rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)
    assert (_decode(_png(Image.fromarray(deep)))[..., 0] == deep >> 8).all()  # 16-bit gray: high byte
    deep_rgb = rng.integers(0, 65536, size=(20, 30, 3), dtype=np.uint16)
    assert (_decode(png16_rgb(deep_rgb)) == deep_rgb >> 8).all()  # 16-bit RGB: high byte


def test_exif_rotation_is_applied_before_cropping(photos, jpeg_bytes):
    photo = photos[2][:40, :60]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = jpeg_bytes(photo, exif=exif.tobytes())
    enc = open_image(data, "rotated.jpg", LIMIT)
    assert enc.image.size == (60, 40) and enc.size == (40, 60)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(np.asarray(decode(enc)[0]), expected)


def _write_mixed_folder(folder: Path, photos: list[np.ndarray], jpeg_bytes) -> list[str]:
    folder.mkdir()
    for name, (data, _) in broken_files(photos[0], jpeg_bytes).items():
        (folder / name).write_bytes(data)
    for i, photo in enumerate(photos):
        (folder / f"good{i}.jpg").write_bytes(jpeg_bytes(photo))
    (folder / "gray16.png").write_bytes(_png(Image.fromarray(np.full((30, 40), 40000, np.uint16))))
    (folder / "cmyk.jpg").write_bytes(_cmyk_jpeg(photos[0]))
    (folder / "notes.txt").write_text("not an image, ignored while listing")
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".txt")


def test_folder_of_bad_files_is_reported_never_crashes(tmp_path, photos, jpeg_bytes, tiny_data, tiny_masking):
    files = _write_mixed_folder(tmp_path / "mixed", photos, jpeg_bytes)
    cfg = tiny_data(
        source="folder", path=str(tmp_path / "mixed"), max_skip_fraction=1.0, max_image_pixels=LIMIT
    )
    loader = build_pretrain_loader(cfg, tiny_masking, GRID, LoaderPlace(batch_size=len(files)))
    batches = list(loader)
    assert len(batches) == 1 and len(batches[0]) == len(files)  # every slot filled by a substitute
    report = loader.report
    for name, (_, reason) in broken_files(photos[0], jpeg_bytes).items():
        assert report.counts[reason] >= 1
        assert any(path.endswith(name) for path in report.examples[reason])
    assert report.counts["ignored"] == 1 and report.examples["ignored"] == ["notes.txt"]
    assert report.loaded == len(files) and report.skipped >= 5
    assert "truncated" in report.summary() and report.as_metrics()["data_skipped"] == report.skipped


def test_too_many_skips_fail_fast_with_the_report(tmp_path, photos, jpeg_bytes, tiny_data, tiny_masking):
    _write_mixed_folder(tmp_path / "mixed", photos, jpeg_bytes)
    cfg = tiny_data(source="folder", path=str(tmp_path / "mixed"), max_skip_fraction=0.05, repeats=8)
    loader = build_pretrain_loader(cfg, tiny_masking, GRID, LoaderPlace(batch_size=8))
    pattern = r"data.max_skip_fraction=0.05: 4 of 13 distinct files read were bad \(30.8%\); .*truncated"
    with pytest.raises(DataError, match=pattern):
        list(loader)
