"""The `cfh` command line: the entry point and its subcommands."""

from harness.cli.main import main

__all__ = ["main"]
