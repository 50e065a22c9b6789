"""The cluster section of a run config: a profile (cluster/<name>.yaml of a config dir) checked
key by key into a ClusterProfile, with one line naming the file, key and rule.

Torch- and submitit-free: grid expansion, `cfh status` and `cfh sweep --dry-run` validate
profiles without importing either. Finding the profile files is harness.config.profiles' job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from core.config.sections import MAX_RANKS
from core.config.spec import quote
from core.errors import UserError

BACKENDS = ("local", "slurm")
MAX_ARRAY_SIZE = 1000  # SLURM's default MaxArraySize is 1001: longer lists go in several arrays


@dataclass(frozen=True)
class ClusterProfile:
    """A validated cluster profile (cluster/<name>.yaml of a config dir)."""

    name: str
    backend: str
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: float = 60
    signal_delay_s: int = 60
    max_num_timeout: int = 3
    setup: tuple[str, ...] = ()
    parallelism: int = 1  # local: points at once
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 16  # slurm: array tasks at once
    tasks_per_node: int = 1  # ranks per node: one per GPU; on CPU nodes, that many gloo ranks
    # extra sbatch options (submitit's slurm_additional_parameters), sorted (key, value) pairs
    slurm_additional_parameters: tuple[tuple[str, str | int], ...] = ()

    def sbatch_extra(self) -> dict[str, str | int]:
        """The extra sbatch options as submitit's `slurm_additional_parameters` mapping."""
        return dict(self.slurm_additional_parameters)


def world_size(cluster: Mapping) -> int:
    """Ranks of one point: nodes x tasks per node (one per GPU, else tasks_per_node, else 1)."""
    per_node = cluster.get("gpus_per_node") or cluster.get("tasks_per_node") or 1
    return int(cluster.get("nodes") or 1) * int(per_node)


_KEYS = {
    "name": "str",
    "backend": "local | slurm",
    "nodes": "int >= 1",
    "gpus_per_node": "int >= 0",
    "cpus_per_task": "int >= 1",
    "mem_gb": "number > 0 or null",
    "timeout_min": "number > 0 (int on slurm)",
    "signal_delay_s": "int >= 0, below timeout_min * 60",
    "max_num_timeout": "int >= 0",
    "setup": "list of shell lines",
    "parallelism": "int >= 1",
    "partition": "str or null",
    "account": "str or null",
    "qos": "str or null",
    "constraint": "str or null",
    "array_parallelism": "int >= 1",
    "tasks_per_node": "null (one per GPU, else 1) or an int >= 1, equal to gpus_per_node if > 0",
    "slurm_additional_parameters": "a mapping of sbatch option -> str or int (slurm only), "
    "e.g. {gres: 'gpu:a100:1', reservation: r, exclude: 'node[1-2]', mail_type: END}",
}
# sbatch options cfh sets from profile keys: an extra option may not override them silently.
_SBATCH_FROM_KEYS = {
    "job_name": None,
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "nodes": "nodes",
    "ntasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task",
    "mem": "mem_gb",
    "time": "timeout_min",
    "signal": "signal_delay_s",
    "array": "array_parallelism",
    "output": None,
    "error": None,
    "requeue": None,
    "open_mode": None,
}


def _as_dict(cfg: Any) -> dict:
    if OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise UserError(f"a cluster profile must be a mapping, got {type(cfg).__name__}")


