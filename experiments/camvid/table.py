"""The CamVid result tables of docs/RESULTS.md from the runs' ``test.json`` files.

    python experiments/camvid/table.py /tmp/beit_camvid

Prints, as markdown: mIoU / mAcc / aAcc per run, mean ± sample std per arm (BEiT-initialised vs
scratch) with the difference of the means and the spread that decides whether it exceeds noise,
and the per-class IoU of each arm (mean over seeds).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main(out: Path) -> None:
    arms: dict[str, list[dict]] = {"beit": [], "scratch": []}
    print("| run | mIoU | mAcc | aAcc |\n|:--|--:|--:|--:|")
    for arm in arms:
        for run in sorted(out.glob(f"{arm}_seed*")):
            if (run / "test.json").is_file():
                r = json.loads((run / "test.json").read_text())
                arms[arm].append(r)
                print(f"| {run.name} | {r['mIoU']:.2f} | {r['mAcc']:.2f} | {r['aAcc']:.2f} |")
    print("\n| arm | seeds | mIoU | mAcc | aAcc |\n|:--|--:|--:|--:|--:|")
    means = {}
    for arm, rows in arms.items():
        if not rows:
            continue
        cells = []
        for key in ("mIoU", "mAcc", "aAcc"):
            m, s = _mean_std([r[key] for r in rows])
            cells.append(f"{m:.2f} ± {s:.2f}")
            means.setdefault(arm, {})[key] = (m, s)
        print(f"| {arm} | {len(rows)} | " + " | ".join(cells) + " |")
    if len(means) == 2:
        (mb, sb), (ms, ss) = means["beit"]["mIoU"], means["scratch"]["mIoU"]
        verdict = ("undecided: fewer than 2 seeds in an arm, so no spread to compare with"
                   if min(len(arms["beit"]), len(arms["scratch"])) < 2
                   else f"{'exceeds' if abs(mb - ms) > 2 * max(sb, ss) else 'does not exceed'} twice the larger spread")
        print(f"\nmIoU difference (BEiT - scratch): {mb - ms:+.2f} points; seed std {sb:.2f} / {ss:.2f} -> {verdict}")
    print("\n| class | " + " | ".join(arms) + " |\n|:--|" + "--:|" * len(arms))
    for c, name in enumerate(CLASSES):
        cells = []
        for rows in arms.values():
            values = [r["per_class_iou"][c] for r in rows if r["per_class_iou"][c] == r["per_class_iou"][c]]
            cells.append(f"{statistics.fmean(values):.1f}" if values else "n/a")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
