"""The training step: padded (bucketed) splits, non-finite steps skipped on the device, graphs."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.config.compose import load_config
from model.method.diffusion import Diffusion, causalfusion_loss
from model.method.masks import generalized_causal_mask
from model.training.build import model_from_config
from model.training.step import (
    PAD_BUCKETS,
    clean_bucket,
    compile_forward,
    draw_split,
    make_learner,
    train_step,
)

TINY = ["model=T", "data=digits", "train.batch_size=8", "train.lr=1e-3", "train.ema_decay=0.9"]
CPU = torch.device("cpu")
# Padded and unpadded steps differ only in the summation order of matmuls over more rows:
# float32 rounding, far below these (measured: loss ~1e-7 relative, gradients <= 4e-7 of the
# largest gradient).
LOSS_RTOL = 1e-5
GRAD_ATOL_OF_MAX = 1e-5


def _setup(*extra: str):
    cfg = load_config([*TINY, *extra])
    torch.manual_seed(0)
    net = model_from_config(cfg).train()
    with torch.no_grad():  # a non-zero output layer, so that every parameter gets a gradient
        net.head.weight.normal_(std=0.02)
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.arange(8) % 10
    return cfg, net, x, y


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sizes", [[64], [1, 63], [10, 20, 34], [5] * 12 + [4], [60, 4]])
def test_padded_loss_and_gradients_equal_unpadded(sizes):
    """The clean part padded to its bucket: same loss and gradients within rounding."""
    cfg, net, x, y = _setup()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(2)).expand(8, 64)
    w = torch.linspace(2, 1, 64)
    C, clean = int(cfg.model.num_cond_tokens), 64 - sizes[-1]
    out = {}
    for name, kwargs in (
        ("plain", {"group_sizes": sizes}),
        ("padded", {"group_sizes": None, "model_kwargs": {"mask": generalized_causal_mask(
            C, sizes, clean_len=clean_bucket(clean, 64))}}),
    ):  # fmt: skip
        torch.manual_seed(3)  # the same noise, timesteps and label dropout
        net.zero_grad()
        loss, _ = causalfusion_loss(net, Diffusion(), x, y, order, ar_weights=w, **kwargs)
        loss.backward()
        out[name] = (loss.detach(), _grads(net))
    (la, ga), (lb, gb) = out["plain"], out["padded"]
    assert lb.item() == pytest.approx(la.item(), rel=LOSS_RTOL)
    assert ga.keys() == gb.keys()
    # against the largest gradient: some have no true value (a shared k_norm bias shifts every
    # score of a query alike), only rounding noise of either run
    atol = GRAD_ATOL_OF_MAX * max(g.abs().max().item() for g in ga.values())
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], rtol=0, atol=atol, msg=name)


def test_padded_train_steps_follow_the_unpadded_ones():
    """train_step with bucketed splits (train.compile) tracks the eager one within rounding.

    Losses only: AdamW turns a gradient that is rounding noise (see above) into a full step of
    either sign, so weights may differ where the loss does not depend on them."""
    cfg, net, x, y = _setup()
    padded_cfg = load_config([*TINY, "train.compile=true"])
    plain = make_learner(cfg, net, CPU)
    padded = make_learner(padded_cfg, copy.deepcopy(net), CPU)
    torch.manual_seed(5)
    for step in range(4):
        a, b = draw_split(cfg, step, 0, 8, CPU), draw_split(padded_cfg, step, 0, 8, CPU)
        assert a.mask is None and b.mask is not None and a.sizes == b.sizes
        rng = torch.get_rng_state()
        la = train_step(plain, x, y, a, step).loss
        torch.set_rng_state(rng)
        lb = train_step(padded, x, y, b, step).loss
        assert lb.item() == pytest.approx(la.item(), rel=LOSS_RTOL)


def test_buckets_are_few_and_cover_every_clean_length():
    for L in (1, 2, 4, 16, 17, 64, 256, 1024):
        buckets = {n: clean_bucket(n, L) for n in range(L)}
        assert all(n <= b <= L for n, b in buckets.items()), L
        assert len(set(buckets.values())) <= PAD_BUCKETS, L
    assert clean_bucket(0, 64) == 0 and clean_bucket(1, 64) == 9 and clean_bucket(63, 64) == 63


def _state(learner) -> dict:
    return copy.deepcopy(
        {"net": learner.net.state_dict(), "ema": learner.ema.state_dict(),
         "opt": learner.opt.state_dict()["state"]}
    )  # fmt: skip


def _assert_same(a: dict, b: dict) -> None:
    for part in ("net", "ema"):
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    for key, state in a["opt"].items():
        for name, value in state.items():
            assert torch.equal(value, b["opt"][key][name]), f"optimizer {key}.{name}"


def test_a_nonfinite_step_changes_nothing_and_is_reported_on_the_device():
    cfg, net, x, y = _setup()
    learner = make_learner(cfg, net, CPU)
    assert train_step(learner, x, y, draw_split(cfg, 0, 0, 8, CPU), 0).ok.item()
    before = _state(learner)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    out = train_step(learner, bad, y, draw_split(cfg, 1, 0, 8, CPU), 1)
    assert out.ok.dtype == torch.bool and not out.ok.item()
    assert not torch.isfinite(out.loss) and not torch.isfinite(out.grad_norm)
    _assert_same(before, _state(learner))  # weights, EMA, AdamW moments and step count
    out = train_step(learner, x, y, draw_split(cfg, 2, 0, 8, CPU), 2)
    assert out.ok.item() and learner.opt.state_dict()["state"][0]["step"].item() == 2
    assert not torch.equal(before["net"]["head.weight"], learner.net.state_dict()["head.weight"])


def test_compiled_blocks_build_two_graphs_per_bucket_whatever_the_depth():
    """train.compile: shapes depend on the bucket only, and every block of a shape shares one
    graph (the last block, which computes the noisy rows only, another): dynamo's eager backend
    counts them. The EMA copy and the state dict stay uncompiled and unchanged."""
    from torch._dynamo.utils import counters

    cfg, net, x, y = _setup("train.compile=true")
    keys = list(net.state_dict())
    assert len(net.blocks) > 2
    torch._dynamo.reset()
    counters.clear()
    learner = make_learner(cfg, net, CPU, wrap=lambda m: compile_forward(m, cfg, "eager"))
    assert learner.forward is net and list(net.state_dict()) == keys
    assert all(b._compiled_call_impl is not None for b in net.blocks)
    assert all(b._compiled_call_impl is None for b in learner.ema.blocks)
    lengths = []
    for step in range(6):  # lengths 131, 131, 68, 86, 131, 131: three buckets
        split = draw_split(cfg, step, 0, 8, CPU)
        lengths.append(split.mask.shape[-1])
        assert train_step(learner, x, y, split, step).ok.item()
    assert sorted(learner.graphs) == sorted(set(lengths)) and len(set(lengths)) < len(lengths)
    assert counters["stats"]["unique_graphs"] == 2 * len(set(lengths))
    assert len(set(lengths)) <= PAD_BUCKETS
    torch._dynamo.reset()
