"""The GPU suite's markdown (``bench/gpu_suite.py``): the device, the MIM step's runs against the
targets, and the study's claims, from the suite's one JSON record (partial or complete)."""

from __future__ import annotations


def _pct(value: object) -> str:
    return "—" if not isinstance(value, (int, float)) else f"{100 * value:.1f} %"


def _num(value: object, fmt: str = ",.1f") -> str:
    return "—" if not isinstance(value, (int, float)) else format(value, fmt)


def markdown(result: dict[str, object], targets: dict[str, tuple[float, float]], paper: dict[str, float]) -> str:
    """The suite's record as markdown: a header, the MIM-step table, the study's claims."""
    suite = result.get("suite") or {}
    device = result.get("device") or {}
    assert isinstance(suite, dict) and isinstance(device, dict)
    memory = f", {device['memory_gib']:.0f} GiB" if device.get("memory_gib") else ""
    peak = f"{device['peak_tflops']:.4g} TFLOP/s, {device.get('peak_source')}" if device.get("peak_tflops") else "unknown: no MFU"
    lines = [f"# GPU suite: {device.get('name', 'device not detected yet')}{memory} (dense peak {peak})", "",
             f"Status: **{suite.get('status')}** after {_num(suite.get('elapsed_s'))} s of {suite.get('minutes')} min"
             f" (started {suite.get('started')}{', smoke run on a CPU' if suite.get('smoke') else ''})."]
    mim = result.get("mim")
    if isinstance(mim, dict) and "model_gflop_per_image" in mim:
        lines += _mim_lines(mim, targets, paper)
    study = result.get("study")
    if isinstance(study, dict):
        lines += _study_lines(study)
    return "\n".join(lines)


def _mim_lines(mim: dict, targets: dict[str, tuple[float, float]], paper: dict[str, float]) -> list[str]:
    model, tok = mim["model_gflop_per_image"], mim["tokenizer_gflop_per_image"]
    peak = mim.get("peak_tflops")
    goals = [f"{name}: {100 * mfu:.0f} % pipeline MFU = "
             + (f"{mfu * peak * 1e3 / (model + tok):,.0f} img/s here" if peak else "— here")
             + f" ({per_h100:,.0f} per H100)" for name, (mfu, per_h100) in targets.items()]
    lines = ["", f"## {mim.get('model')}: the MIM step ({mim.get('precision')}), {mim.get('tokenizer')} online", "",
             f"FLOPs per image (counted): model {model:.4g} GFLOP (forward + backward), tokenizer {tok:.4g} GFLOP"
             f" (forward): pipeline {model + tok:.4g}. Targets: " + "; ".join(goals)
             + f"; the paper's V100 run: ≈ {paper['images_per_s_per_gpu']:.0f} img/s per GPU ≈ {100 * paper['mfu']:.0f} %"
             " MFU.", "",
             "| run | ZeRO | mode | batch | img/s | model MFU | pipeline MFU | of the 25 % target | peak GiB | wall s |",
             "|:--|--:|:--|--:|--:|--:|--:|--:|--:|--:|"]
    first = next(iter(targets.values()))[0]
    for name, r in mim.get("runs", {}).items():
        share = r["pipeline_mfu"] / first if isinstance(r.get("pipeline_mfu"), (int, float)) else None
        lines.append(f"| `{name}` | {r['zero']} | {r['mode']} | {r['batch']} | {_num(r['images_per_s'])} | "
                     f"{_pct(r.get('model_mfu'))} | {_pct(r.get('pipeline_mfu'))} | {_pct(share)} | "
                     f"{_num(r.get('peak_memory_gib'), '.1f')} | {_num(r.get('wall_s'))} |")
    skipped = mim.get("skipped") or {}
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"`{k}` ({v})" for k, v in skipped.items()) + "."]
    lines += ["", f"SDPA's memory-efficient kernel with the relative-position bias: {mim.get('sdpa_efficient_with_bias')}."]
    return lines


def _study_lines(study: dict) -> list[str]:
    lines = ["", "## The right-sized CIFAR-10 study (`experiments/cifar10/gpu_study.py`)", "",
             f"Status: **{study.get('status')}**; budget {_num(study.get('budget_s'))} s, used"
             f" {_num(study.get('elapsed_s'))} s; arms cut: {', '.join(study.get('cut') or []) or 'none'};"
             f" epochs kept: {study.get('epochs') or '—'}. Every table: `{study.get('results')}`."]
    claims = study.get("claims") or {}
    rows = [(regime, c) for regime, found in claims.items() for c in (found or {}).get("claims", [])]
    if rows:
        lines += ["", "| regime | claim | Δ mean (points) | p | verdict |", "|:--|:--|--:|--:|:--|"]
        lines += [f"| {regime} | {c['claim']} (`{c['better']}` vs `{c['worse']}`) | {c['diff']:+.2f} | {c['p']:.3g} |"
                  f" {c['verdict']} |" for regime, c in rows]
    return lines
