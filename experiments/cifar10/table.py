"""The result tables and plots of the CIFAR-10 study (``study.py``'s ``table`` stage).

    python experiments/cifar10/table.py /tmp/beit_cifar [--seeds 0 1 2] [--depth 6] [--docs docs]

Reads every run's ``DONE.json`` (wall time), ``test.json`` (test top-1) and ``metrics.jsonl`` (val
top-1 per epoch, MIM loss), writes ``results.md`` (one table per claim: mean ± sample std over the
seeds, the difference of the means, Welch's two-sided t-test, a verdict) and two PNGs,
``cifar10_convergence.png`` and ``cifar10_probe_blocks.png``, into the study folder (and ``--docs``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import stats

# (claim, better arm, worse arm): fine-tuning test top-1 of ft_<arm>_*
FINETUNE_CLAIMS = (
    ("pre-training helps (Table 1, App. F)", "long", "scratch"),
    ("blockwise > random masking (Table 4)", "short", "random"),
    ("visual tokens > pixel regression (Table 4)", "short", "pixels"),
    ("masked positions only > all positions (Table 4)", "short", "all"),
    ("longer pre-training > shorter (Table 4)", "long", "short"),
)
ARM_TEXT = {
    "scratch": "random weights (no pre-training)",
    "long": "BEiT, 2S steps (blockwise, tokens, masked only)",
    "short": "BEiT, S steps (blockwise, tokens, masked only)",
    "random": "S steps, random masking",
    "pixels": "S steps, raw-pixel regression",
    "all": "S steps, loss on all positions",
}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def val_curve(run: Path) -> list[float]:
    """val top-1 after each epoch (one value per distinct logged step)."""
    seen: dict[int, float] = {}
    for r in _metrics(run):
        if "val/top1" in r:
            seen[int(r["step"])] = float(r["val/top1"])
    return [seen[k] for k in sorted(seen)]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def compare(better: list[float], worse: list[float]) -> tuple[float, float, str]:
    """Difference of the means, Welch's two-sided p, and the verdict on 'better > worse'."""
    diff = statistics.fmean(better) - statistics.fmean(worse)
    if len(better) < 2 or len(worse) < 2:
        return diff, math.nan, "undecided (fewer than 2 seeds)"
    if statistics.stdev(better) == 0 and statistics.stdev(worse) == 0:
        p = 0.0 if diff != 0 else 1.0
    else:
        p = float(stats.ttest_ind(better, worse, equal_var=False).pvalue)
    if p < 0.05:
        return diff, p, "**holds**" if diff > 0 else "**reversed** (significant)"
    if diff == 0:
        return diff, p, "does not hold (no difference)"
    return diff, p, "same direction, within noise" if diff > 0 else "does not hold (opposite, within noise)"


def cell(values: list[float]) -> str:
    m, s = mean_std(values)
    return f"{m:.2f} ± {s:.2f}" if not math.isnan(s) else f"{m:.2f}"


def test_top1(out: Path, pattern: str, seeds: list[int]) -> list[float]:
    """Test top-1 of every finished run matching ``pattern`` (``{seed}`` filled in), seed by seed."""
    vals = []
    for seed in seeds:
        hits = sorted(out.glob(pattern.format(seed=seed)))
        vals += [_json(h / "test.json")["top1"] for h in hits if (h / "test.json").exists()]
    return vals


def write_results(out: Path, seeds: list[int], depth: int, docs: Path | None = None) -> str:
    finetune, curves = _finetune_tables(out, seeds)
    probes, per_block, pl, best = _probe_tables(out, seeds, depth)
    text = "\n".join(finetune + probes + pretrain_lines(out) + wall_lines(out)) + "\n"
    (out / "results.md").write_text(text)
    _plots(out, curves, per_block, pl, best, depth, [out] + ([docs] if docs else []))
    print(text)
    return text


def _finetune_tables(out: Path, seeds: list[int]) -> tuple[list[str], dict]:
    """Fine-tuning test top-1 per arm, its claims, and the convergence table (+ the curves)."""
    ft = {arm: test_top1(out, f"ft_{arm}_lr*_s{{seed}}", seeds) for arm in ARM_TEXT}
    sweep = _json(out / "sweep.json")
    lines = ["### Fine-tuning: test top-1 % per arm", "",
              f"lr chosen on the held-out val split: scratch {sweep['scratch']:g}, pre-trained arms {sweep['long']:g}.",
              "", *arm_lines(ft, ARM_TEXT)]
    lines += ["", "### Claims (fine-tuning test top-1; Welch's t-test over the seeds, two-sided)", "",
              *claim_lines(ft, FINETUNE_CLAIMS)]
    # convergence: val top-1 after each epoch, long vs scratch
    curves = {arm: finished_curves(out, f"ft_{arm}_lr*_s{{seed}}", seeds) for arm in ("long", "scratch")}
    if curves["long"] and curves["scratch"]:
        lines += ["", "### Convergence (Fig. 3): held-out val top-1 % after each fine-tuning epoch (mean ± std over seeds)", "",
                  *convergence_lines(curves)]
    return lines, curves


