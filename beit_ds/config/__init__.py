"""Typed configuration sections, one module per concept (house style rule 3).

``validate`` holds the one public set of validators; ``model`` the backbone, MIM head and
masking; ``presets`` the named model sizes; ``data`` the data pipeline (``LoaderConfig``: the
keys every data section has) and ``seg_data`` segmentation's; ``tokenizer`` the visual tokenizers
and their table; ``vqkd`` BEiT v2's VQ-KD tokenizer and its teacher; ``finetune`` the fine-tuning, augmentation and probe sections (``TuneConfig``:
the keys every fine-tuning has); ``train`` the sections every training recipe has (optimizer,
schedule, checkpoints, logging). Each section is a dataclass validated in
``__post_init__``: a bad value raises ``ConfigError`` with one line naming ``section.key``, the
value and what is expected. The package imports no torch, so that recipes can be checked before
any process group starts. Recipe roots are in ``beit_ds/recipe.py``.
"""

from beit_ds.config.data import (
    DATA_SOURCES,
    INTERPOLATIONS,
    TOKENIZER_VIEWS,
    DataConfig,
    LoaderConfig,
    TransformConfig,
)
from beit_ds.config.finetune import HEAD_POLICIES, AugmentConfig, FinetuneConfig, ProbeConfig, TuneConfig
from beit_ds.config.model import MaskingConfig, MIMConfig, ModelConfig
from beit_ds.config.seg_data import SEG_SOURCES, SegDataConfig, SegTransformConfig, reduces_zero_label
from beit_ds.config.tokenizer import TOKENIZER_DTYPES, TOKENIZER_NAMES, DVAEConfig, TokenizerConfig
from beit_ds.config.validate import ConfigError
from beit_ds.config.vqkd import TeacherConfig, VQKDConfig

__all__ = [
    "DATA_SOURCES",
    "HEAD_POLICIES",
    "INTERPOLATIONS",
    "SEG_SOURCES",
    "TOKENIZER_DTYPES",
    "TOKENIZER_NAMES",
    "TOKENIZER_VIEWS",
    "AugmentConfig",
    "ConfigError",
    "DVAEConfig",
    "DataConfig",
    "FinetuneConfig",
    "LoaderConfig",
    "MIMConfig",
    "MaskingConfig",
    "ModelConfig",
    "ProbeConfig",
    "SegDataConfig",
    "SegTransformConfig",
    "TeacherConfig",
    "TokenizerConfig",
    "TransformConfig",
    "TuneConfig",
    "VQKDConfig",
    "reduces_zero_label",
]
