"""beit_ds: BEiT (BERT pre-training of image Transformers) on DeepSpeed."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = next(
    line.split('"')[1]
    for line in (ROOT / "beit_ds" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="beit_ds",
    version=VERSION,
    description="BEiT masked-image-modeling pre-training and fine-tuning at cluster scale on DeepSpeed",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["beit_ds", "beit_ds.*"]),
    package_data={"beit_ds": ["py.typed", "recipes/*.yaml", "assets/*.safetensors", "assets/demo_teacher/*"]},
    entry_points={"console_scripts": ["beit-ds=beit_ds.cli:main"]},
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "deepspeed>=0.18.6",  # 0.18.6 fixed bf16 + ZeRO stage 0 (gradients divided by 65536, never zeroed)
        "timm>=1.0.9",
        "numpy>=1.24",
        "pillow>=10.0",
        "pyyaml>=6.0",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "scikit-image>=0.22",  # ships the CC0 demo photographs (skimage.data)
    ],
    extras_require={
        "viz": ["matplotlib>=3.7"],  # launch/visualize.py curves (attention / MIM pictures need Pillow only)
        "clip": ["open_clip_torch>=3.0"],  # VQ-KD's CLIP teacher (teacher.source: open_clip), from a local file
        # NVIDIA apex is optional and never required: torch / DeepSpeed fused kernels are the default.
        # It is not on PyPI (the PyPI "apex" is an unrelated package); build it from NVIDIA's sources.
        "dev": [
            "pytest>=8.0",
            "pytest-timeout>=2.2",
            "transformers>=5.0",  # interop tests: our export loads into BeitModel (5.x module names)
            "ruff>=0.6",
            "mypy>=1.10",  # type check of beit_ds/ in .ci/run (pyproject.toml [tool.mypy])
            "DALL-E==0.1",  # parity tests of our DALL-E-compatible tokenizer (never imported by the product)
            "attrs>=23.1",  # dall_e imports `attr` but does not declare it
            "psutil>=5.9",  # tests watch the ranks of a launcher process tree
            "matplotlib>=3.7",  # = the viz extra: tests/visualize draws curves
            "open_clip_torch>=3.0",  # = the clip extra: the VQ-KD teacher parity tests build ViT-B/16 offline
        ],
    },
)
