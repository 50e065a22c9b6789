"""The AR axis: how many AR steps, how the L tokens split into groups, their order and weights.

Everything random here draws from an explicit torch.Generator (or, for token orders at
sampling time, from per-sample streams: model.noise) so that a seeded run is reproducible (the
official code used an unseeded Python RNG; reference section 4).
"""

from __future__ import annotations

import hashlib
import math

import torch

from core.choices import ORDERS, STEP_MODES, WEIGHT_SCHEDULES
from core.errors import UserError
from model.method.masks import check_group_sizes
from model.method.noise import NoiseSource, uniform


def ar_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A CPU generator determined by (seed, step, rank) alone, independent of process history."""
    digest = hashlib.sha256(f"cfh-ar:{int(seed)}:{int(step)}:{int(rank)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _check_steps(S: int, L: int, name: str) -> None:
    if isinstance(S, bool) or not isinstance(S, int) or not 1 <= S <= L:
        raise UserError(f"{name}={S!r} must be an int in 1..L={L}")


def sample_num_steps(
    mode: str,
    L: int,
    generator: torch.Generator | None,
    fixed_steps: int = 1,
    decay: float = 0.9,
) -> int:
    """Draw the number of AR steps S in 1..L: fixed, uniform, or P(S=k) ~ decay^(k-1)."""
    if mode == "fixed":
        _check_steps(fixed_steps, L, "ar.steps")
        return fixed_steps
    if mode == "uniform":
        return int(torch.randint(1, L + 1, (1,), generator=generator).item())
    if mode == "decay":
        if not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
            raise UserError(f"ar.decay={decay!r} must be in (0, 1]")
        # log-space keeps tiny probabilities finite for long sequences and strong decay
        logits = torch.arange(L, dtype=torch.float64) * math.log(decay)
        probs = torch.softmax(logits, dim=0)
        return int(torch.multinomial(probs, 1, generator=generator).item()) + 1
    raise UserError(f"ar.mode={mode!r} must be one of {', '.join(STEP_MODES)}")


def sample_group_sizes(L: int, S: int, generator: torch.Generator | None) -> list[int]:
    """Split L tokens into S groups at S-1 distinct cut points drawn uniformly from 1..L-1."""
    _check_steps(S, L, "S")
    cuts = (torch.randperm(L - 1, generator=generator)[: S - 1] + 1).sort().values.tolist()
    bounds = [0, *cuts, L]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def equal_group_sizes(L: int, S: int) -> list[int]:
    """Split L tokens into S near-equal groups (the first L % S groups get one extra token)."""
    _check_steps(S, L, "S")
    base, extra = divmod(L, S)
    return [base + 1] * extra + [base] * (S - extra)


def token_order(
    kind: str,
    batch: int,
    grid: int,
    generator: NoiseSource = None,
    block: int = 4,
) -> torch.Tensor:
    """(batch, grid*grid) long: token k of the AR sequence is image position order[:, k].

    Positions are raster indices r * grid + c. Kinds:
      random        a fresh permutation per sample (drawn from `generator`: one stream, or
                    a SampleNoise with one stream per sample);
      raster        row by row;
      block_raster  block x block tiles in raster order, raster inside each tile;
      dilated       the four stride-2 phases (even row, even col), (even, odd), (odd, even),
                    (odd, odd), one after another, each in raster order; so the first quarter
                    of the sequence is a coarse 2x-subsampled image that later tokens refine.
    """
    L = grid * grid
    if kind == "random":
        return uniform(generator, (batch, L)).argsort(dim=1)
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    if kind == "raster":
        key = r * grid + c
    elif kind == "block_raster":
        if isinstance(block, bool) or not isinstance(block, int) or block < 1 or grid % block:
            raise UserError(f"order_block={block!r} must be a positive divisor of grid={grid}")
        tile = (r // block) * (grid // block) + c // block
        key = tile * block * block + (r % block) * block + c % block
    elif kind == "dilated":
        phase = (r % 2) * 2 + c % 2
        key = phase * L + r * grid + c
    else:
        raise UserError(f"order={kind!r} must be one of {', '.join(ORDERS)}")
    order = key.flatten().argsort()
    return order.unsqueeze(0).expand(batch, L).clone()


def ar_token_weights(
    group_sizes: list[int], L: int, w_max: float, w_min: float, schedule: str = "linear"
) -> torch.Tensor:
    """(L,) float weight of each AR-ordered token, from the first position x of its group.

    linear: w = max - (max - min) * x / L;  cosine: w = min + (max - min) * (1 + cos(pi x / L)) / 2.
    Early groups see the least context and get the most weight (reference section 5).
    """
    sizes = check_group_sizes(group_sizes, L)
    if schedule not in WEIGHT_SCHEDULES:
        raise UserError(f"ar_weight.schedule={schedule!r} must be one of linear, cosine")
    starts = torch.tensor([0, *sizes[:-1]], dtype=torch.float64).cumsum(0)
    x = starts.repeat_interleave(torch.tensor(sizes)) / L
    if schedule == "linear":
        w = w_max - (w_max - w_min) * x
    else:
        w = w_min + (w_max - w_min) * (1 + torch.cos(math.pi * x)) / 2
    return w.float()
