"""AR-step draws, group splits, token orders and AR-axis weights."""

import math
import re

import pytest
import torch
from scipy.stats import chisquare

from model import (
    ar_generator,
    ar_token_weights,
    equal_group_sizes,
    sample_group_sizes,
    sample_num_steps,
    token_order,
)


def test_generator_is_a_function_of_the_triple():
    a = torch.rand(5, generator=ar_generator(0, 7, 1))
    b = torch.rand(5, generator=ar_generator(0, 7, 1))
    assert torch.equal(a, b)
    for other in [(1, 7, 1), (0, 8, 1), (0, 7, 0)]:
        assert not torch.equal(a, torch.rand(5, generator=ar_generator(*other)))


def test_decay_distribution_chi_square():
    L, decay, n = 12, 0.8, 20000
    g = ar_generator(123, 0, 0)
    draws = [sample_num_steps("decay", L, g, decay=decay) for _ in range(n)]
    counts = torch.bincount(torch.tensor(draws), minlength=L + 1)[1:].double()
    p = torch.tensor([decay**k for k in range(L)], dtype=torch.float64)
    expected = n * p / p.sum()
    assert counts.sum() == n and min(draws) >= 1 and max(draws) <= L
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_decay_one_is_uniform_and_uniform_mode():
    L, n = 8, 8000
    for mode, kw in [("decay", {"decay": 1.0}), ("uniform", {})]:
        g = ar_generator(5, 0, 0)
        draws = [sample_num_steps(mode, L, g, **kw) for _ in range(n)]
        counts = torch.bincount(torch.tensor(draws), minlength=L + 1)[1:].numpy()
        assert chisquare(counts, [n / L] * L).pvalue > 1e-3


def test_decay_handles_long_sequences():
    g = ar_generator(0, 0, 0)
    draws = [sample_num_steps("decay", 4096, g, decay=0.5) for _ in range(200)]
    assert all(1 <= d <= 4096 for d in draws) and max(draws) < 30


def test_same_seed_same_splits():
    def splits(seed):
        out = []
        for step in range(20):
            g = ar_generator(seed, step, 0)
            S = sample_num_steps("decay", 64, g, decay=0.9)
            out.append(sample_group_sizes(64, S, g))
        return out

    assert splits(3) == splits(3)
    assert splits(3) != splits(4)


def test_group_sizes_are_valid_and_cut_points_uniform():
    L, S = 10, 4
    g = ar_generator(0, 0, 0)
    cut_counts = torch.zeros(L)
    for _ in range(3000):
        sizes = sample_group_sizes(L, S, g)
        assert len(sizes) == S and sum(sizes) == L and min(sizes) >= 1
        cuts = torch.tensor(sizes[:-1]).cumsum(0)
        cut_counts[cuts] += 1
    counts = cut_counts[1:].numpy()  # every cut point 1..L-1 equally likely
    assert chisquare(counts, [counts.sum() / (L - 1)] * (L - 1)).pvalue > 1e-3
    assert sample_group_sizes(L, 1, g) == [L]
    assert sample_group_sizes(L, L, g) == [1] * L


def test_fixed_steps():
    assert sample_num_steps("fixed", 16, None, fixed_steps=4) == 4


def test_equal_group_sizes():
    assert equal_group_sizes(64, 4) == [16, 16, 16, 16]
    assert equal_group_sizes(10, 3) == [4, 3, 3]
    assert equal_group_sizes(5, 5) == [1] * 5


@pytest.mark.parametrize("kind", ["random", "raster", "block_raster", "dilated"])
def test_orders_are_permutations(kind):
    order = token_order(kind, 3, 8, torch.Generator().manual_seed(0), block=4)
    assert order.shape == (3, 64) and order.dtype == torch.long
    for row in order:
        assert torch.equal(row.sort().values, torch.arange(64))


def test_order_layouts():
    assert torch.equal(token_order("raster", 1, 4)[0], torch.arange(16))
    block = token_order("block_raster", 1, 4, block=2)[0].tolist()
    assert block == [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
    dilated = token_order("dilated", 1, 4)[0].tolist()
    assert dilated == [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]


def test_random_order_per_sample_and_seeded():
    a = token_order("random", 4, 4, torch.Generator().manual_seed(1))
    b = token_order("random", 4, 4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len({tuple(r.tolist()) for r in a}) == 4


def test_ar_token_weights():
    w = ar_token_weights([2, 3, 3], 8, 2.0, 1.0, "linear")
    expected = [2.0, 2.0] + [2 - 2 / 8] * 3 + [2 - 5 / 8] * 3
    assert torch.allclose(w, torch.tensor(expected))
    c = ar_token_weights([2, 6], 8, 3.0, 1.0, "cosine")
    x = 2 / 8
    assert torch.allclose(
        c, torch.tensor([3.0] * 2 + [1 + 2 * (1 + math.cos(math.pi * x)) / 2] * 6)
    )
    assert torch.equal(ar_token_weights([8], 8, 2.0, 1.0), torch.full((8,), 2.0))


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: sample_num_steps("decay", 8, None, decay=0.0), ["decay", r"\(0, 1\]"]),
        (lambda: sample_num_steps("decay", 8, None, decay=1.5), ["decay", r"\(0, 1\]"]),
        (lambda: sample_num_steps("fixed", 8, None, fixed_steps=9), ["steps=9", "1..L=8"]),
        (lambda: sample_num_steps("fixed", 8, None, fixed_steps=0), ["steps=0", "1..L=8"]),
        (lambda: sample_num_steps("often", 8, None), ["mode", "fixed, uniform, decay"]),
        (lambda: sample_group_sizes(8, 9, None), ["S=9", "1..L=8"]),
        (lambda: equal_group_sizes(8, 0), ["S=0", "1..L=8"]),
        (lambda: token_order("spiral", 1, 4), ["spiral", "random, raster"]),
        (lambda: token_order("block_raster", 1, 6, block=4), ["order_block=4", "divisor"]),
        (lambda: ar_token_weights([3, 3], 8, 2, 1), ["sums to 6", "L=8"]),
        (lambda: ar_token_weights([8], 8, 2, 1, "exp"), ["schedule", "linear, cosine"]),
    ],
)
def test_bad_arguments(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for w in words:
        assert re.search(w, str(err.value)), str(err.value)
