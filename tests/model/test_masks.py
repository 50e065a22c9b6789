"""The generalized causal mask against the rules of reference section 3."""

import random

import pytest
import torch

from core.errors import UserError
from model import generalized_causal_mask
from model.method.masks import flex_block_mask


def rule_mask(cond_len, group_sizes):
    """Independent restatement of section 3: list the tokens, then apply the rules one by one."""
    tokens = [("cond", 0)] * cond_len
    for s, g in enumerate(group_sizes[:-1], start=1):
        tokens += [("clean", s)] * g
    for s, g in enumerate(group_sizes, start=1):
        tokens += [("noisy", s)] * g
    n = len(tokens)
    mask = [[False] * n for _ in range(n)]
    for i, (qk, qg) in enumerate(tokens):
        for j, (kk, kg) in enumerate(tokens):
            if kk == "cond":
                ok = True  # every token sees the condition tokens
            elif qk == "cond":
                ok = False  # condition tokens see only each other
            elif qk == "clean":
                ok = kk == "clean" and kg <= qg  # block causal among clean tokens, never noisy
            else:  # noisy query
                ok = (kk == "clean" and kg < qg) or (kk == "noisy" and kg == qg)
            mask[i][j] = ok
    return torch.tensor(mask)


def test_hand_written_case():
    # cond 1, groups [2, 1, 2]: c | clean a a, b | noisy A A, B, C C  (n = 1 + 3 + 5)
    expected = [
        "100000000",  # c
        "111000000",  # clean a
        "111000000",  # clean a
        "111100000",  # clean b
        "100011000",  # noisy A: cond + own group
        "100011000",
        "111000100",  # noisy B: cond + clean a + itself
        "111100011",  # noisy C: cond + clean a, b + own group
        "111100011",
    ]
    mask = generalized_causal_mask(1, [2, 1, 2])
    assert mask.dtype == torch.bool and mask.shape == (9, 9)
    for i, row in enumerate(expected):
        for j, ch in enumerate(row):
            assert bool(mask[i, j]) == (ch == "1"), (i, j)


def test_random_splits_match_rules():
    rng = random.Random(0)
    for _ in range(40):
        L = rng.randint(1, 20)
        S = rng.randint(1, L)
        cuts = sorted(rng.sample(range(1, L), S - 1))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, L], strict=True)]
        cond = rng.randint(0, 4)
        mask = generalized_causal_mask(cond, sizes)
        assert mask.shape[0] == cond + (L - sizes[-1]) + L
        assert torch.equal(mask, rule_mask(cond, sizes)), (cond, sizes)


def test_single_step_is_in_context_dit():
    C, L = 3, 10
    mask = generalized_causal_mask(C, [L])
    assert mask.shape == (C + L, C + L)  # no clean tokens at all
    assert mask[:C, :C].all() and not mask[:C, C:].any()  # cond sees only cond
    assert mask[C:].all()  # noisy tokens see cond and every noisy token


def test_token_by_token_is_causal():
    L = 6
    mask = generalized_causal_mask(0, [1] * L)
    clean, noisy = mask[: L - 1, : L - 1], mask[L - 1 :, L - 1 :]
    assert torch.equal(clean, torch.ones(L - 1, L - 1).tril().bool())
    assert torch.equal(noisy, torch.eye(L, dtype=torch.bool))
    assert torch.equal(mask[L - 1 :, : L - 1], torch.ones(L, L - 1).tril(-1).bool())


@pytest.mark.parametrize(
    "cond_len, sizes, word",
    [
        (1, [], "group_sizes"),
        (1, [2, 0], "group_sizes"),
        (1, [2, -1], "group_sizes"),
        (1, [2.0], "group_sizes"),
        (-1, [2], "cond_len"),
    ],
)
def test_bad_arguments(cond_len, sizes, word):
    with pytest.raises(ValueError, match=word):
        generalized_causal_mask(cond_len, sizes)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="positive"):
        generalized_causal_mask(2, [0])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_flex_block_mask_matches_dense():
    cond, sizes = 2, [3, 1, 4, 2]
    dense = generalized_causal_mask(cond, sizes)
    n = dense.shape[0]
    bm = flex_block_mask(cond, sizes, "cpu", padded_len=32)
    q = torch.arange(32)[:, None]
    k = torch.arange(32)[None, :]
    full = bm.mask_mod(torch.tensor(0), torch.tensor(0), q, k)
    assert torch.equal(full[:n, :n], dense)
    assert not full[:n, n:].any()  # real tokens never see padding
    assert full[n:, n:].all()  # padding rows are not empty (no NaN)
    assert flex_block_mask(cond, sizes, "cpu", padded_len=32) is bm  # cached per split
