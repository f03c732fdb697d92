"""Named model sizes (seed §5 and App. B; house style rule 7: sizes are data).

Names follow timm. The defaults are timm's BEiT layout (LayerScale 0.1, per-layer relative
position bias, no absolute position embedding); pre-training recipes switch to the shared bias
of BEiT+ with ``rel_pos_bias: shared``. Torch-free data: ``config_io`` expands ``model.preset``
from it and ``beit_ds.models`` builds ``create_model(name)`` on it.
"""

from __future__ import annotations

from beit_ds.config.model import ModelConfig

_WIDTHS = {  # name: (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _presets() -> dict[str, ModelConfig]:
    presets: dict[str, ModelConfig] = {}
    for size, (dim, depth, heads) in _WIDTHS.items():
        for img in (224, 384):
            presets[f"beit_{size}_patch16_{img}"] = ModelConfig(
                img_size=img, patch_size=16, embed_dim=dim, depth=depth, num_heads=heads
            )
    presets["beit_large_patch16_512"] = ModelConfig(img_size=512, embed_dim=1024, depth=24, num_heads=16)
    # A few-thousand-parameter model on 32x32 images (8x8 grid) for unit tests and CPU demos.
    presets["beit_debug_patch4_32"] = ModelConfig(
        img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.0
    )
    return presets


PRESETS: dict[str, ModelConfig] = _presets()
"""``{name: ModelConfig}``: what ``model.preset`` and ``create_model`` accept."""
