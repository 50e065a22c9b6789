"""The `cfh` entry point: one command, subcommands listed in a static table, imported on dispatch.

`COMMANDS` names every subcommand, its module and its one-line help, so `cfh --help` and
`cfh status` do not import torch or pandas for the commands they do not run. Only the module of
the command being run is imported; it exposes `register(subparsers)`, which adds its subparsers
and sets `func=<callable(args) -> int>` (and, for commands that compose a config, `cfg_job`,
what `--cfg job` prints). Global options (`--root`, `--cfg`) are accepted before or after the
subcommand. Config values are hydra-style `key=value` overrides after the subcommand. User
errors (`core.errors.UserError`) print one line and exit 2, no traceback; a full disk
(`core.errors.DiskFull`, or any OSError with ENOSPC/EDQUOT) prints one line naming the file,
`error: disk full writing PATH (No space left on device); free space and run again`, and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from core.errors import DiskFull, UserError, disk_full, one_line, place_error

DISTRIBUTION = "causalfusion-harness"

# subcommand -> (module that registers it, help line), in the order `cfh --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("harness.cli.commands", "train (or resume) one run into run_dir"),
    "sample": ("harness.cli.commands", "draw samples from a trained run at any S_eval"),
    "evaluate": ("harness.cli.commands", "sample (or reuse samples) and compute FID/KID/P/R"),
    "caption": ("harness.cli.commands", "caption images with a joint image-text run (caption.*)"),
    "encode": ("harness.cli.commands", "encode an image dataset to VAE latents for data=latents"),
    "stats": (
        "harness.cli.commands",
        "write a split's FID reference statistics (+ images) to an .npz",
    ),
    "sweep": ("harness.sweep.reconcile", "submit a grid's missing points (reconcile)"),
    "status": ("harness.sweep.reconcile", "one row per point of a grid: state, progress, FID"),
    "cancel": ("harness.sweep.reconcile", "cancel a grid's active points (key=value filters)"),
    "report": ("reports.cli", "tables, plots and report.html for a grid"),
    "check": ("reports.cli", "fail when FID regressed against a baseline"),
    "bench": (
        "harness.bench.command",
        "training/sampling throughput of cfh vs the release-style reference",
    ),
    "edit": (
        "harness.cli.edit",
        "edit real images in context: inpaint, outpaint, or regenerate a region as another class",
    ),
}
# Global options that take a value: skipped when looking for the subcommand's name in argv.
_VALUED_GLOBALS = ("--root", "--cfg", "--config-dir")


def default_root() -> str:
    """The sweep state root: $CFH_ROOT, else ./outputs."""
    return os.environ.get("CFH_ROOT", "outputs")


def version() -> str:
    """The installed distribution's version, else the checkout's pyproject.toml version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(DISTRIBUTION)
    except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


class _VersionAction(argparse.Action):
    """`--version`: prints `cfh <version>`; looked up only when asked (importlib.metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"cfh {version()}")
        parser.exit()


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """--root, --cfg and --config-dir; SUPPRESS defaults so that a value after the subcommand
    wins and none clobbers another."""
    parser.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help="folder that holds all sweep state (default: $CFH_ROOT or ./outputs)",
    )
    parser.add_argument(
        "--cfg",
        choices=("job",),
        default=argparse.SUPPRESS,
        help="print the composed, validated config as YAML and exit (hydra's --cfg job)",
    )
    parser.add_argument(
        "--config-dir",
        action="append",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="your own configs (grids/, cluster/, model/, data/, as in experiments/); its "
        "files win over shipped ones of the same name (repeatable; also $CFH_CONFIG_DIR)",
    )


def command_in(argv: Sequence[str]) -> str | None:
    """The subcommand argv names: its first token that is not a global option or its value."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in _VALUED_GLOBALS:
            skip = True
        elif not token.startswith("-"):
            return token if token in COMMANDS else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser: every subcommand listed, only `command`'s module imported and registered.

    command=None registers none (enough for `cfh --help`); "*" imports and registers all.
    """
    parser = argparse.ArgumentParser(
        prog="cfh",
        description="Train, sample, evaluate and ablate CausalFusion; sweeps on SLURM or locally.",
        epilog="Config keys and their meaning: experiments/config.yaml; commands: README.md.\n"
        "Run `cfh COMMAND --help` for a command's options and examples.",
        allow_abbrev=False,  # command_in must see global options spelled out
    )
    parser.add_argument("--version", action=_VersionAction, help="print cfh's version and exit")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = set(COMMANDS) if command == "*" else {command}
    modules = {COMMANDS[c][0] for c in wanted if c in COMMANDS}
    registered: set[str] = set()
    for name, (module_name, text) in COMMANDS.items():
        if name in registered:
            continue
        if module_name in modules:
            importlib.import_module(module_name).register(sub)
            registered |= {n for n, (m, _) in COMMANDS.items() if m == module_name}
        else:  # listed in --help; its options are known once it is the command run
            sub.add_parser(name, help=text, add_help=False)
            registered.add(name)
    for p in sub.choices.values():
        if p.add_help:  # the registered ones
            _add_global_options(p)
    return parser


def set_config_dirs(dirs: Sequence[str]) -> None:
    """Put --config-dir dirs before $CFH_CONFIG_DIR's, all absolute: jobs may start elsewhere."""
    env = [d for d in os.environ.get("CFH_CONFIG_DIR", "").split(os.pathsep) if d]
    if dirs or env:
        paths = [os.path.abspath(os.path.expanduser(d)) for d in [*dirs, *env]]
        os.environ["CFH_CONFIG_DIR"] = os.pathsep.join(dict.fromkeys(paths))


def check_repeated_keys(overrides: Sequence[str]) -> None:
    """Refuse a key given twice with different values (config.compose.check_repeated); hydra's
    parser, which compares the values, is imported only when a key is given twice."""
    keys = [text.partition("=")[0].lstrip("+~") for text in overrides]
    if len(set(keys)) < len(keys):
        from harness.config.compose import check_repeated  # hydra: not for every `cfh status`

        check_repeated(overrides)


EXIT_DISK_FULL = 1  # not 2: the input was fine, the machine had no room for what it made


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn user errors into one clear line and exit code 2 (a full disk:
    one line naming the file, exit code 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(command_in(argv))
    args, extra = parser.parse_known_args(argv)
    unknown_flags = [a for a in extra if a.startswith("-")]
    if unknown_flags:
        parser.error(f"unrecognized arguments: {' '.join(unknown_flags)}")
    args.overrides = list(getattr(args, "overrides", []) or []) + extra
    set_config_dirs(getattr(args, "config_dir", None) or [])
    if not hasattr(args, "root"):
        args.root = default_root()
    try:
        if os.path.exists(args.root) and not os.path.isdir(args.root):
            raise UserError(f"--root {args.root} is a file; the root must be a folder (or absent)")
        check_repeated_keys(args.overrides)
        if getattr(args, "cfg", None) == "job":
            cfg_job = getattr(args, "cfg_job", None)
            if cfg_job is None:
                raise UserError(f"--cfg job: cfh {args.command} composes no config")
            return int(cfg_job(args) or 0)
        return int(args.func(args) or 0)
    except DiskFull as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return EXIT_DISK_FULL
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a place that cannot be written: one line naming it, no traceback
        full = disk_full(e)  # one no cfh writer saw (a library's own file): named as it can be
        if full is not None:
            print(f"error: {one_line(full)}", file=sys.stderr)
            return EXIT_DISK_FULL
        error = place_error(e)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
