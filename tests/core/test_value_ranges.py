"""Every numeric key's range is what the code below it can hold (issue 32, point 1).

Each integer and float key of the schema is tried at its bounds and one step beyond them; the
bounds that come from a library (numpy's 32-bit legacy seed, torch.distributed's int64
nanoseconds, int64 tensors) are checked against that library; and cfh train, evaluate and
sweep refuse a seed out of range in one line, exit 2, with nothing written.
"""

from __future__ import annotations

import datetime
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import SCHEMA, from_dict
from core.config.sections import DIST_TIMEOUT_MAX_S, MAX_RANKS, SEED_MAX
from core.config.spec import INT64_MAX, PATH_MAX
from core.errors import UserError

TINY = ["model=T", "data=digits", "train.steps=1", "train.batch_size=8"]


def nested(key: str, value: object) -> dict:
    """{"a": {"b": value}} for "a.b"."""
    out: dict = {}
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return out


def refused(key: str, value: object) -> str | None:
    """The one refusal line of key=value built into a RunConfig, or None when accepted."""
    try:
        from_dict(nested(key, value))
    except UserError as e:
        return str(e)
    return None


BOUNDED = {k: s for k, s in SCHEMA.items() if s.bounds is not None}
INTEGERS = {k: s for k, s in BOUNDED.items() if s.what.startswith("an integer")}
NUMBERS = {k: s for k, s in BOUNDED.items() if s.what.startswith("a number")}


def test_every_numeric_key_has_a_range():
    # every key that takes a plain number is an integer() or a number() with known bounds
    plain = {k for k, s in SCHEMA.items() if s.accepts(3) or s.accepts(0.5)}
    shaped = {"train.betas", "sample.ckpt", "eval.bootstrap", "edit.input", "caption.input"}
    assert plain - shaped <= set(BOUNDED), sorted(plain - shaped - set(BOUNDED))
    assert len(INTEGERS) >= 30 and len(NUMBERS) >= 15
    for key, spec in INTEGERS.items():
        assert spec.bounds[1] <= INT64_MAX, key


@pytest.mark.parametrize("key", sorted(INTEGERS))
def test_integer_keys_at_and_beyond_their_bounds(key):
    lo, hi = INTEGERS[key].bounds
    assert refused(key, int(lo)) is None and refused(key, int(hi)) is None
    for beyond in (int(lo) - 1, int(hi) + 1):
        line = refused(key, beyond)
        assert line is not None and line.startswith(f"{key}={beyond} is not allowed")
        assert "\n" not in line
    assert refused(key, float(lo) + 0.5) is not None  # not an integer


@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_float_keys_at_and_beyond_their_bounds(key):
    spec = NUMBERS[key]
    (lo, hi), (lo_open, hi_open) = spec.bounds, spec.open_ends
    inside_lo = math.nextafter(lo, math.inf) if lo_open else lo
    inside_hi = math.nextafter(hi, -math.inf) if hi_open else hi
    if hi == math.inf:
        inside_hi = sys.float_info.max  # the largest finite float: inf itself is refused
    for value in (float(inside_lo), float(inside_hi)):
        assert refused(key, value) is None, (key, value)
    beyond = [lo if lo_open else math.nextafter(lo, -math.inf), math.inf, math.nan]
    if hi != math.inf:
        beyond.append(hi if hi_open else math.nextafter(hi, math.inf))
    for value in beyond:
        line = refused(key, float(value))
        assert line is not None and line.startswith(f"{key}=") and "\n" not in line, value


def test_the_seed_bound_is_what_every_seeded_generator_holds():
    # the trainer seeds rank r's generators with seed * MAX_RANKS + r
    top = SEED_MAX * MAX_RANKS + MAX_RANKS - 1
    np.random.seed(top)
    torch.manual_seed(top)
    with pytest.raises(ValueError):  # one seed beyond: numpy refuses the last rank's
        np.random.seed((SEED_MAX + 1) * MAX_RANKS + MAX_RANKS - 1)
    assert refused("seed", SEED_MAX) is None and refused("seed", SEED_MAX + 1)


def test_the_int64_and_timeout_bounds_are_the_libraries():
    assert int(torch.tensor(INT64_MAX, dtype=torch.int64)) == INT64_MAX
    with pytest.raises((OverflowError, RuntimeError, ValueError)):
        torch.tensor(INT64_MAX + 1, dtype=torch.int64)
    # torch.distributed holds the timeout as int64 nanoseconds
    ns = int(datetime.timedelta(seconds=DIST_TIMEOUT_MAX_S).total_seconds()) * 10**9
    assert ns <= INT64_MAX < (DIST_TIMEOUT_MAX_S + 1) * 10**9


def test_paths_the_filesystem_cannot_hold_are_refused():
    assert refused("run_dir", "runs/" + "a" * 255) is None
    line = refused("run_dir", "runs/" + "a" * 256)
    assert line is not None and "(261 characters)" in line and len(line) < 300
    assert refused("data.root", "/x" * (PATH_MAX // 2)) is not None


def _cfh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_cfh_refuses_a_seed_out_of_range_before_writing(tmp_path, command):
    run = tmp_path / "run"
    out = _cfh(command, f"run_dir={run}", f"seed={SEED_MAX + 1}", *TINY, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"seed={SEED_MAX + 1} is not allowed" in lines[0], out.stderr
    assert not run.exists()


def test_cfh_sweep_refuses_seeds_out_of_range_before_writing(tmp_path):
    root = tmp_path / "runs"
    grid = tmp_path / "big_seed.yaml"
    grid.write_text(
        "description: a seed past the range\nbase: {model: T, data: digits, train.steps: 1}\n"
        f"seeds: [0, {SEED_MAX + 1}]\neval: false\n"
    )
    for args in (["smoke", "--seeds", f"0,{SEED_MAX + 1}"], [str(grid)]):
        out = _cfh("sweep", *args, "--dry-run", "--root", str(root), cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"seed={SEED_MAX + 1} is not allowed" in lines[0], lines
        assert not root.exists()
