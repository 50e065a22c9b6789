"""The `cfh` entry point: one command, subcommands registered by the modules that run them.

Each command module exposes `register(subparsers)`, which adds its subparser and sets
`func=<callable(args) -> int>`. Config values are hydra-style `key=value` overrides after the
subcommand. User errors (`model.errors.UserError`) print one line and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from model.errors import UserError

# Modules that register subcommands, in the order `cfh --help` lists them.
COMMAND_MODULES = (
    "harness.commands",  # train, sample, evaluate, encode
    "harness.sweep",  # sweep, status, cancel
    "reports.cli",  # report, check
    "harness.bench",  # bench
    "harness.edit",  # edit
)


def default_root() -> str:
    """The sweep state root: $CFH_ROOT, else ./outputs."""
    return os.environ.get("CFH_ROOT", "outputs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cfh",
        description="Train, sample, evaluate and ablate CausalFusion; sweeps on SLURM or locally.",
    )
    parser.add_argument(
        "--root",
        default=default_root(),
        help="folder that holds all sweep state (default: $CFH_ROOT or ./outputs)",
    )
    parser.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="your own configs (grids/, cluster/, model/, data/, as in harness/configs); its "
        "files win over shipped ones of the same name (repeatable; also $CFH_CONFIG_DIR)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that command is not built yet
                continue
            raise
        module.register(sub)
    return parser


def set_config_dirs(dirs: Sequence[str]) -> None:
    """Put --config-dir dirs before $CFH_CONFIG_DIR's, all absolute: jobs may start elsewhere."""
    env = [d for d in os.environ.get("CFH_CONFIG_DIR", "").split(os.pathsep) if d]
    if dirs or env:
        paths = [os.path.abspath(os.path.expanduser(d)) for d in [*dirs, *env]]
        os.environ["CFH_CONFIG_DIR"] = os.pathsep.join(dict.fromkeys(paths))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn user errors into one clear line and exit code 2."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [a for a in extra if a.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    args.overrides = list(getattr(args, "overrides", []) or []) + extra
    set_config_dirs(args.config_dir)
    try:
        if os.path.exists(args.root) and not os.path.isdir(args.root):
            raise UserError(f"--root {args.root} is a file; the root must be a folder (or absent)")
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
