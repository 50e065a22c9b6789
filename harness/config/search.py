"""Where cfh's configs are found: the shipped experiments/ dir and the user's config dirs.

The shipped configs are experiments/ of the checkout (config.yaml, model/, data/, cluster/,
grids/; package data of the wheel). User dirs (`cfh --config-dir DIR` or $CFH_CONFIG_DIR,
os.pathsep-separated) have the same layout and come first: a user file wins over a shipped one
with the same name, and their grids and profiles are listed beside the shipped ones. Both
harness.config.compose (composition, and the cluster profile names validation checks) read
this module.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from core.errors import UserError
from core.yaml_bounds import check_yaml_file

_HARNESS = Path(__file__).resolve().parent.parent  # harness/
# The configs a user edits live in experiments/ at the top of the checkout; a wheel ships the same
# files as package data in harness/experiments/ (setup.py maps that package onto experiments/).
_SHIPPED = (_HARNESS / "experiments", _HARNESS.parent / "experiments")
SHIPPED_CONFIG_DIR = next((d for d in _SHIPPED if (d / "config.yaml").is_file()), _SHIPPED[1])
CONFIG_DIR_ENV = "CFH_CONFIG_DIR"


def user_config_dirs() -> tuple[Path, ...]:
    """The user config dirs from $CFH_CONFIG_DIR, first = highest priority; missing dirs refused."""
    return _parse_dirs(os.environ.get(CONFIG_DIR_ENV, ""), os.getcwd())


@functools.lru_cache(maxsize=16)
def _parse_dirs(text: str, cwd: str) -> tuple[Path, ...]:
    """Cached: grid expansion resolves configs once per point, and this runs every time."""
    dirs = []
    for part in text.split(os.pathsep):
        if not part:
            continue
        path = (Path(cwd) / Path(part).expanduser()).resolve()
        if not path.is_dir():
            raise UserError(
                f"config dir {part!r} ($CFH_CONFIG_DIR or --config-dir): no such folder"
            )
        dirs.append(path)
    return tuple(dict.fromkeys(dirs))


def config_dirs() -> tuple[Path, ...]:
    """Every config dir in search order: the user dirs, then the shipped configs."""
    return (*user_config_dirs(), SHIPPED_CONFIG_DIR)


def find_config(relpath: str, dirs: Sequence[Path] | None = None) -> Path | None:
    """The file that wins for a path such as `grids/smoke.yaml` (user dirs first), or None."""
    for root in config_dirs() if dirs is None else dirs:
        path = root / relpath
        if path.is_file():
            return path
    return None


def check_config_files(dirs: Sequence[Path] | None = None) -> None:
    """Refuse (core.yaml_bounds, one line naming the file) a YAML file that hydra may read from
    the config dirs past the YAML bounds: each dir's top-level *.yaml and those one folder down
    (the config groups), grids/ aside (load_grid checks a grid when it reads it). A file checked
    once is not read again in this process while its mtime and size stay the same."""
    for root in config_dirs() if dirs is None else dirs:
        for path in sorted([*root.glob("*.yaml"), *root.glob("*/*.yaml")]):
            if path.parent.name == "grids" or not path.is_file():
                continue
            try:
                check_yaml_file(path, "config file")
            except OSError:
                pass  # unreadable: hydra says so if it reads it


def group_options(group: str, dirs: Sequence[Path] | None = None) -> list[str]:
    """The names a config group offers: yaml files in <config dir>/<group>/ of every dir."""
    roots = config_dirs() if dirs is None else dirs
    return sorted({p.stem for root in roots for p in (root / group).glob("*.yaml")})