def arm_lines(ft: dict[str, list[float]], arm_text: dict[str, str]) -> list[str]:
    """A table of test top-1 per arm: seeds, mean ± std and every seed's value."""
    lines = ["| arm | pre-training | seeds | test top-1 % (mean ± std) | per seed |", "|:--|:--|--:|--:|:--|"]
    for arm, vals in ft.items():
        lines.append(f"| `{arm}` | {arm_text[arm]} | {len(vals)} | {cell(vals) if vals else '—'} | "
                     + ", ".join(f"{v:.2f}" for v in vals) + " |")
    return lines


def claim_lines(ft: dict[str, list[float]], claims: tuple[tuple[str, str, str], ...]) -> list[str]:
    """A table of the ``(claim, better arm, worse arm)`` claims whose arms both have results:
    difference of the means, Welch's p and the verdict."""
    lines = ["| claim | arms | Δ mean (points) | p | verdict |", "|:--|:--|--:|--:|:--|"]
    for claim, a, b in claims:
        if ft.get(a) and ft.get(b):
            diff, p, verdict = compare(ft[a], ft[b])
            lines.append(f"| {claim} | `{a}` {cell(ft[a])} vs `{b}` {cell(ft[b])} | {diff:+.2f} | {p:.3g} | {verdict} |")
    return lines


def finished_curves(out: Path, pattern: str, seeds: list[int]) -> list[list[float]]:
    """The val top-1 curve of every run matching ``pattern`` (``{seed}`` filled in) that has its test result."""
    return [val_curve(r) for s in seeds for r in sorted(out.glob(pattern.format(seed=s))) if (r / "test.json").exists()]


def convergence_lines(curves: dict[str, list[list[float]]], points: list[int] | None = None) -> list[str]:
    """Mean ± std over the curves of each arm at each evaluation (``points``: the epoch of each
    evaluation, default 1, 2, ...), as far as every curve reaches."""
    n_ep = min(len(c) for runs in curves.values() for c in runs)
    epochs = (points or list(range(1, n_ep + 1)))[:n_ep]
    lines = ["| epoch | " + " | ".join(str(e) for e in epochs) + " |", "|:--|" + "--:|" * len(epochs)]
    for arm, runs in curves.items():
        lines.append(f"| `{arm}` | " + " | ".join(cell([c[e] for c in runs]) for e in range(len(epochs))) + " |")
    return lines


def _probe_tables(out: Path, seeds: list[int], depth: int) -> tuple[list[str], dict, dict, int]:
    """Linear probes per block and their claims (+ per-block val, test top-1 per probe, best block)."""
    probe = _json(out / "probe.json")
    best = int(probe["best_block"])
    pl = {(init, b): test_top1(out, f"probe_{init}_b{b}_s{{seed}}", seeds) for init, b in
          (("long", best), ("long", depth), ("random", best))}
    per_block = {init: [val_curve(out / f"probe_{init}_b{b}_s{seeds[0]}")[-1] for b in range(1, depth + 1)]
                 for init in ("long", "random")}
    lines = ["", f"### Linear probes (App. D): held-out val top-1 % per block, seed {seeds[0]}", "",
              "| block | " + " | ".join(str(b) for b in range(1, depth + 1)) + " |", "|:--|" + "--:|" * depth]
    for init in ("long", "random"):
        lines.append(f"| `{init}` | " + " | ".join(f"{v:.2f}" for v in per_block[init]) + " |")
    lines += ["", f"Best val block of `long`: {best} of {depth}. Test top-1 % over the seeds:", "",
              "| claim | arms | Δ mean (points) | p | verdict |", "|:--|:--|--:|--:|:--|"]
    probe_claims = [(f"pre-trained features > random (block {best})", ("long", best), ("random", best))]
    if best != depth:
        probe_claims.insert(0, (f"middle block {best} > last block {depth}", ("long", best), ("long", depth)))
    else:
        lines.insert(len(lines) - 2, "The best val block is the last one: the 'middle block' claim does not hold here.")
    for claim, a, b in probe_claims:
        if pl[a] and pl[b]:
            diff, p, verdict = compare(pl[a], pl[b])
            lines.append(f"| {claim} | `{a[0]}` b{a[1]} {cell(pl[a])} vs `{b[0]}` b{b[1]} {cell(pl[b])} "
                         f"| {diff:+.2f} | {p:.3g} | {verdict} |")
    return lines, per_block, pl, best


