"""`cfh check`: regression caught (1), non-regression passed (0), unusable input (2),
`--update-baseline` round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli.main import main
from reports.check import compare, current_summary, default_baseline


def check(root: Path, *args: str) -> int:
    """Run `cfh --root ROOT check smoke ARGS`."""
    return main(["--root", str(root), "check", "smoke", *args])


def bump_fid(root: Path, s_train_steps: int, s_eval: int, by: float) -> None:
    """Add `by` to the FID of every seed of one (fixed S_train, S_eval) entry."""
    for run in (root / "runs").iterdir():
        cfg = (run / "config.yaml").read_text()
        if f"steps: {s_train_steps}\n" not in cfg or "mode: fixed" not in cfg:
            continue
        for path in (run / "eval").glob("*.json"):
            record = json.loads(path.read_text())
            if record["settings"]["s_eval"] == s_eval:
                record["metrics"]["fid"] += by
                path.write_text(json.dumps(record))


@pytest.fixture
def with_baseline(smoke_root: Path) -> tuple[Path, Path]:
    base = smoke_root / "baseline.csv"
    assert check(smoke_root, "--baseline", str(base), "--update-baseline") == 0
    return smoke_root, base


def test_update_baseline_round_trip(with_baseline, capsys):
    root, base = with_baseline
    written = pd.read_csv(base)
    assert len(written) == 3 * 2  # S_train 1 / 4 / decay x S_eval 1 / 4
    assert {"train_key", "eval_key", "fid_mean", "fid_std", "n_seeds"} <= set(written.columns)
    assert (written["n_seeds"] == 2).all()
    assert not [p for p in base.parent.iterdir() if p.name.startswith(".baseline")]  # atomic
    capsys.readouterr()
    assert check(root, "--baseline", str(base)) == 0
    out = capsys.readouterr().out
    assert "compared 6: 0 regressed, 0 improved, 6 within tolerance" in out


def test_a_regression_is_caught(with_baseline, capsys):
    root, base = with_baseline
    bump_fid(root, 4, 4, by=+25.0)
    capsys.readouterr()
    assert check(root, "--baseline", str(base)) == 1
    out = capsys.readouterr().out
    assert "1 regressed" in out
    assert any(line.startswith("regressed") and "S_train=4" in line for line in out.splitlines())


def test_an_improvement_and_seed_noise_do_not_fail(with_baseline, capsys):
    root, base = with_baseline
    bump_fid(root, 4, 4, by=-25.0)  # better
    bump_fid(root, 1, 1, by=+0.5)  # worse, but inside the 1.0 absolute tolerance
    capsys.readouterr()
    assert check(root, "--baseline", str(base)) == 0
    assert "1 improved, 5 within tolerance" in capsys.readouterr().out
    assert check(root, "--baseline", str(base), "--abs-tol", "0.1", "--k", "0") == 1


def test_tolerance_scales_with_pooled_seed_std():
    keys = {"train_key": ["a"], "eval_key": ["e"], "setting": ["a"]}
    base = pd.DataFrame({**keys, "fid_mean": [20.0], "fid_std": [3.0], "n_seeds": [3]})
    cur = pd.DataFrame({**keys, "fid_mean": [25.0], "fid_std": [3.0], "n_seeds": [3]})
    assert compare(cur, base, abs_tol=1.0, k=2.0).exit_code == 0  # 5 < 2 x 3
    assert compare(cur, base, abs_tol=1.0, k=1.0).exit_code == 1  # 5 > 1 x 3
    single = base.assign(fid_std=float("nan"), n_seeds=1)
    result = compare(cur.assign(fid_std=float("nan"), n_seeds=1), single, abs_tol=1.0, k=2.0)
    assert result.exit_code == 1 and result.table["tolerance"].iloc[0] == 1.0


def test_missing_entries_are_listed_but_do_not_fail(with_baseline, capsys):
    root, base = with_baseline
    extra = pd.read_csv(base).iloc[[0]].assign(eval_key="s_eval=8 other")
    pd.concat([pd.read_csv(base), extra]).to_csv(base, index=False)
    capsys.readouterr()
    assert check(root, "--baseline", str(base)) == 0
    assert "1 missing" in capsys.readouterr().out


def test_unusable_input_exits_2(smoke_root: Path, capsys):
    assert check(smoke_root, "--baseline", str(smoke_root / "nope.csv")) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = smoke_root / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert check(smoke_root, "--baseline", str(bad)) == 2
    assert "lacks column" in capsys.readouterr().err
    other = smoke_root / "other.csv"
    other.write_text("train_key,eval_key,fid_mean\nx,y,10\n")
    assert check(smoke_root, "--baseline", str(other)) == 2
    err = capsys.readouterr().err
    assert "matches the baseline" in err
    assert main(["--root", str(smoke_root), "check", "nope"]) == 2
    assert check(smoke_root, "--abs-tol", "-1", "--baseline", str(other)) == 2


def test_default_baseline_lives_in_the_package():
    assert default_baseline("smoke").as_posix().endswith("reports/baselines/smoke.csv")


def test_current_summary_averages_seeds(smoke_root: Path):
    import warnings

    from reports import load_results

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = current_summary(load_results(smoke_root, "smoke"))
    assert len(summary) == 6 and (summary["n_seeds"] == 2).all()


@pytest.mark.parametrize("flag", ["--abs-tol", "--k"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1"])
def test_non_finite_or_negative_tolerances_exit_2(with_baseline, capsys, flag, value):
    root, base = with_baseline
    bump_fid(root, 4, 4, by=+25.0)  # a real regression that NaN would let through
    capsys.readouterr()
    assert check(root, "--baseline", str(base), f"{flag}={value}") == 2
    err = capsys.readouterr().err
    assert f"{flag}={float(value)}" in err and "finite number >= 0" in err, err


def test_update_baseline_needs_an_explicit_path(smoke_root: Path, capsys):
    assert check(smoke_root, "--update-baseline") == 2
    assert "--update-baseline needs --baseline PATH" in capsys.readouterr().err


def test_a_baseline_with_text_for_numbers_exits_2(with_baseline, capsys):
    root, base = with_baseline
    table = pd.read_csv(base)
    table["fid_mean"] = table["fid_mean"].astype(object)
    table.loc[0, "fid_mean"] = "oops"
    table.to_csv(base, index=False)
    capsys.readouterr()
    assert check(root, "--baseline", str(base)) == 2
    assert "column fid_mean holds 'oops'; expected numbers" in capsys.readouterr().err


def test_check_finds_the_shipped_baseline_from_any_working_directory(smoke_root: Path):
    import os
    import subprocess
    import sys
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    elsewhere = smoke_root / "elsewhere"
    elsewhere.mkdir()  # no reports/baselines/ here: the package's own is read
    code = "import sys\nfrom harness.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def cfh(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, "--root", str(smoke_root), *argv],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = cfh("check", "smoke")
    shipped = default_baseline("smoke")
    assert shipped.is_absolute() and shipped.is_file()
    # the synthetic runs' eval settings differ from the shipped smoke baseline's: read, compared
    assert done.returncode == 2 and f"matches the baseline {shipped}" in done.stderr, done.stderr
    assert "does not exist" not in done.stderr
    (smoke_root / "grids" / "other").mkdir()
    (smoke_root / "grids" / "other" / "plan.json").write_text('{"points": []}')
    done = cfh("check", "other")
    assert done.returncode == 2
    assert "cfh ships no baseline for grid 'other' (shipped: smoke, in " in done.stderr
    assert "pass --baseline PATH" in done.stderr
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text())
    assert "baselines/*.csv" in pyproject["tool"]["setuptools"]["package-data"]["reports"]
