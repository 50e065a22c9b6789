"""The paired bootstrap over samples and reference, and FID_inf (model/evaluation/resampling.py),
checked against torch-fidelity called here on the same real classifier features of digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

from core.errors import UserError
from core.records import eval_record_problem
from model.data.reference import reference_images
from model.evaluation.extractors import extractor_weights
from model.evaluation.metrics import (
    Images,
    compute_metrics,
    extract_features,
    read_reference,
    reference_features,
    write_reference,
    write_split_statistics,
)
from model.evaluation.resampling import fid, fid_infinity, resolve_fid_inf_sizes, statistics

DIGITS = {"name": "digits", "root": None, "resolution": 8, "channels": 1, "num_classes": 10,
          "patch_size": 1, "flip": False, "latent_scale": 1.0}  # fmt: skip
N, M = 200, 360  # samples; digits' test split


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cfh-cache")


def noisy_train_digits(noise_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """200 train digits with seeded noise: near the test split, not equal to it."""
    images, labels = reference_images(DIGITS, "train")
    g = torch.Generator().manual_seed(noise_seed)
    noisy = (images[:N].float() + 12 * torch.randn(images[:N].shape, generator=g)).clamp(0, 255)
    return noisy.round().to(torch.uint8), labels[:N]


@pytest.fixture(scope="module")
def arms():
    """Two sample sets (two "runs") of the same 200 digits with different noise."""
    return noisy_train_digits(0), noisy_train_digits(1)


@pytest.fixture(scope="module")
def features(cache, arms):
    """The classifier features of both arms and of the test split, extracted here."""
    _, weights, whash = extractor_weights("classifier", DIGITS, None, cache)
    arm_feats = [extract_features(Images(x, False), "classifier", weights) for x, _ in arms]
    ref = reference_features(DIGITS, "test", None, "classifier", weights, whash, cache)
    return arm_feats, ref


def score(arm, cache, **kw):
    images, labels = arm
    return compute_metrics(images, labels, DIGITS, "classifier", cache_dir=cache, **kw)


def tf_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID of two feature sets, torch-fidelity's two functions called directly."""
    sa = fid_features_to_statistics(a.to(torch.float64))
    sb = fid_features_to_statistics(b.to(torch.float64))
    return float(fid_statistics_to_metric(sa, sb, False)["frechet_inception_distance"])


