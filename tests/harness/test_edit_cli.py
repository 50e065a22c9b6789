"""`cfh edit` end to end on a 2-step run: the grid PNG, its layout, and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.cli.main import main
from harness.config.compose import load_config

# digits with 2x2 patches (a 4x4 token grid); the edit checks need a checkpoint, not quality
RUN = ["model=T", "data=digits", "data.patch_size=2", "train.batch_size=8", "train.log_every=1"]
FAST = ["sample.steps=3", "sample.batch_size=64"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run trained for 2 steps."""
    from model.training.trainer import train

    run_dir = tmp_path_factory.mktemp("edit-cli") / "run"
    train(load_config([*RUN, f"run_dir={run_dir}", "train.steps=2", "train.ckpt_every=2"]))
    return run_dir


def _edit(run: Path, *overrides: str) -> int:
    return main(["edit", f"run_dir={run}", *FAST, *overrides])


def test_edit_writes_input_mask_results_grid(run, tmp_path, capsys):
    png = tmp_path / "digit.png"
    Image.fromarray(np.tile(np.arange(0, 256, 32, dtype=np.uint8), (8, 1))).save(png)
    rc = _edit(run, "edit.task=inpaint", f"edit.input=[3,{png}]", "edit.samples=2",
               "sample.ar_steps=3", "edit.order=raster")  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert out[0] == "inpaint center (4 tokens in 3 groups [2, 1, 1], order raster) on 2 inputs"
    grid = Path(out[-1])
    assert grid.is_file() and grid.name == "grid.png" and grid.parent.parent.name == "edits"
    img = Image.open(grid)
    # 2 rows x (input, mask, 2 results) of 8x8 tiles with 1-pixel padding, scaled 256 // 8 = 32x
    assert img.size == ((4 * 9 + 1) * 32, (2 * 9 + 1) * 32)
    meta = json.loads((grid.parent / "settings.json").read_text())
    assert meta["names"] == ["test[3]", str(png)] and meta["labels"][1] == 10  # file: null class
    with np.load(grid.parent / "edits.npz") as f:
        inputs, results = f["inputs"], f["results"]
    kept = np.ones((8, 8), bool)
    kept[2:6, 2:6] = False  # the centre 2x2 tokens of a 4x4 grid are pixels 2..5
    for j in range(2):
        for k in range(2):
            assert np.array_equal(results[2 * j + k][kept], inputs[j][kept])


def test_edit_swap_to_a_chosen_path_and_empty_region(run, tmp_path, capsys):
    out_png = tmp_path / "swap.png"
    rc = _edit(run, "edit.task=swap", "edit.class=4", "edit.region=box:0:0:2:4",
               f"edit.out={out_png}", "edit.input=0", "edit.samples=1")  # fmt: skip
    assert rc == 0 and capsys.readouterr().out.strip().splitlines()[-1] == str(out_png)
    assert out_png.is_file()
    rc = _edit(run, "edit.region=none", "edit.input=[5]", "edit.samples=3")
    grid = Path(capsys.readouterr().out.strip().splitlines()[-1])
    with np.load(grid.parent / "edits.npz") as f:
        assert all(np.array_equal(r, f["inputs"][0]) for r in f["results"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["edit.task=swap", "edit.class=1", "edit.region=all"], "edit.region='all' covers the"),
        (["edit.region=box:0:0:5:5"], "edit.region='box:0:0:5:5' is outside the 4x4 token grid"),
        (["edit.region=box:0,0,2,2"], "is a sweep"),  # commas need quotes on a command line
        (["edit.task=swap"], "edit.task=swap needs edit.class="),
        (["edit.input=999"], "edit.input=999 is not an index of the test split (360 images)"),
        (["edit.input=missing.png"], "edit.input='missing.png' is neither a dataset index"),
        (["edit.order=zigzag"], "edit.order='zigzag' is not allowed"),
    ],
)
def test_edit_user_errors_are_one_line(run, capsys, overrides, message):
    assert _edit(run, *overrides) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_edit_without_a_run(tmp_path, capsys):
    assert main(["edit", f"run_dir={tmp_path / 'none'}"]) == 2
    assert "no trained run there" in capsys.readouterr().err
