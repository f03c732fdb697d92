"""File lists of the CIFAR-10 study (``study.py``'s ``lists`` stage), as ``path,class`` lines.

From the 5000 train images of each class (seed 0, class-balanced, disjoint):
  - ``labelled.txt``: ``--labelled`` per class, the labels fine-tuning and probes train on;
  - ``val.txt``: ``--val`` per class, held out: hyper-parameters and probe blocks are chosen on it;
and ``test.txt``: ``--test`` per class of the 10,000 test images (default: all), only reported.
Pre-training and the tokenizer read all 50,000 train images without labels.

    python experiments/cifar10/make_lists.py <extracted cifar10_jpeg folder> <out dir> \\
        [--labelled 200] [--val 100] [--test 1000]
"""

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--labelled", type=int, default=200)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=1000)
    args = parser.parse_args()
    root = args.root.resolve()
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {"labelled": [], "val": [], "test": []}
    classes = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{root}/train: expected one folder of JPEGs per class")
    for folder in classes:
        files = sorted(folder.glob("*.jpg"))
        if len(files) < args.labelled + args.val:
            raise SystemExit(f"{folder}: {len(files)} images, fewer than --labelled + --val")
        pick = rng.permutation(len(files))
        chosen = {"labelled": pick[: args.labelled], "val": pick[args.labelled : args.labelled + args.val]}
        for split, idx in chosen.items():
            lists[split] += [f"{files[i]},{folder.name}" for i in sorted(idx)]
        test = sorted((root / "test" / folder.name).glob("*.jpg"))[: args.test]
        lists["test"] += [f"{f},{folder.name}" for f in test]
    args.out.mkdir(parents=True, exist_ok=True)
    for split, lines in lists.items():
        (args.out / f"{split}.txt").write_text("\n".join(lines) + "\n")
    print(", ".join(f"{len(v)} {k}" for k, v in lists.items()), f"images listed in {args.out}")


if __name__ == "__main__":
    main()
