"""Metrics from features (model/metrics.py): reference files, equal-size precision/recall,
FID's bootstrap std, and eval records keyed by every input that changes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import data_config
from core.errors import UserError
from harness.config.compose import load_config
from model.data.reference import reference_images
from model.evaluation.inference import eval_settings
from model.evaluation.metrics import (
    compute_metrics,
    read_reference,
    write_reference,
    write_split_statistics,
)
from model.evaluation.run_io import settings_hash

DIGITS = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
          "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cfh-cache")


@pytest.fixture(scope="module")
def samples():
    """200 train digits, slightly noised: near the test split, not equal to it."""
    images, labels = reference_images(DIGITS, "train")
    g = torch.Generator().manual_seed(0)
    noisy = (images[:200].float() + 12 * torch.randn(images[:200].shape, generator=g)).clamp(0, 255)
    return noisy.round().to(torch.uint8), labels[:200]


def score(samples, cache, **kw):
    images, labels = samples
    return compute_metrics(images, labels, DIGITS, "classifier", cache_dir=cache, **kw)


def test_fid_against_a_written_stats_file_equals_fid_against_the_images(samples, cache, tmp_path):
    path = tmp_path / "digits-test.npz"
    meta = write_split_statistics(DIGITS, "test", None, "classifier", path, cache_dir=cache)
    assert meta["num"] == meta["num_images"] == 360
    direct = score(samples, cache)
    via_file = score(samples, cache, reference=path)
    assert abs(via_file["fid"] - direct["fid"]) / direct["fid"] < 1e-6
    for key in ("precision", "recall", "kid"):  # arr_0 holds the same images: same features
        assert via_file[key] == pytest.approx(direct[key], rel=1e-6), key


def test_a_stats_file_without_images_gives_fid_and_says_why_pr_is_missing(samples, cache, tmp_path):
    full = tmp_path / "full.npz"
    write_split_statistics(DIGITS, "test", None, "classifier", full, cache_dir=cache)
    ref = read_reference(full)
    bare = tmp_path / "adm-like.npz"  # ADM's layout: mu and sigma only
    np.savez(bare, mu=ref["mu"], sigma=ref["sigma"])
    with pytest.raises(UserError, match="holds inception statistics"):  # ADM's are Inception's
        score(samples, cache, reference=bare)
    write_reference(bare, ref["mu"], ref["sigma"], None, {"extractor": "classifier"})
    out = score(samples, cache, reference=bare)
    assert out["fid"] == pytest.approx(score(samples, cache)["fid"], rel=1e-6)
    assert "precision" not in out and "no arr_0 images" in out["skipped"]


def test_a_file_of_images_only_gets_statistics_from_its_images(samples, cache, tmp_path):
    # an ADM sample batch (arr_0 uint8 NHWC, arr_1 labels, no mu/sigma): the statistics come
    # from its images with the configured extractor, so FID equals FID against the same split
    images, labels = reference_images(DIGITS, "test")
    batch = tmp_path / "samples_adm.npz"
    np.savez(batch, arr_0=images.numpy(), arr_1=labels.numpy())
    direct = score(samples, cache)
    via_file = score(samples, cache, reference=batch)
    assert via_file["fid"] == pytest.approx(direct["fid"], rel=1e-6)
    assert via_file["num_reference"] == direct["num_reference"] == 360
    assert via_file["reference_statistics"] == "from arr_0 images"
    assert via_file["kid"] == pytest.approx(direct["kid"], rel=1e-6)
    empty = tmp_path / "empty.npz"
    np.savez(empty, arr_1=labels.numpy())
    with pytest.raises(UserError, match="neither mu/sigma arrays nor arr_0 images"):
        score(samples, cache, reference=empty)


def test_precision_recall_compare_sets_of_equal_size(samples, cache):
    equal = score(samples, cache)
    unequal = score(samples, cache, ref_max_n=360)
    assert equal["prc_num_reference"] == 200 and unequal["prc_num_reference"] == 360
    assert equal["num_reference"] == 360  # FID keeps the whole split either way
    print(f"P/R at 200 vs 200: {equal['precision']:.3f}/{equal['recall']:.3f}; "
          f"200 vs 360: {unequal['precision']:.3f}/{unequal['recall']:.3f}")  # fmt: skip
    assert (equal["precision"], equal["recall"]) != (unequal["precision"], unequal["recall"])
    assert equal["fid"] == unequal["fid"]


def test_fid_carries_a_seeded_bootstrap_std(samples, cache):
    a = score(samples, cache, bootstrap=20, bootstrap_seed=1)
    b = score(samples, cache, bootstrap=20, bootstrap_seed=1)
    c = score(samples, cache, bootstrap=20, bootstrap_seed=2)
    none = score(samples, cache)
    assert a["fid_bootstrap_std"] == b["fid_bootstrap_std"] > 0
    assert c["fid_bootstrap_std"] != a["fid_bootstrap_std"]
    assert np.isnan(none["fid_bootstrap_std"]) and none["fid"] == a["fid"]
    print(f"FID {a['fid']:.2f} ± {a['fid_bootstrap_std']:.2f} (bootstrap, 20 resamplings)")


def test_every_input_that_changes_a_metric_changes_the_record_key(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CFH_CACHE", str(cache))
    base = ["model=T", "data=digits"]
    data = data_config(DIGITS)

    def key(*overrides: str, step: int = 10) -> str:
        return settings_hash(eval_settings(load_config([*base, *overrides]), step, data))

    ref_a, ref_b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_split_statistics(DIGITS, "test", None, "classifier", ref_a, cache_dir=cache)
    write_split_statistics(DIGITS, "test", 100, "classifier", ref_b, cache_dir=cache)
    inception = tmp_path / "inception.pth"
    from model.evaluation.extractors import inception_weights

    state = torch.load(inception_weights(None, cache), weights_only=True)
    name = next(k for k in state if k.endswith("weight") and not k.startswith("fc"))
    state[name] = state[name] * 1.001
    torch.save(state, inception)
    base_key = key()
    changes = [
        ["eval.extractor=inception"],
        ["eval.extractor=inception", f"eval.weights_path={inception}"],
        ["eval.split=train"],
        ["eval.ref_num=100"],
        [f"eval.reference={ref_a}"],
        ["eval.kid_subset_size=50"],
        ["eval.bootstrap=50"],
        ["eval.bootstrap=0"],
        ["eval.fid_inf=true"],
        ["eval.fid_inf=true", "eval.fid_inf_sizes=[50,100,200]"],
        ["eval.task=inpaint"],
        ["sample.num=500"],
        ["sample.ar_steps=4"],
        ["sample.order=raster"],
        ["sample.cfg=2.0"],
        ["sample.cfg=2.0", "sample.cfg_interval=[0,500]"],
        ["sample.steps=50"],
        ["sample.sampler=ddim"],
        ["sample.seed=1"],
        ["sample.ema=false"],
    ]
    keys = [key(*c) for c in changes] + [key(step=20)]
    pairs = list(zip(changes, keys, strict=False))
    assert base_key not in keys and len(set(keys)) == len(keys), pairs
    inception_default = key("eval.extractor=inception")
    assert key("eval.extractor=inception", f"eval.weights_path={inception}") != inception_default
    assert key(f"eval.reference={ref_a}") != key(f"eval.reference={ref_b}")
    assert key("sample.batch_size=7") == base_key  # samples do not depend on it
    assert key("eval.fid_inf_sizes=[50,100]") == base_key  # FID_inf off: its sizes unused
    settings = eval_settings(load_config(base), 10, data)  # samples-only records are rescored
    assert settings["bootstrap_resample"] == "samples+reference" and "fid_inf" not in settings
    # the default sizes resolved for sample.num=1000 are the same record as naming them
    default_sizes = "eval.fid_inf_sizes=[250,280,318,368,437,538,700,1000]"
    assert key("eval.fid_inf=true", default_sizes) == key("eval.fid_inf=true")
