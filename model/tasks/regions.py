"""Edit regions and their generation orders: which tokens `cfh edit` and the eval tasks regenerate.

Regions (`edit.region`) name the tokens to *generate*; every other token is kept bitwise:

    center                 the centre box, half the side in each direction (a quarter of the area)
    left_half right_half top_half bottom_half   (on an odd grid a half is the smaller part)
    all                    every token (plain generation; refused for swap)
    none                   no token (the output is the input)
    box:r0:c0:r1:c1        token-grid rows r0..r1-1 and columns c0..c1-1 (half-open)
    pixels:y0:x0:y1:x1     pixel rows y0..y1-1, columns x0..x1-1 (half-open); every token that
                           touches the box (latent runs: pixels of the decoded image)
Commas work too (box:r0,c0,r1,c1) but must be quoted on the command line, where hydra would read
them as a sweep.

Orders (`edit.order`): `nearest` generates the tokens closest to the known ones first (Euclidean
distance on the token grid, ties in seeded random order); random, raster, block_raster and
dilated are the generation orders of model/method/ar.py restricted to the region.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from core.choices import EDIT_ORDERS
from core.errors import UserError
from model.method.ar import ORDERS, token_order
from model.method.noise import NoiseSource, uniform

REGION_NAMES = ("center", "left_half", "right_half", "top_half", "bottom_half", "all", "none")
REGION_FORMS = f"{', '.join(REGION_NAMES)}, box:r0:c0:r1:c1 (token grid), pixels:y0:x0:y1:x1"
TASK_REGIONS = {"inpaint": "center", "outpaint": "right_half", "swap": "center"}


def _box(grid: int, r0: int, c0: int, r1: int, c1: int) -> torch.Tensor:
    """(grid*grid,) bool: True on rows r0..r1-1, columns c0..c1-1."""
    m = torch.zeros(grid, grid, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m.flatten()


def parse_region(spec: Any, grid: int, pixels: int, key: str = "edit.region") -> torch.Tensor:
    """The tokens a region spec names, as a (grid*grid,) bool mask in raster order.

    `pixels` is the image side in pixels (for `pixels:` boxes). UserError for anything else.
    """
    if not isinstance(spec, str):
        raise UserError(f"{key}={spec!r} must be a string; allowed: {REGION_FORMS}")
    half, quarter = grid // 2, grid // 4
    named = {
        "center": (quarter, quarter, quarter + (grid + 1) // 2, quarter + (grid + 1) // 2),
        "left_half": (0, 0, grid, half),
        "right_half": (0, grid - half, grid, grid),
        "top_half": (0, 0, half, grid),
        "bottom_half": (grid - half, 0, grid, grid),
        "all": (0, 0, grid, grid),
        "none": (0, 0, 0, 0),
    }
    if spec in named:
        return _box(grid, *named[spec])
    num, sep = r"\s*(-?\d+)\s*", "[:,]"  # ':' needs no quoting on a hydra command line
    m = re.fullmatch(rf"(box|pixels):{num}{sep}{num}{sep}{num}{sep}{num}", spec)
    if m is None:
        raise UserError(f"{key}={spec!r} is not a region; allowed: {REGION_FORMS}")
    kind, (a0, b0, a1, b1) = m.group(1), map(int, m.groups()[1:])
    side, unit = (grid, "token grid") if kind == "box" else (pixels, "image in pixels")
    r0, c0, r1, c1 = ("r0", "c0", "r1", "c1") if kind == "box" else ("y0", "x0", "y1", "x1")
    if not (0 <= a0 <= a1 <= side and 0 <= b0 <= b1 <= side):
        raise UserError(
            f"{key}={spec!r} is outside the {side}x{side} {unit} or reversed; "
            f"{kind}:{r0}:{c0}:{r1}:{c1} needs 0 <= {r0} <= {r1} <= {side} and "
            f"0 <= {c0} <= {c1} <= {side} (half-open)"
        )
    if kind == "box":
        return _box(grid, a0, b0, a1, b1)
    step = pixels // grid  # pixels per token side; a token touching the box is in the region
    if a0 == a1 or b0 == b1:
        return _box(grid, 0, 0, 0, 0)
    return _box(grid, a0 // step, b0 // step, -(-a1 // step), -(-b1 // step))


def _batched(region: torch.Tensor, batch: int) -> torch.Tensor:
    """A (L,) or (B, L) bool region as (B, L), checking that every sample has the same size."""
    region = region.expand(batch, -1) if region.dim() == 1 else region
    counts = region.sum(1)
    if region.shape[0] != batch or (counts != counts[0]).any():
        raise UserError("a batched region must be (B, L) with the same token count per sample")
    return region


def nearest_order(region: torch.Tensor, grid: int, generator: NoiseSource = None):
    """(B, M) long: the region's positions, nearest to a known (non-region) token first.

    Distance is Euclidean on the token grid; ties (and a region with no known token) fall in a
    seeded random order, so equally near tokens are not always taken in raster order.
    """
    B, L = region.shape
    rc = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1)
    rc = rc.reshape(L, 2).float()
    dist = torch.zeros(B, L)
    for b in range(B):
        known = rc[~region[b].cpu()]
        if len(known):
            dist[b] = torch.cdist(rc, known).min(1).values
    dist[~region.cpu()] = float("inf")  # known tokens sort last and are dropped below
    tie = uniform(generator, (B, L)).argsort(1).cpu()  # random first
    _, by_dist = dist.gather(1, tie).sort(dim=1, stable=True)  # then by distance, ties kept random
    order = tie.gather(1, by_dist)
    M = int(region[0].sum())
    return order[:, :M].to(region.device)


def region_positions(
    region: torch.Tensor,
    order: str,
    grid: int,
    batch: int,
    generator: NoiseSource = None,
    block: int = 4,
) -> torch.Tensor:
    """(B, M) long: the region's positions in generation order (`order` in EDIT_ORDERS)."""
    region = _batched(region, batch)
    if order == "nearest":
        return nearest_order(region, grid, generator)
    if order not in ORDERS:
        raise UserError(
            f"edit.order={order!r} is not allowed; choose one of: {', '.join(EDIT_ORDERS)}"
        )
    full = token_order(order, batch, grid, generator, block).to(region.device)  # (B, L)
    keep = region.gather(1, full)  # (B, L): is the k-th position of the order in the region?
    return full[keep].view(batch, -1)
