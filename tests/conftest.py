"""Shared fixtures. Each section is self-contained; add new fixtures below the last section."""

from __future__ import annotations

# ---------------------------------------------------------------- SLURM cluster (slurm_cluster)
# A real single-node SLURM cluster with accounting, started by scripts/slurm-local.sh once per
# test session. Tests that use it carry @pytest.mark.slurm. Where it cannot start (not root, no
# apt-get, the script fails) they skip with the reason, except under CI=true, where they fail.
# Concurrent test sessions on one machine share the cluster: each holds a lease (a file named
# after its pid); the last session to leave stops it if a test session started it (a cluster
# started by hand with `scripts/slurm-local.sh start` is left running).
import fcntl as _fcntl
import os as _os
import shutil as _shutil
import subprocess as _subprocess
import time as _time
from dataclasses import dataclass as _dataclass
from pathlib import Path as _Path

import pytest

SLURM_SCRIPT = _Path(__file__).resolve().parents[1] / "scripts" / "slurm-local.sh"
SLURM_STATE = _Path(_os.environ.get("CFH_SLURM_STATE", "/run/cfh-slurm"))


@_dataclass
class SlurmCluster:
    """What the tests need to know about the local cluster."""

    partition: str = "debug"
    gpu_partition: str = "gpu"
    cpus: int = 4
    gpus: int = 2
    started_here: bool = False
    start_s: float = 0.0
    start_log: str = ""

    def profile(self, **overrides) -> dict:
        """A slurm cluster profile (as in experiments/cluster/slurm.yaml) for this cluster."""
        profile = {
            "name": "slurm-local",
            "backend": "slurm",
            "partition": self.partition,
            "nodes": 1,
            "gpus_per_node": 0,
            "cpus_per_task": 1,
            "mem_gb": 1,
            "timeout_min": 10,
            "array_parallelism": 16,
            "max_num_timeout": 3,
            "signal_delay_s": 30,
            "setup": [],
        }
        profile.update(overrides)
        return profile

    def other_sessions(self) -> list[int]:
        """Pids of other live test sessions that use this cluster."""
        return [p for p in _live_leases() if p != _os.getpid()]

    def restart(self) -> tuple[_subprocess.CompletedProcess, _subprocess.CompletedProcess, float]:
        """`stop` then `start` (the session still stops it at the end); (stop, start, start_s)."""
        with _LeaseLock():
            stop = _run_script("stop")
            t0 = _time.monotonic()
            start = _run_script("start")
            seconds = _time.monotonic() - t0
            if self.started_here:
                (SLURM_STATE / "pytest-started").write_text(_slurmctld_pid())
        return stop, start, seconds


