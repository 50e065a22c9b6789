"""The release's recipe, selectable: train on every image (data.train_split=all) and an EMA
with a constant decay from step 0 (train.ema_warmup=false)."""

import copy

import pytest
import torch

from core.config.datasets import SPLIT_SIZES, train_size
from harness.config.compose import load_config
from model.data.arrays import digits_split_indices
from model.data.sources import build_dataset
from model.evaluation.inference import eval_settings
from model.training.build import ema_decay, model_from_config
from model.training.step import draw_split, make_learner, train_step


def test_all_is_every_digit_and_the_sizes_agree():
    idx = digits_split_indices()
    assert len(idx["all"]) == SPLIT_SIZES["digits"]["all"] == 1797
    assert sorted(set(idx["train"]) | set(idx["test"])) == list(idx["all"])
    cfg = load_config(["data=digits", "data.train_split=all"])
    assert len(build_dataset(cfg.data, "all")) == train_size(cfg.data, 10**9) == 1797
    assert train_size(load_config(["data=digits"]).data, 10**9) == 1437


@pytest.mark.parametrize("split,size", [("all", 70_000), ("train", 50_000)])
def test_mnist_all_is_train_valid_and_test(split, size):
    pytest.importorskip("mnist")
    cfg = load_config(["data=mnist", f"data.train_split={split}"])
    assert len(build_dataset(cfg.data, split)) == train_size(cfg.data, 10**9) == size


def test_ema_without_warm_up_uses_the_decay_from_the_first_step():
    assert ema_decay(0.999, 1, warmup=False) == 0.999
    assert ema_decay(0.999, 1) == pytest.approx(2 / 11)  # min(decay, (1 + n) / (10 + n))
    cfg = load_config(["model=T", "train.ema_warmup=false", "train.ema_decay=0.9", "train.lr=1e-2"])
    torch.manual_seed(0)
    net = model_from_config(cfg)
    cpu = torch.device("cpu")
    learner = make_learner(cfg, net, cpu, joint=False)
    before = copy.deepcopy(learner.ema.state_dict())
    x = torch.randn(4, 1, 8, 8)
    y = torch.randint(0, 10, (4,))
    train_step(learner, x, y, draw_split(cfg, 0, 0, 4, cpu), 0)
    for name, p in learner.net.named_parameters():
        want = 0.9 * before[name] + 0.1 * p.detach()
        torch.testing.assert_close(learner.ema.state_dict()[name], want)


def test_the_eval_record_says_the_reference_was_trained_on():
    cfg = load_config(["data=digits", "data.train_split=all", "eval.extractor=classifier"])
    assert eval_settings(cfg, 10, cfg.data)["train_split"] == "all"
    default = load_config(["data=digits", "eval.extractor=classifier"])
    assert "train_split" not in eval_settings(default, 10, default.data)
