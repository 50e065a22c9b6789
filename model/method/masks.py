"""The generalized causal attention mask of CausalFusion (reference section 3), dense and flex.

The training sequence is [C condition tokens] + [clean tokens of groups 1..S-1] + [noisy tokens of
groups 1..S]. Every token gets a kind (COND, CLEAN, NOISY) and a group id (0 for condition tokens,
1..S for the AR groups); the mask is a function of the (query, key) kinds and group ids only:

    key is COND                                   -> allowed (cond rows see only this)
    query CLEAN of group i, key CLEAN of group j  -> allowed iff j <= i
    query NOISY of group s, key CLEAN of group j  -> allowed iff j < s
    query NOISY of group s, key NOISY of group j  -> allowed iff j == s
    anything else (cond -> non-cond, clean -> noisy) is forbidden.

Joint image-text models (model/joint.py) add TEXT tokens, causal among themselves, in one of two
places. Text-to-image: [cond] + [text] + [clean groups] + [noisy groups], the text a condition
that every image token sees (text group 0). Image-to-text: [cond] + [the whole image, clean, one
group] + [text] (text group 2): the text sees all of the image, the image never sees the text.
With group ids as above, the extra rules are

    query TEXT, key TEXT at text position p       -> allowed iff p <= the query's position
    query TEXT, key CLEAN                         -> allowed iff key group < query group
    query CLEAN or NOISY, key TEXT                -> allowed iff key group < query group

and without text the mask is exactly the one above.
"""

from __future__ import annotations

import functools

import torch

from core.errors import UserError

COND, CLEAN, NOISY, PAD, TEXT = 0, 1, 2, 3, 4
TEXT_FIRST_GROUP, TEXT_LAST_GROUP = 0, 2  # text group id: before (t2i) / after (i2t) the image


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
    cond_len: int,
    group_sizes: list[int],
    device: torch.device | str | None = None,
    clean_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kind and group id (both (n,) long) of every token of the training sequence.

    `clean_len` (>= the L - g_S clean tokens) pads the clean part with PAD tokens to that length
    (group id -1): the bucketed sequences of a compiled training step (model/training/step.py).
    """
    _check_cond_len(cond_len)
    sizes = check_group_sizes(group_sizes)
    kinds = [COND] * cond_len
    groups = [0] * cond_len
    for s, g in enumerate(sizes[:-1], start=1):  # the last group's clean copy is never needed
        kinds += [CLEAN] * g
        groups += [s] * g
    pad = 0 if clean_len is None else clean_len - (sum(sizes) - sizes[-1])
    if pad < 0:
        raise UserError(f"clean_len={clean_len} is shorter than the clean part of {sizes}")
    kinds += [PAD] * pad
    groups += [-1] * pad
    for s, g in enumerate(sizes, start=1):
        kinds += [NOISY] * g
        groups += [s] * g
    return _on(torch.tensor(kinds), device), _on(torch.tensor(groups), device)


def _on(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """`t` on `device`; non_blocking, because a blocking copy to a GPU waits for its queue."""
    return t if device is None else t.to(device, non_blocking=True)


def _allowed(kq, kk, gq, gk):
    """The section-3 rule on broadcastable kind/group tensors (works inside a flex mask_mod).

    PAD tokens are seen by no other kind; they see the condition and each other (every row has
    a key to attend to, so padding stays finite and never reaches a real token).
    """
    to_cond = kk == COND
    clean_clean = (kq == CLEAN) & (kk == CLEAN) & (gk <= gq)
    noisy_clean = (kq == NOISY) & (kk == CLEAN) & (gk < gq)
    noisy_noisy = (kq == NOISY) & (kk == NOISY) & (gk == gq)
    pad_pad = (kq == PAD) & (kk == PAD)
    return to_cond | clean_clean | noisy_clean | noisy_noisy | pad_pad


def generalized_causal_mask(
    cond_len: int,
    group_sizes: list[int],
    device: torch.device | str | None = None,
    clean_len: int | None = None,
) -> torch.Tensor:
    """(n, n) bool mask, True where query row may attend key column; n = C + (L - g_S) + L, or
    C + clean_len + L with the clean part padded (token_layout)."""
    kind, group = token_layout(cond_len, group_sizes, device, clean_len)
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


def joint_layout(
    cond_len: int,
    group_sizes: list[int],
    text_len: int,
    text_first: bool,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kind, group id and text position (all (n,) long; -1 off text) of a joint sequence.

    text_first: [cond, text, clean groups, noisy groups] (text-to-image, group_sizes any split);
    else [cond, image (one clean group of group_sizes[0] tokens), text] (image-to-text).
    """
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 0:
        raise UserError(f"text_len={text_len!r} must be an int >= 0")
    if text_first:
        kind, group = token_layout(cond_len, group_sizes, device)
        at = cond_len
        text_group = TEXT_FIRST_GROUP
    else:
        sizes = check_group_sizes(group_sizes)
        if len(sizes) != 1:
            raise UserError(f"image-to-text sees the whole image as one group, not {sizes}")
        _check_cond_len(cond_len)
        kind = torch.tensor([COND] * cond_len + [CLEAN] * sizes[0], dtype=torch.long)
        group = torch.tensor([0] * cond_len + [1] * sizes[0], dtype=torch.long)
        kind, group = kind.to(device), group.to(device)
        at = kind.numel()
        text_group = TEXT_LAST_GROUP
    text_kind = torch.full((text_len,), TEXT, dtype=torch.long, device=device)
    text_grp = torch.full((text_len,), text_group, dtype=torch.long, device=device)
    pos = torch.full((kind.numel() + text_len,), -1, dtype=torch.long, device=device)
    pos[at : at + text_len] = torch.arange(text_len, device=device)
    kind = torch.cat([kind[:at], text_kind, kind[at:]])
    group = torch.cat([group[:at], text_grp, group[at:]])
    return kind, group, pos


def _allowed_joint(kq, kk, gq, gk, pq, pk):
    """The section-3 rule plus the text rules of the module docstring."""
    image_q = (kq == CLEAN) | (kq == NOISY)
    text_text = (kq == TEXT) & (kk == TEXT) & (pk <= pq)
    text_image = (kq == TEXT) & (kk == CLEAN) & (gk < gq)
    image_text = image_q & (kk == TEXT) & (gk < gq)
    return _allowed(kq, kk, gq, gk) | text_text | text_image | image_text


def joint_mask(
    cond_len: int,
    group_sizes: list[int],
    text_len: int,
    text_first: bool,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n, n) bool mask of a joint image-text sequence (see joint_layout), True = may attend."""
    kind, group, pos = joint_layout(cond_len, group_sizes, text_len, text_first, device)
    return _allowed_joint(
        kind[:, None], kind[None, :], group[:, None], group[None, :], pos[:, None], pos[None, :]
    )
