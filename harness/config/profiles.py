"""A point's resources: its cluster settings checked against the profile files of the config
dirs (harness.config.search), without submitit. The profile's own keys: core.config.cluster.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import RunConfig, typed
from core.config.cluster import BACKENDS, validate_profile, world_size
from core.errors import UserError
from core.yaml_bounds import check_yaml_file
from harness.config.search import config_dirs, find_config, group_options

# ---------------------------------------------------------------- a point's resources


def _profile(name: str) -> dict:
    """The cluster profile file that wins for a name (user config dirs first)."""
    path = find_config(f"cluster/{name}.yaml")
    if path is None:
        raise UserError(f"unknown cluster profile {name!r}; allowed: {group_options('cluster')}")
    return _load_profile(path)


@functools.cache
def _load_profile(path: Path) -> dict:
    check_yaml_file(path, "cluster profile")
    return OmegaConf.to_container(OmegaConf.load(path))  # type: ignore[return-value]


def check_cluster(cfg: RunConfig | dict, error: Any) -> None:
    """Resource sanity: known backend, a valid profile, no GPUs on a CPU profile, and a global
    batch that splits evenly over the point's ranks."""
    run = typed(cfg)
    cluster_json = json.dumps(run.cluster, sort_keys=True)
    problem = _cluster_problem(cluster_json, run.train.device, config_dirs())
    if problem:
        raise error(problem)
    ranks, batch = world_size(run.cluster), run.train.batch_size
    if batch % ranks:
        raise error(
            f"train.batch_size={batch} does not split over the point's {ranks} ranks "
            f"(cluster.nodes x tasks per node); use a multiple of {ranks}"
        )


@functools.lru_cache(maxsize=256)
def _cluster_problem(cluster_json: str, device: str, dirs: tuple[Path, ...]) -> str | None:
    """What is wrong with one resource shape, or None (cached: grids repeat shapes; `dirs`, the
    config search path, is in the key because the profile files come from it)."""
    c = json.loads(cluster_json)
    if c.get("backend") not in BACKENDS:
        return f"cluster.backend={c.get('backend')!r}; allowed: {', '.join(BACKENDS)}"
    gpus = c.get("gpus_per_node", 0)
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        return f"cluster.gpus_per_node={gpus!r} must be an integer >= 0"
    if not _profile(c["name"]).get("gpus_per_node", 0) and (gpus or device == "cuda"):
        cpu_only = f"cluster profile {c['name']!r} is a CPU profile (gpus_per_node: 0)"
        gpu_profiles = [p for p in group_options("cluster") if _profile(p).get("gpus_per_node")]
        hint = f"; GPU profiles: {', '.join(gpu_profiles)}" if gpu_profiles else ""
        if gpus:
            return f"cluster.gpus_per_node={gpus}: {cpu_only}{hint}"
        return f"train.device=cuda: {cpu_only}; use train.device=auto or cpu{hint}"
    try:
        validate_profile(c)
    except UserError as e:
        return str(e)
    return None