def validate_profile(cluster_cfg: Any) -> ClusterProfile:
    """Check a cluster profile (mapping or DictConfig); UserError names the file, key and rule."""
    if isinstance(cluster_cfg, ClusterProfile):
        return cluster_cfg
    d = _as_dict(cluster_cfg)
    if not isinstance(d.get("name"), str) or not d["name"]:
        raise UserError(f"cluster.name={d.get('name')!r} is not allowed; expected a profile name")
    name = d["name"]
    where = f"cluster profile '{name}' (cluster/{name}.yaml: experiments or --config-dir)"

    def bad(key: str, why: str = "") -> UserError:
        got = d.get(key)
        return UserError(f"{where}: {key}={quote(got)} is not allowed{why}; expected {_KEYS[key]}")

    unknown = sorted(set(d) - set(_KEYS))
    if unknown:
        allowed = ", ".join(sorted(_KEYS))
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {allowed}")
    backend = d.get("backend")
    if backend not in BACKENDS:
        raise bad("backend")

    def integer(key: str, low: int, default: int) -> int:
        v = d.get(key, default)
        if v is None:
            v = default
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise bad(key)
        return v

    def number(key: str, default: float | None) -> float | None:
        v = d.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
            raise bad(key)
        return v

    def text(key: str) -> str | None:
        v = d.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v.strip() or any(c.isspace() for c in v):
            raise bad(key)
        return v

    nodes = integer("nodes", 1, 1)
    gpus = integer("gpus_per_node", 0, 0)
    tasks = integer("tasks_per_node", 1, max(1, gpus))
    if gpus and tasks != gpus:
        raise bad("tasks_per_node", f" with gpus_per_node={gpus} (one task per GPU)")
    timeout_min = number("timeout_min", 60)
    if timeout_min is None:
        raise bad("timeout_min")
    signal_delay_s = integer("signal_delay_s", 0, min(60, int(timeout_min * 60) // 4))
    if signal_delay_s >= timeout_min * 60:
        raise bad("signal_delay_s", f" with timeout_min={timeout_min}")
    setup = d.get("setup") or []
    if not isinstance(setup, list | tuple) or not all(isinstance(s, str) for s in setup):
        raise bad("setup")
    extra = _sbatch_extra(d.get("slurm_additional_parameters"), backend, where)
    profile = ClusterProfile(
        name=name,
        backend=backend,
        nodes=nodes,
        gpus_per_node=gpus,
        cpus_per_task=integer("cpus_per_task", 1, 1),
        mem_gb=number("mem_gb", None),
        timeout_min=timeout_min,
        signal_delay_s=signal_delay_s,
        max_num_timeout=integer("max_num_timeout", 0, 3),
        setup=tuple(setup),
        parallelism=integer("parallelism", 1, 1),
        partition=text("partition"),
        account=text("account"),
        qos=text("qos"),
        constraint=text("constraint"),
        array_parallelism=integer("array_parallelism", 1, 16),
        tasks_per_node=tasks,
        slurm_additional_parameters=extra,
    )
    ranks = nodes * tasks
    if ranks > MAX_RANKS:
        raise UserError(
            f"{where}: nodes={nodes} x tasks_per_node={tasks} = {ranks} ranks; at most "
            f"{MAX_RANKS} (the trainer seeds rank r's generators with seed x {MAX_RANKS} + r)"
        )
    if backend == "local":
        if nodes != 1:
            raise UserError(
                f"{where}: nodes={nodes} is not allowed on the local backend (one machine); "
                "expected 1 (several nodes: a slurm profile, e.g. cluster=slurm)"
            )
        if gpus:
            have = _local_gpu_count()
            if gpus > have:
                raise UserError(
                    f"{where}: gpus_per_node={gpus} but this machine has {have} GPU(s); "
                    "set gpus_per_node: 0 or use a slurm profile"
                )
    elif int(timeout_min) != timeout_min:
        raise bad("timeout_min", " on slurm (whole minutes)")
    return profile


def _sbatch_extra(value: Any, backend: str, where: str) -> tuple[tuple[str, str | int], ...]:
    """cluster.slurm_additional_parameters checked: str keys, str or int values, slurm only."""
    expected = _KEYS["slurm_additional_parameters"]
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise UserError(
            f"{where}: slurm_additional_parameters={value!r} is not allowed; expected {expected}"
        )
    if value and backend != "slurm":
        raise UserError(
            f"{where}: slurm_additional_parameters={dict(value)!r} needs a slurm profile "
            "(backend: slurm); the local backend has no sbatch"
        )
    out = []
    for key, v in value.items():
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            raise UserError(
                f"{where}: slurm_additional_parameters key {key!r} is not an sbatch option name"
            )
        if isinstance(v, bool) or not isinstance(v, str | int) or (isinstance(v, str) and not v):
            raise UserError(
                f"{where}: slurm_additional_parameters.{key}={v!r} is not allowed; expected a "
                "non-empty string or an int"
            )
        norm = key.replace("-", "_")
        if norm in _SBATCH_FROM_KEYS:
            instead = _SBATCH_FROM_KEYS[norm]
            hint = f"set cluster.{instead} instead" if instead else "cfh sets it itself"
            raise UserError(
                f"{where}: slurm_additional_parameters.{key}: --{key.replace('_', '-')} comes "
                f"from the profile; {hint}"
            )
        out.append((key, v))
    return tuple(sorted(out))


def _local_gpu_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch / no driver: no GPUs
        return 0
