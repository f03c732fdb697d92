"""DeepSpeed configuration: merge a ``ds_configs/*.json`` (DeepSpeed concerns only — ZeRO stage,
precision, loss scaling, buckets) with the recipe's batch, optimizer and clipping, and check it
before any process group starts (house style rule 14).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from beit_ds.config import ConfigError
from beit_ds.engine.jsonlike import as_int, as_object
from beit_ds.recipe import OptimConfig, ScheduleConfig

# Keys the recipe owns; a ds_config may leave them out or say "auto".
RECIPE_KEYS = {
    "train_batch_size": "schedule.micro_batch_size x schedule.grad_accum x world size",
    "train_micro_batch_size_per_gpu": "schedule.micro_batch_size",
    "gradient_accumulation_steps": "schedule.grad_accum",
    "gradient_clipping": "optim.clip_grad",
    "scheduler": "the recipe's schedule section (lr is set every step by the engine)",
}


def read_ds_config(path: str | Path) -> dict[str, object]:
    """The JSON mapping at ``path``; missing file or bad JSON is a one-line ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--deepspeed_config {path}: no such file (see ds_configs/ for the shipped ones)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: invalid JSON at line {err.lineno} ({err.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    check_shape(data, str(path))
    return data


# Sections that DeepSpeed reads as JSON objects; a scalar there fails deep inside its config parser.
OBJECT_SECTIONS = {
    "fp16": '{"enabled": true}', "bf16": '{"enabled": true}', "zero_optimization": '{"stage": 2}',
    "optimizer": '{"type": "AdamW"}', "checkpoint": '{"load_universal": false}',
    "activation_checkpointing": "{}", "data_types": "{}",
}


def ds_section(ds: Mapping[str, object], key: str) -> dict[str, object]:
    """The JSON object ``ds[key]`` (``check_shape`` made sure it is one), ``{}`` when absent."""
    return as_object(ds.get(key, {}))


def zero_stage(ds: Mapping[str, object]) -> int:
    """``zero_optimization.stage`` (0 when not given)."""
    return as_int(ds_section(ds, "zero_optimization").get("stage", 0))


def check_shape(ds: Mapping[str, object], source: str) -> None:
    """One-line ``ConfigError`` for a DeepSpeed JSON of the wrong shape (``"fp16": true``,
    ``"optimizer": "AdamW"``, ``"stage": "two"``) before DeepSpeed's own parser sees it."""
    for key, example in OBJECT_SECTIONS.items():
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"{source}: {key}={json.dumps(ds[key])}: expected a JSON object, e.g. \"{key}\": {example}")
    for key in ("fp16", "bf16"):
        enabled = ds_section(ds, key).get("enabled", False)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{source}: {key}.enabled={json.dumps(enabled)}: expected true or false")
    stage = ds_section(ds, "zero_optimization").get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"{source}: zero_optimization.stage={json.dumps(stage)}: expected 0, 1, 2 or 3")


def precision_of(ds: Mapping[str, object], source: str = "ds_config") -> str:
    """``"fp16"``, ``"bf16"`` or ``"fp32"``; both half precisions on is an error."""
    fp16 = bool(ds_section(ds, "fp16").get("enabled", False))
    bf16 = bool(ds_section(ds, "bf16").get("enabled", False))
    if fp16 and bf16:
        raise ConfigError(f"{source}: fp16.enabled and bf16.enabled are both true: expected at most one")
    return "fp16" if fp16 else "bf16" if bf16 else "fp32"


def resolve_ds_config(
    ds: Mapping[str, object],
    schedule: ScheduleConfig,
    optim: OptimConfig,
    world_size: int,
    lr: float,
    source: str = "ds_config",
) -> dict[str, object]:
    """The full config for ``deepspeed.initialize``: batch arithmetic, AdamW params, clipping."""
    for key, owner in RECIPE_KEYS.items():
        if key in ds and ds[key] != "auto":
            raise ConfigError(
                f'{source}: {key}={ds[key]!r} is set by the recipe ({owner}): remove it or use "auto"'
            )
    precision_of(ds, source)
    opt = dict(as_object(ds.get("optimizer") or {"type": "AdamW"}))
    if str(opt.get("type", "AdamW")).lower() not in ("adamw", "adam"):
        raise ConfigError(
            f'{source}: optimizer.type={opt.get("type")!r}: expected "AdamW" (the seed\'s optimizer)'
        )
    params = dict(as_object(opt.get("params") or {}))
    for key in ("lr", "betas", "eps", "weight_decay"):
        if key in params and params[key] != "auto":
            raise ConfigError(
                f"{source}: optimizer.params.{key} is set by the recipe (optim.{key}): remove it"
            )
    params.update(lr=lr, betas=list(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if str(opt.get("type", "AdamW")).lower() == "adam":
        params.setdefault("adam_w_mode", True)  # decoupled weight decay, as the seed's AdamW
    out = dict(ds)
    out["optimizer"] = {"type": opt.get("type", "AdamW"), "params": params}
    out.pop("scheduler", None)
    out["train_micro_batch_size_per_gpu"] = schedule.micro_batch_size
    out["gradient_accumulation_steps"] = schedule.grad_accum
    out["train_batch_size"] = schedule.micro_batch_size * schedule.grad_accum * world_size
    out["gradient_clipping"] = optim.clip_grad
    out.setdefault("steps_per_print", 10**9)  # our own logger reports progress
    return out


def global_batch(schedule: ScheduleConfig, world_size: int) -> int:
    """Images per optimizer step over all ranks."""
    return schedule.micro_batch_size * schedule.grad_accum * world_size
