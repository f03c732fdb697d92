"""``TrainState``: the run-time position of a training run (house style rule 4).

Everything a resume needs besides model / optimizer / loss-scaler state (which DeepSpeed saves):
the optimizer step, the epoch and the global sample position inside it (the sampler's position,
in samples over all ranks, so it survives a change of world size), and counters.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch

from beit_ds.engine.jsonlike import as_int


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    samples_in_epoch: int = 0
    nonfinite_steps: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: as_int(v) for k, v in data.items() if k in known})


class RngState(TypedDict, total=False):
    """The global generators' states: torch's, numpy's (legacy tuple), Python's, CUDA's per device."""

    torch: torch.Tensor
    numpy: dict[str, object] | tuple[str, npt.NDArray[np.uint32], int, int, float]
    python: tuple[object, ...]
    cuda: list[torch.Tensor]


def rng_state() -> RngState:
    """This process's global RNG states (drop-path draws use torch's)."""
    state: RngState = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
