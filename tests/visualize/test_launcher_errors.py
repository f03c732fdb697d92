"""``beit-ds visualize`` (``launch/visualize.py``): every bad input a user can give ends with one
``error:`` line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beit_ds.cli import main
from beit_ds.visualize.figures import MAX_PATCHES, MAX_SCALE


def _fails(monkeypatch, capsys, argv: list[str]) -> str:
    """Run ``beit-ds visualize`` with ``argv``; the one stderr line of its exit-2 failure."""
    with pytest.raises(SystemExit) as stop:
        main(["visualize", *argv])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--query", "foo"], "--query 'foo'"),
        (["--query", "99,99"], "outside the 8x8 patch grid"),
        (["--block", "4"], "--block 4: expected a block index in [-4, 4)"),
        (["--block", "-5"], "--block -5"),
        (["--size", "30", "32"], "--size 30 32: expected sides that are multiples of model.patch_size=4"),
        (["--size", "0", "32"], "--size 0 32: expected two positive integers"),
        (
            ["--size", "1024", "1024"],
            f"--size 1024 1024: 65536 patches per image; expected at most {MAX_PATCHES}",
        ),
        (["--mass", "0"], "--mass 0.0: expected a fraction in (0, 1]"),
        (["--mass", "1.5"], "--mass 1.5"),
        (["--mass", "nan"], "--mass nan"),
        (["--limit", "-1"], "--limit -1: expected"),
        (["--scale", "0"], f"--scale 0: expected an integer in [1, {MAX_SCALE}]"),
    ],
)
def test_bad_attention_options(monkeypatch, capsys, tmp_path, options, expected) -> None:
    err = _fails(monkeypatch, capsys, ["attention", "--out", str(tmp_path / "a.png"), *options])
    assert expected in err
    assert not (tmp_path / "a.png").exists()


def test_non_image_file_and_decompression_bomb(monkeypatch, capsys, tmp_path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    err = _fails(monkeypatch, capsys, ["attention", "--images", str(text), "--out", str(tmp_path / "a.png")])
    assert "notes.png" in err and "not_an_image" in err
    big = _png(tmp_path / "big.png", 40)  # 1600 pixels > the 1000 allowed
    argv = ["attention", "--images", str(big), "--out", str(tmp_path / "a.png"), "data.max_image_pixels=1000"]
    err = _fails(monkeypatch, capsys, argv)
    assert "big.png" in err and "40x40 pixels > data.max_image_pixels=1000" in err


def test_mim_size_other_than_the_tokenizer_grid(monkeypatch, capsys, tmp_path) -> None:
    err = _fails(monkeypatch, capsys, ["mim", "--size", "64", "64", "--out", str(tmp_path / "m.png")])
    assert "--size 64 64" in err and "(16, 16)" in err and "(8, 8)" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"step": 1, "train/loss": 2.0}\nnot json\n', "line 2: not a JSON object"),
        ("[1, 2]\n", "line 1: not a JSON object"),
        ('{"train/loss": 2.0}\n', "line 1: expected an integer 'step'"),
        ('{"step": 1, "other": 2.0}\n', "none of"),
    ],
)
def test_bad_curves_input(monkeypatch, capsys, tmp_path, content, expected) -> None:
    (tmp_path / "metrics.jsonl").write_text(content)
    err = _fails(monkeypatch, capsys, ["curves", str(tmp_path), "--out", str(tmp_path / "c.png")])
    assert expected in err and str(tmp_path) in err
