"""The two-node local SLURM cluster (`scripts/slurm-local.sh start --nodes 2`).

Each slurmd runs in its own network namespace with its own hostname and address on a bridge the
script makes; these tests check what a multi-node torch.distributed job needs from it: two idle
nodes, one task per node with distinct hostnames and node ids, and a TCP connection from a task on
the second node to a listener on the first node's address (the rendezvous path). The last test
stops the cluster twice and checks that nothing the script made is left; the fixture then puts
the cluster back as it was (see slurm_two_nodes in tests/conftest.py). It reconfigures the cluster
that the slurm_cluster fixture starts, so this module is one of conftest's SLURM_MODULES.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]

HOSTS_TAG = "# cfh-slurm-local"  # the tag scripts/slurm-local.sh puts on its /etc/hosts lines


def run(cmd: list[str], timeout: float = 60) -> str:
    """Run cmd (bounded in time); its stdout; fail with its stderr when it exits non-zero."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc.stdout


def srun(nodes, *args: str, timeout: float = 60) -> list[str]:
    """`srun -N2 --ntasks-per-node=1 ...` on the cluster's partition; its output lines."""
    cmd = ["srun", "-p", nodes.partition, "-N2", "--ntasks-per-node=1", "-t", "2", *args]
    return run(cmd, timeout=timeout).splitlines()


def test_sinfo_shows_two_idle_nodes(slurm_two_nodes):
    nodes = slurm_two_nodes
    assert nodes.names == ["cfh-node1", "cfh-node2"]
    assert len(set(nodes.addrs)) == 2 and nodes.ctld_addr not in nodes.addrs
    assert nodes.states() == {"cfh-node1": "idle", "cfh-node2": "idle"}
    for name, addr in zip(nodes.names, nodes.addrs, strict=True):
        assert socket.gethostbyname(name) == addr  # /etc/hosts, as MASTER_ADDR will resolve
    print(f"two idle nodes {nodes.names} at {nodes.addrs} in {nodes.start_s:.1f} s")


def test_one_task_per_node_sees_its_node(slurm_two_nodes):
    nodes = slurm_two_nodes
    assert sorted(srun(nodes, "hostname")) == nodes.names
    lines = srun(nodes, "bash", "-c", "echo $SLURM_NODEID $SLURM_LOCALID $(hostname)")
    got = sorted(tuple(line.split()) for line in lines)
    assert got == [("0", "0", "cfh-node1"), ("1", "0", "cfh-node2")], lines
    assert socket.gethostname() not in nodes.names  # the host keeps its own hostname


TCP_TASK = textwrap.dedent(
    """
    import os, socket, sys, time
    master = socket.gethostbyname(sys.argv[1])
    port = 29517
    if os.environ["SLURM_NODEID"] == "0":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((master, port))
        srv.listen(1)
        srv.settimeout(30)
        conn, peer = srv.accept()
        conn.sendall(socket.gethostname().encode())
        conn.close()
        print("listener", socket.gethostname(), "accepted", peer[0])
    else:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = socket.create_connection((master, port), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        conn.settimeout(10)
        print("client", socket.gethostname(), "got", conn.recv(100).decode(), "from", master)
    """
)


def test_task_on_node2_reaches_listener_on_node1(slurm_two_nodes):
    nodes = slurm_two_nodes
    lines = srun(nodes, sys.executable, "-c", TCP_TASK, nodes.names[0], timeout=90)
    assert f"listener cfh-node1 accepted {nodes.addrs[1]}" in lines, lines
    assert f"client cfh-node2 got cfh-node1 from {nodes.master_addr}" in lines, lines


def _leftovers(nodes) -> list[str]:
    """What scripts/slurm-local.sh makes for several nodes and is still there."""
    left = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    left += [f"netns {ln.split()[0]}" for ln in netns.stdout.splitlines() if ln.startswith("cfh-")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30)
    for line in links.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if re.fullmatch(r"cfh-br0|cfh-node\d+-h", name):
            left.append(f"link {name}")
    with open("/etc/hosts") as f:
        left += [f"/etc/hosts: {ln.strip()}" for ln in f if HOSTS_TAG in ln]
    if (nodes.state / "cluster.env").exists():
        left.append(str(nodes.state / "cluster.env"))
    return left


def test_stop_twice_removes_everything(slurm_two_nodes):
    """Last in the module: the fixture starts the cluster again as it was before the module."""
    nodes = slurm_two_nodes
    first = nodes.script("stop")
    assert first.returncode == 0, first.stderr
    assert "removed the namespaces, links, bridge and /etc/hosts lines" in first.stdout
    second = nodes.script("stop")
    assert second.returncode == 0, second.stderr
    assert _leftovers(nodes) == []
    slurmd = subprocess.run(["pgrep", "-x", "slurmd"], capture_output=True, text=True, timeout=30)
    assert [p for p in slurmd.stdout.split() if not _is_zombie(int(p))] == []


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return any(ln.startswith("State:") and ln.split()[1] in ("Z", "X") for ln in f)
    except OSError:
        return True
