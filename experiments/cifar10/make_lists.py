"""File lists of the CIFAR-10 study (``study.py``'s ``lists`` stage), as ``path,class`` lines.

From the 5000 train images of each class (seed 0, class-balanced, disjoint):
  - ``labelled.txt``: ``--labelled`` per class, the labels fine-tuning and probes train on;
  - ``val.txt``: ``--val`` per class, held out: hyper-parameters and probe blocks are chosen on it;
and ``test.txt``: ``--test`` per class of the 10,000 test images (default: all), only reported.
Pre-training and the tokenizer read all 50,000 train images without labels. ``--full N`` (the GPU
study, ``gpu_study.py``) also writes ``full.txt``: the labelled images plus the next ones of the
class's permutation up to N per class (-1: every train image outside val; the all-labels regime),
and ``unlabelled.txt``: ``full.txt`` and ``val.txt`` together (what pre-training reads).

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
    parser.add_argument("--full", type=int, default=0, help="also full.txt, unlabelled.txt (-1: all but val)")
    args = parser.parse_args()
    root = args.root.resolve()
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {"labelled": [], "val": [], "test": []}
    if args.full:
        lists |= {"full": [], "unlabelled": []}
    classes = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"{root}/train: expected one folder of JPEGs per class")
    for folder in classes:
        files = sorted(folder.glob("*.jpg"))
        if len(files) < args.labelled + args.val:
            raise SystemExit(f"{folder}: {len(files)} images, fewer than --labelled + --val")
        pick = rng.permutation(len(files))
        chosen = {"labelled": pick[: args.labelled], "val": pick[args.labelled : args.labelled + args.val]}
        if args.full:
            rest = pick[args.labelled + args.val :][: None if args.full < 0 else max(0, args.full - args.labelled)]
            chosen["full"] = np.concatenate([chosen["labelled"], rest])
            chosen["unlabelled"] = np.concatenate([chosen["full"], chosen["val"]])
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