def _ci() -> bool:
    return _os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _ci():
        pytest.fail(f"CI=true but the SLURM cluster cannot start: {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


def _pid_alive(pid: int) -> bool:
    try:
        state = _Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(ln.startswith("State:") and "Z" in ln.split()[1:2] for ln in state.splitlines())


def _leases() -> _Path:
    return SLURM_STATE / "pytest-leases"


def _live_leases() -> list[int]:
    pids = []
    for f in _leases().glob("*") if _leases().is_dir() else []:
        if f.name.isdigit() and _pid_alive(int(f.name)):
            pids.append(int(f.name))
        elif f.name.isdigit():
            f.unlink(missing_ok=True)
    return pids


class _LeaseLock:
    """Serialises lease bookkeeping between test sessions."""

    def __enter__(self):
        SLURM_STATE.mkdir(parents=True, exist_ok=True)
        self.fd = _os.open(SLURM_STATE / "pytest.lock", _os.O_WRONLY | _os.O_CREAT, 0o644)
        _fcntl.flock(self.fd, _fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        _os.close(self.fd)


def _slurmctld_pid() -> str:
    """The pid of the slurmctld the script started last ("" if none)."""
    try:
        lines = (SLURM_STATE / "pids").read_text().split("\n")
    except OSError:
        return ""
    pids = [ln.split()[1] for ln in lines if ln.startswith("slurmctld ")]
    return pids[-1] if pids else ""


def _run_script(action: str, *args: str) -> _subprocess.CompletedProcess:
    return _subprocess.run(
        ["bash", str(SLURM_SCRIPT), action, *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start the local SLURM cluster (once per session); yields a SlurmCluster."""
    if _os.geteuid() != 0:
        _unavailable("scripts/slurm-local.sh needs root (it installs packages, starts daemons)")
    if not _shutil.which("sinfo") and not _shutil.which("apt-get"):
        _unavailable("SLURM is not installed and there is no apt-get to install it")
    with _LeaseLock():
        t0 = _time.monotonic()
        proc = _run_script("start")
        elapsed = _time.monotonic() - t0
        if proc.returncode != 0:
            _unavailable(
                f"scripts/slurm-local.sh start exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        started = "already up" not in proc.stdout
        _leases().mkdir(parents=True, exist_ok=True)
        (_leases() / str(_os.getpid())).touch()
        if started:  # names the slurmctld this session started: a later manual start is not ours
            (SLURM_STATE / "pytest-started").write_text(_slurmctld_pid())
    cluster = SlurmCluster(started_here=started, start_s=elapsed, start_log=proc.stdout)
    yield cluster
    with _LeaseLock():
        (_leases() / str(_os.getpid())).unlink(missing_ok=True)
        marker = SLURM_STATE / "pytest-started"
        started_by_tests = marker.exists() and marker.read_text() == _slurmctld_pid() != ""
        if started_by_tests and not _live_leases():
            _run_script("stop")
        if not started_by_tests or not _live_leases():
            marker.unlink(missing_ok=True)


# ---------------------------------------------------------------- parallel workers (pytest -n 2)
# `make test` runs two pytest-xdist workers. Each test module runs whole on one worker, so its
# module-scoped fixtures (a trained run, a swept grid) are built once; the modules that use the
# SLURM cluster run on one worker together, so one session holds the cluster's lease and the test
# that needs the cluster to itself (stop and restart) still runs. (xdist's own --dist loadgroup
# with xdist_group marks does not group under pytest 9.2 / xdist 3.8: measured, so this hook.)
# Each worker's torch runs on one thread (set before any test imports torch; subprocesses inherit
# it unless they set their own): two workers on two cores, neither oversubscribed.
SLURM_MODULES = (
    "tests/faults/test_concurrent_sweeps.py",
    "tests/harness/test_executors.py",
    "tests/harness/test_multinode_sweep.py",
    "tests/harness/test_slurm_multinode.py",
    "tests/harness/test_sweep_slurm.py",
)
if _os.environ.get("PYTEST_XDIST_WORKER"):
    _os.environ["OMP_NUM_THREADS"] = "1"


def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker; the SLURM modules as one unit."""
    from xdist.scheduler import LoadScopeScheduling  # xdist calls this hook only when loaded

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "slurm" if module in SLURM_MODULES else module

    return ByModule(config, log)


# ---------------------------------------------------------------- two nodes (slurm_two_nodes)
# The same local cluster reconfigured to two nodes (`scripts/slurm-local.sh start --nodes 2`):
# slurmd cfh-node1 and cfh-node2, each in its own network namespace with its own hostname and
# address on a bridge. Tests that use it carry @pytest.mark.multinode. Module-scoped: at the end
# of the module the cluster goes back to what it was (a cluster that was up is started again with
# its node count, and still counts as this session's when it was; one that was not up is
# stopped), so the `slurm` modules after it find the one-node cluster. The module holds the lease
# lock throughout, so no other test session starts, stops or reconfigures the cluster meanwhile;
# where another session holds a lease, or namespaces cannot be made (script exit 3: not root,
# `ip netns add` fails), the tests skip with the reason; other start failures are _unavailable.
# Node names and addresses: SlurmNodes below, read from $CFH_SLURM_STATE/cluster.env.


@_dataclass
class SlurmNodes:
    """The multi-node cluster: node names and addresses in node order (first = rendezvous)."""

    names: list[str]
    addrs: list[str]
    ctld_addr: str
    subnet: str
    partition: str = "debug"
    start_s: float = 0.0
    start_log: str = ""
    state: _Path = SLURM_STATE

    def script(self, action: str, *args: str) -> _subprocess.CompletedProcess:
        """Run scripts/slurm-local.sh ACTION ARGS... (captured, at most 600 s)."""
        return _run_script(action, *args)

    def states(self) -> dict[str, str]:
        """sinfo's state of each node of the partition ("idle", "down", "allocated", ...)."""
        cmd = ["sinfo", "-h", "-N", "-p", self.partition, "-o", "%N %T"]
        proc = _subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr[-2000:]}"
        return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())

    @property
    def master_addr(self) -> str:
        """The first node's address (MASTER_ADDR for a torch.distributed rendezvous)."""
        return self.addrs[0]

    @classmethod
    def read(cls, **kw) -> SlurmNodes:
        """From $CFH_SLURM_STATE/cluster.env, which `slurm-local.sh start` writes."""
        env = _cluster_env()
        return cls(
            names=env["CFH_SLURM_NODE_NAMES"].split(","),
            addrs=env["CFH_SLURM_NODE_ADDRS"].split(","),
            ctld_addr=env["CFH_SLURM_CTLD_ADDR"],
            subnet=env.get("CFH_SLURM_SUBNET", ""),
            **kw,
        )


def _cluster_env() -> dict[str, str]:
    """$CFH_SLURM_STATE/cluster.env as a dict ({} when no cluster is recorded)."""
    try:
        text = (SLURM_STATE / "cluster.env").read_text()
    except OSError:
        return {}
    return dict(ln.split("=", 1) for ln in text.splitlines() if "=" in ln)


def _slurmctld_up() -> bool:
    """The slurmctld the script started last is alive."""
    pid = _slurmctld_pid()
    if not pid or not _pid_alive(int(pid)):
        return False
    try:
        return _Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except OSError:
        return False


@pytest.fixture(scope="module")
def slurm_two_nodes():
    """Reconfigure the local SLURM cluster to two nodes for one module; yields SlurmNodes."""
    if _os.geteuid() != 0:
        pytest.skip("two-node SLURM cluster: network namespaces need root")
    if not _shutil.which("sinfo") and not _shutil.which("apt-get"):
        _unavailable("SLURM is not installed and there is no apt-get to install it")
    lock = _LeaseLock().__enter__()
    try:
        others = [p for p in _live_leases() if p != _os.getpid()]
        if others:
            pytest.skip(f"two-node SLURM cluster: other test sessions use the cluster ({others})")
        was_up = _slurmctld_up()
        before_nodes = _cluster_env().get("CFH_SLURM_NODES", "1") if was_up else ""
        marker = SLURM_STATE / "pytest-started"
        was_ours = was_up and marker.exists() and marker.read_text() == _slurmctld_pid()
        t0 = _time.monotonic()
        proc = _run_script("start", "--nodes", "2")
        elapsed = _time.monotonic() - t0
        if proc.returncode == 3:
            pytest.skip(f"two-node SLURM cluster unavailable: {proc.stderr.strip()[-400:]}")
        if proc.returncode != 0:
            _unavailable(
                f"scripts/slurm-local.sh start --nodes 2 exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        nodes = SlurmNodes.read(start_s=elapsed, start_log=proc.stdout)
    except BaseException:
        lock.__exit__(None, None, None)
        raise
    try:
        yield nodes
    finally:
        try:
            if was_up:
                _run_script("start", "--nodes", before_nodes)
                if was_ours:  # the session that started it still stops it at its end
                    marker.write_text(_slurmctld_pid())
            else:
                _run_script("stop")
        finally:
            lock.__exit__(None, None, None)


# ---------------------------------------------------------------- (next section below)
