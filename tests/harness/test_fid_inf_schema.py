"""eval.fid_inf and eval.fid_inf_sizes: bad values, and sizes above sample.num, are refused in
one line before torch loads (`cfh train`, `cfh evaluate`, grid eval points); the walk over every
key (tests/harness/test_schema.py) covers their types and ranges too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.config.compose import default_config
from harness.config.values import plain_copy
from harness.grid.eval_checks import checked_eval_settings, eval_base_key
from harness.grid.points import eval_key

REPO = Path(__file__).resolve().parents[2]

REFUSED = [  # (argv, what the one-line error says)
    (["train", "eval.fid_inf=maybe"], "eval.fid_inf='maybe' is not allowed; expected true or"),
    (["train", "eval.fid_inf_sizes=[2,100]"], "expected a list of at least two distinct integers"),
    (["train", "eval.fid_inf_sizes=[100]"], "eval.fid_inf_sizes=[100] is not allowed"),
    (["train", "eval.fid_inf_sizes=[100,100]"], "eval.fid_inf_sizes=[100, 100] is not allowed"),
    (["train", "eval.fid_inf_sizes=100"], "eval.fid_inf_sizes=100 is not allowed"),
    (["train", "eval.fid_inf_sizes=[50,2.5]"], "eval.fid_inf_sizes=[50, 2.5] is not allowed"),
    (["evaluate", "sample.num=300", "eval.fid_inf=true", "eval.fid_inf_sizes=[100,400]"],
     "eval.fid_inf_sizes=[100, 400] has sizes above sample.num=300 (FID_inf subsets are drawn "
     "from the samples); allowed: sizes 4..300, or raise sample.num"),
    (["evaluate", "sample.num=4", "eval.kid_subset_size=4", "eval.fid_inf=true"],
     "eval.fid_inf=true needs sample.num >= 5"),
]  # fmt: skip


def test_bad_values_are_refused_in_one_line_before_torch(tmp_path):
    code = (
        "import contextlib, io, json, sys\n"
        "from harness.cli.main import main\n"
        "out = []\n"
        f"for argv in {[a for a, _ in REFUSED]!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        rc = main([*argv, 'run_dir={tmp_path / 'run'}'])\n"
        "    out.append([rc, err.getvalue()])\n"
        "print(json.dumps({'results': out, 'torch': 'torch' in sys.modules}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["torch"], "torch was imported"
    for (argv, needle), (rc, err) in zip(REFUSED, result["results"], strict=True):
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert needle in err, (argv, err)
    assert not list(tmp_path.iterdir()), "something was written"


def test_grid_eval_points_refuse_sizes_above_the_samples():
    cfg = plain_copy(default_config())
    base = eval_base_key(cfg)
    ok, key = checked_eval_settings(base, (("eval.fid_inf", "true"),))
    assert ok is not None and ok["eval"]["fid_inf"] is True and key
    items = (("sample.num", "300"), ("eval.fid_inf", "true"), ("eval.fid_inf_sizes", "[100,400]"))
    settings, why = checked_eval_settings(base, items)
    assert settings is None and "has sizes above sample.num=300" in why
    # sizes are only drawn with eval.fid_inf=true: off, any valid list passes
    items = (("sample.num", "300"), ("eval.fid_inf_sizes", "[100,400]"))
    assert checked_eval_settings(base, items)[0] is not None


def test_eval_point_keys_of_grids_swept_before_fid_inf_are_kept():
    """Off, eval.fid_inf and eval.fid_inf_sizes are left out of a point's key (the old grid's
    points stay done, tests/test_old_runs.py); on, FID_inf is another eval point."""
    cfg = plain_copy(default_config())
    base = eval_base_key(cfg)
    settings, key = checked_eval_settings(base, ())
    without = {**settings, "eval": dict(settings["eval"])}
    del without["eval"]["fid_inf"], without["eval"]["fid_inf_sizes"]
    assert key == eval_key(without)
    on = checked_eval_settings(base, (("eval.fid_inf", "true"),))[1]
    sized = checked_eval_settings(
        base, (("eval.fid_inf", "true"), ("eval.fid_inf_sizes", "[8,16]"))
    )
    assert len({key, on, sized[1]}) == 3