def pretrain_lines(out: Path, arms: tuple[str, ...] = ("long", "short", "random", "pixels", "all")) -> list[str]:
    """The MIM objective at the end of each finished pre-training arm (``pretrain_<arm>`` with its
    ``DONE.json``); an arm a stop interrupted, perhaps before its first logged loss, is left out."""
    lines = ["", "### Pre-training arms", "", "| arm | steps | final MIM loss | masked-token accuracy % |", "|:--|--:|--:|--:|"]
    for arm in arms:
        run = out / f"pretrain_{arm}"
        losses = [r for r in _metrics(run) if "train/loss" in r] if (run / "DONE.json").exists() else []
        if losses:
            last = losses[-1]
            acc = last.get("train/mim_accuracy")
            acc_text = f"{100 * acc:.2f}" if acc is not None and arm != "pixels" else "—"
            lines.append(f"| `{arm}` | {last['step']} | {last['train/loss']:.4f} | {acc_text} |")
    return lines


def wall_lines(out: Path) -> list[str]:
    """Minutes per stage, from every run's ``DONE.json`` (+ its test)."""
    lines = ["", "### Wall time per stage (this machine, one job at a time)", "", "| stage | runs | minutes |", "|:--|--:|--:|"]
    walls: dict[str, list[float]] = {}
    for done in sorted(out.glob("*/DONE.json")):
        rec = _json(done)
        test = done.parent / "test.json"
        walls.setdefault(rec["stage"], []).append(rec["wall_s"] + (_json(test)["wall_s"] if test.exists() else 0.0))
    for stage, ws in walls.items():
        lines.append(f"| {stage} | {len(ws)} | {sum(ws) / 60:.1f} |")
    lines.append(f"| total | {sum(len(w) for w in walls.values())} | {sum(sum(w) for w in walls.values()) / 60:.1f} |")
    return lines


def plot_convergence(curves: dict[str, list[list[float]]], title: str, paths: list[Path],
                     points: list[int] | None = None) -> None:
    """Val top-1 per evaluation, one line per run, one colour per label (the first pre-trained,
    the next from random weights); ``points``: the epoch of each evaluation (default 1, 2, ...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for color, (label, runs) in zip(("tab:blue", "tab:gray", "tab:orange", "tab:green"), curves.items()):
        for i, c in enumerate(runs):
            xs = (points or list(range(1, len(c) + 1)))[: len(c)]
            ax.plot(xs, c[: len(xs)], color=color, alpha=0.8, lw=1.2, label=label if i == 0 else None, marker="o", ms=3)
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("held-out val top-1 %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def _plots(out: Path, curves: dict, per_block: dict, pl: dict, best: int, depth: int, dirs: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"long": "tab:blue", "scratch": "tab:gray", "random": "tab:gray"}
    plot_convergence({"fine-tuned from BEiT": curves.get("long", []), "from random weights": curves.get("scratch", [])},
                     "CIFAR-10, 2,000 labels: one line per seed", [d / "cifar10_convergence.png" for d in dirs])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    blocks = list(range(1, depth + 1))
    ax.plot(blocks, per_block["long"], marker="o", color=colors["long"], label="BEiT (val, seed 0)")
    ax.plot(blocks, per_block["random"], marker="o", color=colors["random"], label="random weights (val, seed 0)")
    for (init, b), vals in pl.items():
        if vals:
            m, s = mean_std(vals)
            ax.errorbar([b + (0.08 if init == "random" else -0.08)], [m], yerr=[0 if math.isnan(s) else s],
                        fmt="s", color=colors[init], capsize=3, mfc="white")
    ax.set_xlabel("block probed")
    ax.set_ylabel("linear-probe top-1 %")
    ax.set_title("squares: test, mean ± std over seeds")
    ax.set_xticks(blocks)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for d in dirs:
        fig.savefig(d / "cifar10_probe_blocks.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--docs", type=Path, default=None)
    args = parser.parse_args()
    write_results(args.out, args.seeds, args.depth, args.docs)


if __name__ == "__main__":
    main()
