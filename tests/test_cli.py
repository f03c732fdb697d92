"""``run_cli``: every error a user can cause is one line on stderr with a distinct exit status."""

from __future__ import annotations

import pytest

from beit_ds.cli import run_cli
from beit_ds.config import ConfigError
from beit_ds.engine.checkpoint import CheckpointError
from beit_ds.engine.loop import NonFiniteLossError
from beit_ds.engine.preemption import EXIT_CODE, Preempted
from beit_ds.engine.safe_load import UnsafeFileError


@pytest.mark.parametrize(
    "error, status",
    [
        (ConfigError("model.depth=0: expected a positive integer"), 2),
        (CheckpointError("checkpoint x: damaged (a.pt is 3 bytes, not 4)"), 2),
        (UnsafeFileError("finetune.init='x.pth': refused"), 2),
        (NonFiniteLossError("loss was NaN/inf for 20 steps in a row"), 1),
        (Preempted(8), EXIT_CODE),
    ],
)
def test_errors_end_with_one_line(error, status, capsys):
    def main() -> None:
        raise error

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(error) in err and "Traceback" not in err
