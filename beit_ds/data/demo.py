"""The embedded ``demo`` source: real photographs that every install already has.

scikit-image (a declared dependency) ships CC0 / public-domain test photographs inside its wheel,
in ``skimage/data/``; no download is involved. The demo source reads those files through the same
decode path as any folder (PNG and JPEG, colour and grayscale), so the README's one-command run and
the fast tests exercise the real pipeline. Random-resized crops of the 14 photographs, visited
``data.repeats`` times per epoch, give a few hundred distinct samples per epoch at 32 px.

Labels: the class of an image is the photograph it comes from (``classes`` = the names below).
Fine-tuning on it asks "which photo is this crop from"; its evaluation split is the same 14
photographs with the deterministic evaluation crop, a pipeline check rather than a benchmark.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from beit_ds.data.records import Records, StringTable
from beit_ds.data.skips import DataError

# (class name, file in skimage/data): natural photographs only, no synthetic test patterns.
DEMO_PHOTOS = (
    ("astronaut", "astronaut.png"),
    ("coffee", "coffee.png"),
    ("chelsea", "chelsea.png"),
    ("rocket", "rocket.jpg"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("retina", "retina.jpg"),
    ("motorcycle", "motorcycle_left.png"),
    ("camera", "camera.png"),  # grayscale from here on: decoded to RGB like any gray image
    ("coins", "coins.png"),
    ("moon", "moon.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("brick", "brick.png"),
)


def demo_folder() -> Path:
    """``skimage/data`` of the installed scikit-image."""
    try:
        return Path(str(resources.files("skimage") / "data"))
    except ModuleNotFoundError as err:
        raise DataError(
            "data.source='demo': scikit-image is not installed (pip install scikit-image)"
        ) from err


def demo_records() -> Records:
    """The demo photographs present in this install, labelled by photograph."""
    folder = demo_folder()
    present = [(name, file) for name, file in DEMO_PHOTOS if (folder / file).is_file()]
    if not present:
        raise DataError(f"data.source='demo': none of the demo photographs are in {folder}")
    return Records(
        name="demo",
        root=str(folder),
        keys=StringTable.from_strings([file for _, file in present]),
        labels=np.arange(len(present), dtype=np.int64),
        classes=tuple(name for name, _ in present),
    )
