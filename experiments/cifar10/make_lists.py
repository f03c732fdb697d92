"""File lists for the CIFAR-10 fine-tuning stages: a class-balanced random subset of the train images
(2000 of the 5000 per class, seed 0) and all 10,000 test images, as ``path,class`` lines.

    python experiments/cifar10/make_lists.py <extracted cifar10_jpeg folder> <out dir>
"""

import sys
from pathlib import Path

import numpy as np

PER_CLASS = 2000


def main() -> None:
    root, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    rng = np.random.default_rng(0)
    train, test = [], []
    for folder in sorted((root / "train").iterdir()):
        files = sorted(folder.glob("*.jpg"))
        train += [f"{files[i]},{folder.name}" for i in sorted(rng.choice(len(files), PER_CLASS, replace=False))]
        test += [f"{f},{folder.name}" for f in sorted((root / "test" / folder.name).glob("*.jpg"))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifar10_train_20k.txt").write_text("\n".join(train) + "\n")
    (out / "cifar10_test.txt").write_text("\n".join(test) + "\n")
    print(f"{len(train)} train, {len(test)} test images listed in {out}")


if __name__ == "__main__":
    main()