def hand_indices(seed: int, count: int, n: int, m: int | None):
    """The documented draw: per replicate n sample indices, then m reference indices."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        rows = rng.integers(0, n, n)
        out.append((rows, rng.integers(0, m, m) if m is not None else None))
    return out


def test_same_seed_samples_and_reference_draw_identical_replicates(arms, cache):
    a = score(arms[0], cache, bootstrap=10, bootstrap_seed=5)
    again = score(arms[0], cache, bootstrap=10, bootstrap_seed=5)
    other_seed = score(arms[0], cache, bootstrap=10, bootstrap_seed=6)
    assert a["bootstrap"] == again["bootstrap"]  # every replicate of FID and KID identical
    boot = a["bootstrap"]
    assert {k: boot[k] for k in ("seed", "count", "num_samples", "num_reference", "resample")} == {
        "seed": 5, "count": 10, "num_samples": N, "num_reference": M,
        "resample": "samples+reference",
    }  # fmt: skip
    assert len(boot["fid"]) == len(boot["kid"]) == 10 and "fid_inf" not in boot
    assert a["fid_bootstrap_std"] == pytest.approx(np.std(boot["fid"], ddof=1), rel=1e-12)
    assert a["fid_bootstrap_n"] == 10
    assert other_seed["bootstrap"]["fid"] != boot["fid"]
    # FID_inf draws from its own stream: switching it on leaves the bootstrap's indices alone
    with_inf = score(arms[0], cache, bootstrap=10, bootstrap_seed=5, fid_inf=True)
    assert with_inf["bootstrap"]["fid"] == boot["fid"] and with_inf["fid"] == a["fid"]
    assert len(with_inf["bootstrap"]["fid_inf"]) == 10
    record = json.loads(json.dumps({"settings": {}, "metrics": with_inf}))
    assert eval_record_problem(record) is None


def test_replicate_differences_of_two_runs_are_the_paired_bootstrap(arms, cache, features):
    """Both arms' replicate b use the same sample and reference indices: the differences of
    the records' replicates equal differences computed here with torch-fidelity."""
    seed, count = 3, 12
    rec_a = score(arms[0], cache, bootstrap=count, bootstrap_seed=seed)
    rec_b = score(arms[1], cache, bootstrap=count, bootstrap_seed=seed)
    (feat_a, feat_b), ref = features
    diffs, kid_a0 = [], None
    for b, (rows, ref_rows) in enumerate(hand_indices(seed, count, N, M)):
        r = ref[torch.from_numpy(ref_rows)]
        fa, fb = feat_a[torch.from_numpy(rows)], feat_b[torch.from_numpy(rows)]
        diffs.append(tf_fid(fa, r) - tf_fid(fb, r))
        if b == 0:
            kid_a0 = kid_features_to_metric(
                fa, r, kid_subsets=100, kid_subset_size=100, verbose=False
            )["kernel_inception_distance_mean"]
    record_diffs = np.subtract(rec_a["bootstrap"]["fid"], rec_b["bootstrap"]["fid"])
    np.testing.assert_allclose(record_diffs, diffs, rtol=1e-6, atol=1e-6)
    assert rec_a["bootstrap"]["kid"][0] == pytest.approx(kid_a0, rel=1e-6)
    # the paired spread of the difference is below the spread of either arm alone (shared rows)
    assert np.std(record_diffs, ddof=1) < min(
        rec_a["fid_bootstrap_std"], rec_b["fid_bootstrap_std"]
    )
    print(f"FID {rec_a['fid']:.2f} vs {rec_b['fid']:.2f}; paired sd of the difference "
          f"{np.std(record_diffs, ddof=1):.2f}, sd of each {rec_a['fid_bootstrap_std']:.2f} "
          f"and {rec_b['fid_bootstrap_std']:.2f}")  # fmt: skip


def test_fid_inf_is_the_polyfit_intercept_of_subset_fids(arms, cache, features):
    seed, sizes = 7, [60, 90, 120, 160, 200]
    out = score(arms[0], cache, bootstrap=3, bootstrap_seed=seed, fid_inf=True, fid_inf_sizes=sizes)
    (feat, _), ref = features
    rng = np.random.default_rng([seed, 1, 0])  # the documented stream of the record's own FID_inf
    values = [tf_fid(feat[torch.from_numpy(rng.choice(N, k, replace=False))], ref) for k in sizes]
    slope, intercept = np.polyfit(1 / np.asarray(sizes, np.float64), values, 1)
    assert out["fid_inf_sizes"] == sizes
    np.testing.assert_allclose(out["fid_inf_values"], values, rtol=1e-6)
    assert out["fid_inf"] == pytest.approx(intercept, rel=1e-6)
    assert out["fid_inf_slope"] == pytest.approx(slope, rel=1e-6)
    # replicate 0: subsets of its resampled samples, against its resampled reference
    rows, ref_rows = hand_indices(seed, 1, N, M)[0]
    sample, r = feat[torch.from_numpy(rows)], ref[torch.from_numpy(ref_rows)]
    rng = np.random.default_rng([seed, 1, 1])
    values = [tf_fid(sample[torch.from_numpy(rng.choice(N, k, replace=False))], r) for k in sizes]
    _, intercept = np.polyfit(1 / np.asarray(sizes, np.float64), values, 1)
    assert out["bootstrap"]["fid_inf"][0] == pytest.approx(intercept, rel=1e-6)
    print(f"FID at n={N}: {out['fid']:.2f}; FID_inf {out['fid_inf']:.2f}")


