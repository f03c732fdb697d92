"""A split decoded once into one uint8 array, cached on disk: the on-device data path's source.

Every image of ``Records`` is read and decoded (``decode.py``: EXIF rotation, any mode to RGB) into
``pixels [M, H, W, 3]`` uint8. Images of different sizes are an error unless ``data.on_device_size``
is set: then each image's centred square is resized (PIL bicubic, antialiased) to ``size × size``
at decode — the shorter side to ``size`` and a centre crop. Undecodable images are skipped and
reported as the loader path does; table entry ``i`` then reads the next good entry (``i + 1``, …,
up to ``MAX_SUBSTITUTES`` on; its label too), as ``datasets.load_substituting`` does.

The array is written once into ``<cache>/decoded-<folder>-<hash>.npz`` (``data.cache_dir``, else
beside the archive extraction cache), the hash covering the list of images, each file's size and
modification time (or each tar member's place), the labels and the decode size; later runs (and
the other ranks, which wait on a lock while the first decodes) read it back. Written atomically,
never through a link (``safe_write``); an unreadable cache file is decoded again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from beit_ds.data.archive import default_cache_dir
from beit_ds.data.decode import decode, open_image
from beit_ds.data.records import ByteReader, Records
from beit_ds.data.skips import DataError, SkipSample
from beit_ds.safe_write import open_regular, replacing

FORMAT = 1  # bump when the cached arrays change meaning
MAX_SUBSTITUTES = 16  # as ImageDataset: entries tried after a bad one
PROGRESS_SECONDS = 5.0

log = logging.getLogger(__name__)


@dataclass
class DecodedImages:
    """``pixels [M, H, W, 3]`` uint8 (the good images), ``rows [N]`` int64 (the row table entry
    ``i`` reads), ``labels [M]`` int64 per row or None, ``skips``: (reason, path, table index)."""

    pixels: np.ndarray
    rows: np.ndarray
    labels: np.ndarray | None
    skips: list[tuple[str, str, int]]

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every image."""
        return int(self.pixels.shape[2]), int(self.pixels.shape[1])


def signature(records: Records, size: int, max_pixels: int) -> str:
    """16 hex digits naming what ``decode_split`` would produce for ``records``."""
    h = hashlib.sha256(f"{FORMAT}|{size}|{max_pixels}|{records.root}|{records.classes}".encode())
    h.update(records.keys.blob.tobytes())
    h.update(records.keys.offsets.tobytes())
    for array in (records.labels, records.container_ids, records.offsets, records.sizes):
        h.update(b"-" if array is None else array.tobytes())
    files = records.containers or tuple(os.path.join(records.root, records.keys[i]) for i in range(len(records)))
    for path in files:
        try:
            st = os.stat(path)
            h.update(f"{st.st_size}|{st.st_mtime_ns};".encode())
        except OSError:
            h.update(b"missing;")
    return h.hexdigest()[:16]


def _square(image: Image.Image, size: int) -> Image.Image:
    """The centred square of ``image`` resized to ``size²`` (bicubic, antialiased)."""
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    if side == size and (w, h) == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


class _Decoder:
    """Decodes table entries into a preallocated array, checking sizes and logging progress."""

    def __init__(self, records: Records, size: int, max_pixels: int) -> None:
        self.records, self.size, self.max_pixels = records, size, max_pixels
        self.read = ByteReader(records)
        self.pixels: np.ndarray | None = None
        self.first = ""

    def image(self, i: int) -> np.ndarray:
        """Entry ``i`` as ``[H, W, 3]`` uint8 (raises ``SkipSample``)."""
        path = self.records.location(i)
        image, _ = decode(open_image(self.read(i), path, self.max_pixels))
        if self.size:
            image = _square(image, self.size)
        return np.asarray(image, dtype=np.uint8)

    def store(self, row: int, array: np.ndarray, path: str) -> None:
        if self.pixels is None:
            self.pixels = np.empty((len(self.records), *array.shape), dtype=np.uint8)
            self.first = path
        if array.shape != self.pixels.shape[1:]:
            h, w = self.pixels.shape[1:3]
            raise DataError(
                f"data.on_device_size=0: images differ in size ({self.first} is {w}x{h}, {path} is"
                f" {array.shape[1]}x{array.shape[0]}); set data.on_device_size=N to resize each image's"
                " centred square to NxN at decode"
            )
        self.pixels[row] = array


