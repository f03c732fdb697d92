"""beit_ds: BEiT masked-image-modeling pre-training and fine-tuning on DeepSpeed.

``create_model`` is loaded on first use, so that importing a torch-free module of the package
(``beit_ds.config``, ``beit_ds.config_io``) does not import torch.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model"]


def __getattr__(name: str) -> Any:
    if name == "create_model":
        from beit_ds.models import create_model

        return create_model
    raise AttributeError(f"module 'beit_ds' has no attribute {name!r}")
