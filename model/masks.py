"""The generalized causal attention mask of CausalFusion (reference section 3), dense and flex.

The training sequence is [C condition tokens] + [clean tokens of groups 1..S-1] + [noisy tokens of
groups 1..S]. Every token gets a kind (COND, CLEAN, NOISY) and a group id (0 for condition tokens,
1..S for the AR groups); the mask is a function of the (query, key) kinds and group ids only:

    key is COND                                   -> allowed (cond rows see only this)
    query CLEAN of group i, key CLEAN of group j  -> allowed iff j <= i
    query NOISY of group s, key CLEAN of group j  -> allowed iff j < s
    query NOISY of group s, key NOISY of group j  -> allowed iff j == s
    anything else (cond -> non-cond, clean -> noisy) is forbidden.
"""

from __future__ import annotations

import functools

import torch

from model.errors import UserError

COND, CLEAN, NOISY, PAD = 0, 1, 2, 3


def check_group_sizes(
    group_sizes: list[int], total: int | None = None, name: str = "group_sizes", total_name="L"
) -> list[int]:
    """Validate a split into AR groups: a non-empty list of positive ints (summing to `total`)."""
    sizes = list(group_sizes)
    if not sizes or any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in sizes):
        raise UserError(f"{name}={sizes} must be a non-empty list of positive ints")
    if total is not None and sum(sizes) != total:
        raise UserError(f"{name}={sizes} sums to {sum(sizes)}, must sum to {total_name}={total}")
    return sizes


def _check_cond_len(cond_len: int) -> None:
    if isinstance(cond_len, bool) or not isinstance(cond_len, int) or cond_len < 0:
        raise UserError(f"cond_len={cond_len!r} must be an int >= 0")


def token_layout(
    cond_len: int, group_sizes: list[int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kind and group id (both (n,) long) of every token of the training sequence."""
    _check_cond_len(cond_len)
    sizes = check_group_sizes(group_sizes)
    kinds = [COND] * cond_len
    groups = [0] * cond_len
    for s, g in enumerate(sizes[:-1], start=1):  # the last group's clean copy is never needed
        kinds += [CLEAN] * g
        groups += [s] * g
    for s, g in enumerate(sizes, start=1):
        kinds += [NOISY] * g
        groups += [s] * g
    kind = torch.tensor(kinds, dtype=torch.long, device=device)
    group = torch.tensor(groups, dtype=torch.long, device=device)
    return kind, group


def _allowed(kq, kk, gq, gk):
    """The section-3 rule on broadcastable kind/group tensors (works inside a flex mask_mod)."""
    to_cond = kk == COND
    clean_clean = (kq == CLEAN) & (kk == CLEAN) & (gk <= gq)
    noisy_clean = (kq == NOISY) & (kk == CLEAN) & (gk < gq)
    noisy_noisy = (kq == NOISY) & (kk == NOISY) & (gk == gq)
    return to_cond | clean_clean | noisy_clean | noisy_noisy


def generalized_causal_mask(
    cond_len: int, group_sizes: list[int], device: torch.device | str | None = None
) -> torch.Tensor:
    """(n, n) bool mask, True where query row may attend key column; n = C + (L - g_S) + L."""
    kind, group = token_layout(cond_len, group_sizes, device)
    return _allowed(kind[:, None], kind[None, :], group[:, None], group[None, :])


def flex_block_mask(
    cond_len: int,
    group_sizes: list[int],
    device: torch.device | str,
    padded_len: int | None = None,
):
    """A flex-attention BlockMask of the same rule, over a sequence padded to `padded_len`.

    Padding tokens (appended at the end) attend only to each other and are never attended to, so
    the real tokens see exactly the dense mask. Cached per split, since building one evaluates the
    mask over every block.
    """
    sizes = tuple(check_group_sizes(group_sizes))
    _check_cond_len(cond_len)
    return _flex_block_mask(cond_len, sizes, str(torch.device(device)), padded_len)


@functools.lru_cache(maxsize=128)
def _flex_block_mask(cond_len: int, sizes: tuple[int, ...], device: str, padded_len: int | None):
    from torch.nn.attention.flex_attention import create_block_mask

    kind, group = token_layout(cond_len, list(sizes), device)
    n = kind.numel()
    total = n if padded_len is None else padded_len
    if total < n:
        raise UserError(f"padded_len={padded_len} must be >= the sequence length {n}")
    pad = total - n
    kind = torch.cat([kind, torch.full((pad,), PAD, dtype=torch.long, device=device)])
    group = torch.cat([group, torch.full((pad,), -1, dtype=torch.long, device=device)])

    def mask_mod(b, h, q_idx, kv_idx):
        kq, kk = kind[q_idx], kind[kv_idx]
        pad_pad = (kq == PAD) & (kk == PAD)
        return _allowed(kq, kk, group[q_idx], group[kv_idx]) | pad_pad

    return create_block_mask(mask_mod, None, None, total, total, device=device)