def test_fid_inf_removes_the_bias_of_gaussian_features_of_the_reference_distribution():
    """Samples drawn from the reference's own distribution: FID at n is all bias (~1.1 here),
    FID_inf is near 0. Tolerance |FID_inf| < 0.3 x FID(n): over 30 seeds of this set-up the
    ratio stayed within -0.17..0.13."""
    dim, n, m = 64, 1000, 50_000
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(m, dim, generator=g)
    samples = torch.randn(n, dim, generator=g)
    ref_stats = statistics(ref)
    at_n = fid(statistics(samples), ref_stats)
    sizes = resolve_fid_inf_sizes(n)
    assert sizes == [250, 280, 318, 368, 437, 538, 700, 1000]  # 8 evenly spaced in 1/N
    out = fid_infinity(samples, ref_stats, sizes, np.random.default_rng([0, 1, 0]))
    assert at_n > 0.5 and out["fid_inf_slope"] > 0
    assert abs(out["fid_inf"]) < 0.3 * at_n, (out["fid_inf"], at_n)
    print(f"FID at n={n}: {at_n:.3f}; FID_inf {out['fid_inf']:.3f}")


def test_fid_inf_sizes_are_checked():
    assert resolve_fid_inf_sizes(5) == [4, 5]  # raised to 4, duplicates dropped
    assert resolve_fid_inf_sizes(200, [200, 50, 100]) == [50, 100, 200]
    for n, sizes, needle in (
        (4, None, "at least two distinct subset sizes"),
        (200, [3, 100], "holds [3]"),
        (200, [100, 300], "holds [300]; allowed: sizes 4..sample.num=200"),
        (200, [100, 100], "at least two distinct"),
    ):
        with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
            resolve_fid_inf_sizes(n, sizes)


def test_the_reference_is_resampled_only_where_its_statistics_are_its_features(
    arms, cache, tmp_path
):
    split = score(arms[0], cache, bootstrap=5, bootstrap_seed=2)
    whole = tmp_path / "whole.npz"  # cfh stats of all 360 test images: arr_0 is the whole split
    write_split_statistics(DIGITS, "test", None, "classifier", whole, cache_dir=cache)
    via_file = score(arms[0], cache, bootstrap=5, bootstrap_seed=2, reference=whole)
    assert via_file["bootstrap"]["resample"] == "samples+reference"
    np.testing.assert_allclose(via_file["bootstrap"]["fid"], split["bootstrap"]["fid"], rtol=1e-6)
    ref = read_reference(whole)
    bare = tmp_path / "bare.npz"  # mu/sigma only: the samples alone are resampled
    write_reference(bare, ref["mu"], ref["sigma"], None, {"extractor": "classifier", "num": M})
    samples_only = score(arms[0], cache, bootstrap=5, bootstrap_seed=2, reference=bare)
    boot = samples_only["bootstrap"]
    assert boot["resample"] == "samples" and boot["num_reference"] is None and "kid" not in boot
    part = tmp_path / "part.npz"  # arr_0 a subset of the images the statistics came from
    write_reference(part, ref["mu"], ref["sigma"], ref["images"][:100], {"extractor": "classifier",
                                                                         "num": M})  # fmt: skip
    subset_file = score(arms[0], cache, bootstrap=5, bootstrap_seed=2, reference=part)
    assert subset_file["bootstrap"]["resample"] == "samples"
    assert subset_file["bootstrap"]["fid"] == pytest.approx(boot["fid"], rel=1e-9)
    assert len(subset_file["bootstrap"]["kid"]) == 5  # KID against the 100 arr_0 images


def test_the_whole_dataset_as_reference_is_resampled(arms, cache):
    out = score(arms[0], cache, split="all", bootstrap=3, bootstrap_seed=0, fid_inf=True)
    assert out["num_reference"] == out["bootstrap"]["num_reference"] == 1797
    assert out["bootstrap"]["resample"] == "samples+reference"
    assert len(out["bootstrap"]["fid_inf"]) == 3 and np.isfinite(out["fid_inf"])
