"""Training curves of several runs from their ``metrics.jsonl`` (the ``MetricWriter``'s JSON lines),
one PNG: loss, accuracy, learning rate, validation top-1 and mIoU against the step — the seed's
Fig. 3 picture ("fine-tuning from BEiT vs from scratch") for any runs. matplotlib (``.[viz]``)
is imported only here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from beit_ds.artifacts import RunDir
from beit_ds.data.skips import DataError

# (panel title, metric keys tried in order): the first key a run has is drawn
PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("train/loss",)),
    ("accuracy", ("train/mim_accuracy", "train/accuracy", "train/top1")),
    ("lr", ("train/lr",)),
    ("val top-1 (%)", ("val/top1", "val_ema/top1")),
    ("mIoU", ("val/miou", "val/mIoU")),
)
Series = dict[str, tuple[list[int], list[float]]]


def read_metrics(run: str | Path) -> Series:
    """``{key: (steps, values)}`` of a run folder's (or a file's) ``metrics.jsonl``; a key logged
    twice at one step (a resumed run) keeps the later value."""
    path = Path(run)
    path = path if path.is_file() else RunDir(path).metrics
    if not path.is_file():
        raise FileNotFoundError(f"{run}: no metrics.jsonl")
    by_key: dict[str, dict[int, float]] = {}
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        step, record = _record(path, number, line)
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                by_key.setdefault(key, {})[step] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_key.items()}


def _record(path: Path, number: int, line: str) -> tuple[int, dict[str, object]]:
    """(step, record) of line ``number`` of ``path``; anything else is a one-line ``DataError``."""
    try:
        record = json.loads(line)
    except ValueError as err:
        raise DataError(f"{path} line {number}: not a JSON object ({getattr(err, 'msg', err)})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path} line {number}: not a JSON object (a {type(record).__name__})")
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise DataError(f"{path} line {number}: expected an integer 'step', got {step!r}")
    return step, record


def present_panels(runs: Sequence[Series]) -> list[tuple[str, tuple[str, ...]]]:
    """The panels at least one run has a key for."""
    return [(title, keys) for title, keys in PANELS if any(k in r for r in runs for k in keys)]


def plot_runs(runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] = ()) -> Path:
    """Draw the present panels of ``runs`` side by side into the PNG ``out`` (fixed size, no
    metadata: same metrics -> same file); ``labels`` default to the run folders' names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [read_metrics(r) for r in runs]
    names = list(labels) or [Path(r).name for r in runs]
    panels = present_panels(series)
    if not panels:
        raise DataError(f"runs {list(map(str, runs))}: none of {[k for _, ks in PANELS for k in ks]} logged")
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), dpi=80, squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for s, name in zip(series, names):
            key = next((k for k in keys if k in s), None)
            if key is not None:
                ax.plot(*s[key], label=name, linewidth=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", metadata={"Software": None})
    plt.close(fig)
    return out
