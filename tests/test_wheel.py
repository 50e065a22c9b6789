"""The wheel, not an editable checkout: built, installed into a fresh venv, run from elsewhere.

Builds the wheel from a copy of the checkout, installs it with the pins of constraints.txt (torch
from local disk), without the data packages (the tiny sweep trains on digits), then, from a folder
outside the checkout and with no PYTHONPATH: `cfh sweep smoke --dry-run` (a shipped grid, package
data), a one-point real sweep of a grid and cluster profile from a user --config-dir, and
`cfh status`. A full install takes about a minute and 6 GB under the temp dir.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the copy leaves out: local state and build outputs, never anything the wheel ships.
NOT_SOURCE = (".venv", ".git", ".cache", "outputs", "build", "dist", "*.egg-info", "__pycache__")
NOT_SOURCE += (".pytest_cache", ".ruff_cache")
pytestmark = pytest.mark.slow

USER_GRID = """
description: one tiny point from a user config dir
base:
  model: T
  data: digits
  train.steps: 2
  train.batch_size: 8
  train.ckpt_every: 2
  train.log_every: 1
  sample.num: 8
  sample.steps: 2
  sample.batch_size: 8
  eval.extractor: classifier
  eval.kid_subset_size: 4
seeds: [0]
resources:
  cluster: mybox
"""


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> str:
    """Run a command; fail the test with its output unless it exits 0."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed, and an environment that does not see the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CFH_CONFIG_DIR")}
    env.pop("CFH_ROOT", None)
    t0 = time.perf_counter()
    src = tmp / "src"  # a copy: building in place would leave build/ and *.egg-info behind
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    # setuptools of the running venv: an isolated build would fetch it from the index first
    run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp / "dist"), str(src)],
        tmp,
        env,
    )
    (wheel,) = (tmp / "dist").glob("causalfusion_harness-*.whl")
    built = time.perf_counter()
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", str(venv)], tmp, env)
    py = str(venv / "bin" / "python")
    # --no-compile: no .pyc for all of torch's files up front (imports compile what they use)
    pip = [py, "-m", "pip", "install", "-q", "--no-compile", "-c", str(REPO / "constraints.txt")]
    run([*pip, str(wheel)], tmp, env)  # the tiny sweep needs no data package (digits, classifier)
    done = time.perf_counter()
    print(f"wheel built in {built - t0:.0f} s, venv installed in {done - built:.0f} s")
    work = tmp / "elsewhere"
    work.mkdir()
    return {"venv": venv, "cfh": str(venv / "bin" / "cfh"), "env": env, "work": work}


def test_the_wheel_ships_configs_and_reference(installed):
    py = str(installed["venv"] / "bin" / "python")
    code = (
        "import harness, harness.bench.reference; "
        "from harness.config.search import SHIPPED_CONFIG_DIR as d; "
        "from harness.grid.files import list_grids; print(harness.__file__); print(list_grids()); "
        "print(sorted(p.name for p in (d / 'cluster').glob('*.yaml')))"
    )
    out = run([py, "-c", code], installed["work"], installed["env"]).splitlines()
    assert "site-packages" in out[0] and str(REPO) not in out[0]
    assert "'smoke'" in out[1] and "'joint'" in out[1]
    assert "local.yaml" in out[2]


def test_sweeps_from_outside_the_checkout(installed):
    cfh, env, work = installed["cfh"], installed["env"], installed["work"]
    out = run([cfh, "sweep", "smoke", "--dry-run"], work, env)
    assert "plan:" in out, out
    conf = work / "conf"
    (conf / "grids").mkdir(parents=True)
    (conf / "cluster").mkdir()
    (conf / "grids" / "tiny.yaml").write_text(textwrap.dedent(USER_GRID))
    local = (REPO / "experiments" / "cluster" / "local.yaml").read_text()
    assert "name: local" in local and "cpus_per_task: 2" in local
    profile = local.replace("name: local", "name: mybox").replace(
        "cpus_per_task: 2", "cpus_per_task: 1"
    )
    (conf / "cluster" / "mybox.yaml").write_text(profile)
    t0 = time.perf_counter()
    out = run([cfh, "--config-dir", "conf", "sweep", "tiny"], work, env, timeout=900)
    print(f"tiny sweep from the wheel: {time.perf_counter() - t0:.0f} s\n{out}")
    assert "tiny: 1 completed" in out, out
    out = run([cfh, "--config-dir", "conf", "status", "tiny"], work, env)
    assert " completed " in out and "1/1" in out, out
    assert (work / "outputs" / "grids" / "tiny" / "plan.json").is_file()