def decode_split(records: Records, size: int, max_pixels: int) -> DecodedImages:
    """Decode every image of ``records`` (``size`` as ``data.on_device_size``), logging progress."""
    decoder, n = _Decoder(records, size, max_pixels), len(records)
    good = np.zeros(n, dtype=bool)
    skips: list[tuple[str, str, int]] = []
    start = last = time.monotonic()
    kept = 0
    for i in range(n):
        try:
            decoder.store(kept, decoder.image(i), records.location(i))
            good[i], kept = True, kept + 1
        except SkipSample as skip:
            skips.append((skip.reason, skip.path or records.location(i), i))
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS:
            rate = (i + 1) / (now - start)
            log.info("decoding %s: %d / %d images, %.0f img/s, ETA %.0f s", records.name, i + 1, n, rate, (n - i - 1) / rate)
            last = now
    if decoder.pixels is None:
        raise DataError(f"{records.name}: none of the {n} images could be decoded ({skips[0][0]}: {skips[0][1]})")
    return DecodedImages(decoder.pixels[:kept], substitute_rows(good, records), _row_labels(records, good), skips)


def substitute_rows(good: np.ndarray, records: Records) -> np.ndarray:
    """``[N]`` int64: the pixel row each table entry reads — its own, or the next good entry's."""
    n = len(good)
    row_of = np.cumsum(good) - 1  # the row of each good entry
    rows = np.full(n, -1, dtype=np.int64)
    for attempt in range(min(MAX_SUBSTITUTES + 1, n)):
        entry = (np.arange(n) + attempt) % n
        take = (rows < 0) & good[entry]
        rows[take] = row_of[entry[take]]
    if (rows < 0).any():
        first = int(np.flatnonzero(rows < 0)[0])
        raise DataError(
            f"{MAX_SUBSTITUTES + 1} images in a row failed to decode, from {records.location(first)}"
        )
    return rows


def _row_labels(records: Records, good: np.ndarray) -> np.ndarray | None:
    return None if records.labels is None else records.labels[good].astype(np.int64)


def _write(path: Path, images: DecodedImages) -> None:
    skips = images.skips
    labels = images.labels if images.labels is not None else np.zeros(0, dtype=np.int64)
    with replacing(path) as tmp:
        with os.fdopen(open_regular(tmp, os.O_WRONLY | os.O_TRUNC), "wb") as f:
            np.savez(
                f, pixels=images.pixels, rows=images.rows, labels=labels, labelled=np.array(images.labels is not None),
                skip_reasons=np.array([s[0] for s in skips], dtype=str),
                skip_paths=np.array([s[1] for s in skips], dtype=str),
                skip_files=np.array([s[2] for s in skips], dtype=np.int64),
            )


def _read(path: Path) -> DecodedImages | None:
    """The cached arrays, or None when the file is missing or unreadable."""
    try:
        with os.fdopen(open_regular(path, os.O_RDONLY), "rb") as f, np.load(f, allow_pickle=False) as z:
            labels = z["labels"] if bool(z["labelled"]) else None
            skips = [(str(r), str(p), int(i)) for r, p, i in zip(z["skip_reasons"], z["skip_paths"], z["skip_files"])]
            return DecodedImages(z["pixels"], z["rows"], labels, skips)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("%s: unreadable decoded cache (%s); decoding again", path, err)
        return None


def cached_split(records: Records, size: int, max_pixels: int, cache_dir: Path | None) -> DecodedImages:
    """``decode_split`` of ``records``, read from the cache when a run decoded it before."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.cache_dir={str(cache)!r}: cannot create the cache folder ({err})") from err
    folder = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(records.root).name) or "images"
    path = cache / f"decoded-{folder}-{signature(records, size, max_pixels)}.npz"
    images = _read(path)
    if images is not None:
        return images
    lock = open_regular(cache / f"{path.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be decoding: wait for its file
        images = _read(path)
        if images is None:
            log.info("decoding %d images of %s once into %s", len(records), records.name, path)
            images = decode_split(records, size, max_pixels)
            _write(path, images)
    finally:
        os.close(lock)
    return images
