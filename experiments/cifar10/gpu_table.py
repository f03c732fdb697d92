"""The GPU study's results (``gpu_study.py``'s table stage), with ``table.py``'s measures: per
regime, test top-1 per arm (mean ± sample std over the seeds), the claims with Welch's two-sided
t-test, the held-out val convergence of beit against scratch (table and plot); then the
pre-training arms, the plan, the budget's decisions and the wall time per stage.

Writes ``results.md``, ``study.json`` (the study's record: status, cuts, epochs, decisions, plan,
and each claim's numbers) and ``cifar10_gpu_convergence_<regime>.png`` into the study folder and
``docs``. Runs that did not finish (a stopped study) are left out; a claim needs both arms.
"""

from __future__ import annotations

import json
from pathlib import Path

from gpu_scale import FINETUNE_ARMS, PRETRAIN_ARMS, Regime
from table import (
    arm_lines,
    claim_lines,
    compare,
    convergence_lines,
    finished_curves,
    plot_convergence,
    pretrain_lines,
    test_top1,
    wall_lines,
)

ARM_TEXT = {
    "scratch": "none (random weights)",
    "beit": "BEiT: visual tokens, blockwise masking",
    "pixels": "raw-pixel regression, blockwise masking",
    "random": "visual tokens, random masking",
}
CLAIMS = (
    ("pre-training helps (Table 1, App. F)", "beit", "scratch"),
    ("blockwise > random masking (Table 4)", "beit", "random"),
    ("visual tokens > pixel regression (Table 4)", "beit", "pixels"),
)


def write_gpu_results(out: Path, seeds: list[int], regimes: tuple[Regime, ...], record: dict[str, object],
                      docs: Path | None = None) -> str:
    """results.md, study.json and the plots of the study in ``out`` (and in ``docs``); the text."""
    dirs = [out] + ([docs] if docs else [])
    device = record.get("device") or {}
    lines = ["## CIFAR-10 GPU study", "", f"Status: **{record.get('status')}** after "
             f"{float(record.get('elapsed_s') or 0) / 60:.1f} of {float(record.get('budget_s') or 0) / 60:.1f} min "
             f"on {device.get('name', '?') if isinstance(device, dict) else device}; seeds {seeds}."]
    claims: dict[str, object] = {}
    for regime in regimes:
        lines += regime_lines(out, seeds, regime, record, dirs, claims)
    lines += pretrain_lines(out, tuple(PRETRAIN_ARMS)) + budget_lines(record) + wall_lines(out)
    text = "\n".join(lines) + "\n"
    record["claims"] = claims
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.md").write_text(text)
        (d / "study.json").write_text(json.dumps(record, indent=1, default=str))
    print(text, flush=True)
    return text


def regime_lines(out: Path, seeds: list[int], regime: Regime, record: dict[str, object], dirs: list[Path],
                 claims: dict[str, object]) -> list[str]:
    """Test top-1 per arm, the claims and the convergence of one regime (+ its plot); its claims'
    numbers into ``claims[regime.name]``."""
    pattern = f"ft_{regime.name}_{{arm}}_lr*_s{{{{seed}}}}"
    ft = {arm: test_top1(out, pattern.format(arm=arm), seeds) for arm in FINETUNE_ARMS}
    sweep_path = out / "sweep.json"
    picks = json.loads(sweep_path.read_text()).get(regime.name, {}) if sweep_path.exists() else {}
    lrs = ", ".join(f"{arm} {lr:g}" for arm, lr in picks.items()) or "not chosen yet"
    lines = ["", f"### Fine-tuning on {regime.label}: test top-1 % per arm", "",
             f"lr chosen on the held-out val images (seed {seeds[0]}): {lrs}; pixels and random use beit's.", "",
             *arm_lines(ft, ARM_TEXT), "", f"Claims on {regime.label} (Welch's two-sided t-test over the seeds):", "",
             *claim_lines(ft, CLAIMS)]
    claims[regime.name] = {"top1": ft, "claims": [
        dict(zip(("claim", "better", "worse", "diff", "p", "verdict"), (c, a, b, *compare(ft[a], ft[b]))))
        for c, a, b in CLAIMS if ft[a] and ft[b]]}
    curves = {arm: finished_curves(out, pattern.format(arm=arm), seeds) for arm in ("beit", "scratch")}
    if not (curves["beit"] and curves["scratch"]):
        return lines
    epochs = max(1, round(regime.epochs * float((record.get("epochs") or {}).get("finetune", 1.0))))
    every = regime.every(epochs)
    points = [min(epochs, every * (i + 1)) for i in range(max(len(c) for r in curves.values() for c in r))]
    lines += ["", f"Convergence on {regime.label} (seed Fig. 3): held-out val top-1 % (mean ± std over seeds)", "",
              *convergence_lines(curves, points)]
    plot_convergence({"fine-tuned from BEiT": curves["beit"], "from random weights": curves["scratch"]},
                     f"CIFAR-10, {regime.label}: one line per seed",
                     [d / f"cifar10_gpu_convergence_{regime.name}.png" for d in dirs], points)
    return lines


def budget_lines(record: dict[str, object]) -> list[str]:
    """The plan table and every decision of the budget (what was cut, when, and why)."""
    lines = ["", "### Plan (FLOPs counted on the actual models; minutes at a fraction of the device's peak)", ""]
    lines += [str(line) for line in record.get("plan") or []]
    lines += ["", "### Budget decisions", "", "| at | elapsed min | left min | predicted min | cut | epochs kept |",
              "|:--|--:|--:|--:|:--|:--|"]
    for d in record.get("decisions") or []:
        epochs = d["epochs"]
        lines.append(f"| {d['at']} | {d['elapsed_s'] / 60:.1f} | {d['left_s'] / 60:.1f} | {d['predicted_s'] / 60:.1f} "
                     f"| {', '.join(d['cut']) or '—'} | pre-training {epochs['pretrain']:.0%}, fine-tuning "
                     f"{epochs['finetune']:.0%} |")
    return lines
