"""Grids: grid files, their expansion into points, signatures, findings."""

from harness.grid.files import list_grids, load_grid, parse_grid

__all__ = ["list_grids", "load_grid", "parse_grid"]
