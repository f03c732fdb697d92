"""beit_ds: BEiT masked-image-modeling pre-training and fine-tuning on DeepSpeed."""

from beit_ds.models import create_model

__version__ = "0.1.0"

__all__ = ["__version__", "create_model"]
