"""FID and KID of feature sets and of their resamplings: the paired bootstrap and FID_inf.

FID and KID are torch-fidelity's own functions (`statistics`, `fid` and `kid` wrap them); the
rest of this module only decides which rows of the features enter them.

- The bootstrap (`bootstrap_replicates`): replicate b draws n sample indices with replacement
  and then, where the reference's features are at hand, m reference indices with replacement,
  from one numpy Generator seeded by the bootstrap seed (`np.random.default_rng(seed)`), in
  that order, replicate after replicate (`bootstrap_indices`). The index sets depend on (seed,
  n, m) alone: two evaluations with the same seed, sample count and reference resample the same
  rows, so sample i (drawn from the same noise in both) enters replicate b of both equally
  often, and the replicate-by-replicate differences of two records are a paired bootstrap of
  their difference.
- FID_inf (Chong & Forsyth, CVPR 2020, "Effectively unbiased FID and Inception Score and where
  to find them"): FID's bias falls as 1/N in the number N of samples, so FID is computed at
  several sizes N_k, fitted by least squares as FID = fid_inf + slope / N, and the intercept is
  the FID of infinitely many samples. Each size's subset is drawn without replacement and
  independently of the other sizes (as in the paper's code; not nested), against the whole
  reference, from its own Generator: `default_rng([seed, 1, 0])` for the evaluation's features
  and `default_rng([seed, 1, b + 1])` for bootstrap replicate b's resampled features (against
  the replicate's reference), one `choice(n, N_k, replace=False)` per size in `sizes` order. It
  is a separate stream, so switching FID_inf on does not move the bootstrap's indices.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from core.errors import UserError
from core.progress import Progress

KID_SUBSETS = 100
FID_INF_POINTS = 8  # default sizes: evenly spaced in 1/N between 1/n and 4/n
FID_INF_MIN_SIZE = 4
_FID_INF_STREAM = 1


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """mu and sigma (float64) of (N, D) features: torch-fidelity's FID statistics."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    stats = fid_features_to_statistics(features.to(torch.float64))
    return {k: np.asarray(stats[k], np.float64) for k in ("mu", "sigma")}


def fid(stats_a: dict, stats_b: dict) -> float:
    """Frechet distance between two statistics (torch-fidelity's function)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    a = {k: np.asarray(stats_a[k], np.float64) for k in ("mu", "sigma")}
    b = {k: np.asarray(stats_b[k], np.float64) for k in ("mu", "sigma")}
    if a["mu"].shape != b["mu"].shape:
        raise UserError(
            f"the reference statistics have {b['mu'].shape[0]} features, the samples' extractor "
            f"{a['mu'].shape[0]}: the reference was made with another eval.extractor"
        )
    return float(fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID])


def kid(sample: torch.Tensor, ref: torch.Tensor, subset_size: int) -> dict:
    """KID mean and std over KID_SUBSETS subsets of `subset_size` (torch-fidelity's function)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    out = kid_features_to_metric(
        sample, ref, kid_subsets=KID_SUBSETS, kid_subset_size=subset_size, verbose=False
    )
    return {"kid": float(out["kernel_inception_distance_mean"]),
            "kid_std": float(out["kernel_inception_distance_std"])}  # fmt: skip


# ---------------------------------------------------------------- FID_inf


def resolve_fid_inf_sizes(n: int, sizes: Sequence[int] | None = None) -> list[int]:
    """FID_inf's subset sizes for n samples, ascending: `sizes` (each 4..n) or, for None,
    FID_INF_POINTS sizes evenly spaced in 1/N between 1/n and 4/n, rounded, raised to 4,
    duplicates dropped. UserError unless there are at least two distinct sizes."""
    if sizes is None:
        inverse = np.linspace(1 / n, 4 / n, FID_INF_POINTS)
        chosen = {max(FID_INF_MIN_SIZE, round(1 / x)) for x in inverse}
    else:
        chosen = {int(s) for s in sizes}
        bad = [s for s in sorted(chosen) if not FID_INF_MIN_SIZE <= s <= n]
        if bad:
            raise UserError(
                f"eval.fid_inf_sizes={list(sizes)} holds {bad}; allowed: sizes "
                f"{FID_INF_MIN_SIZE}..sample.num={n}"
            )
    if len(chosen) < 2:
        raise UserError(
            f"eval.fid_inf needs at least two distinct subset sizes in {FID_INF_MIN_SIZE}.."
            f"sample.num={n} to fit FID = fid_inf + slope / N; raise sample.num"
        )
    return sorted(chosen)


def fit_fid_inf(sizes: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """(fid_inf, slope): the least-squares line FID = fid_inf + slope / N through the values."""
    x = 1.0 / np.asarray(sizes, np.float64)
    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, np.asarray(values, np.float64), rcond=None)
    return float(intercept), float(slope)


def fid_inf_rng(seed: int, replicate: int | None = None) -> np.random.Generator:
    """FID_inf's subsets' Generator: (seed, 1, 0) for the evaluation's own features, (seed, 1,
    b + 1) for bootstrap replicate b."""
    return np.random.default_rng([seed, _FID_INF_STREAM, 0 if replicate is None else replicate + 1])


def fid_infinity(
    features: torch.Tensor, ref_stats: dict, sizes: Sequence[int], rng: np.random.Generator
) -> dict:
    """FID of one seeded subset per size (without replacement) against `ref_stats`, and the fit:
    {"fid_inf", "fid_inf_slope", "fid_inf_sizes", "fid_inf_values"}."""
    n = len(features)
    values = []
    for size in sizes:
        rows = torch.from_numpy(rng.choice(n, int(size), replace=False))
        values.append(fid(statistics(features[rows]), ref_stats))
    intercept, slope = fit_fid_inf(sizes, values)
    return {"fid_inf": intercept, "fid_inf_slope": slope,
            "fid_inf_sizes": [int(s) for s in sizes], "fid_inf_values": values}  # fmt: skip


# ---------------------------------------------------------------- the bootstrap


def bootstrap_indices(
    count: int, n: int, m: int | None, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Each replicate's (n sample indices, m reference indices or None), with replacement, from
    one Generator seeded by `seed`: samples first, then the reference, replicate by replicate."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        rows = rng.integers(0, n, n)
        yield rows, (rng.integers(0, m, m) if m is not None else None)


def bootstrap_replicates(
    sample_feats: torch.Tensor,
    ref_stats: dict,
    ref_feats: torch.Tensor | None,
    resample_reference: bool,
    count: int,
    seed: int,
    kid_subset_size: int | None = None,
    inf_sizes: Sequence[int] | None = None,
) -> dict:
    """`count` replicates of FID (and of KID where `kid_subset_size` is given and `ref_feats`
    exist, of FID_inf where `inf_sizes` are given), resampling the samples and, when
    `resample_reference`, `ref_feats` (whose statistics `ref_stats` then are); otherwise each
    replicate keeps `ref_stats` and `ref_feats` as they are. The record's `bootstrap` dict."""
    m = len(ref_feats) if resample_reference and ref_feats is not None else None
    out: dict = {
        "seed": int(seed),
        "count": int(count),
        "num_samples": len(sample_feats),
        "num_reference": m,
        "resample": "samples" if m is None else "samples+reference",
        "fid": [],
    }
    with_kid = kid_subset_size is not None and ref_feats is not None
    if with_kid:
        out["kid"] = []
    if inf_sizes is not None:
        out["fid_inf"] = []
    indices = bootstrap_indices(count, len(sample_feats), m, seed)
    with Progress(count, "FID bootstrap", "cfh.extract", unit="replicate") as bar:
        for b, (rows, ref_rows) in enumerate(indices):
            sample = sample_feats[torch.from_numpy(rows)]
            ref, stats = ref_feats, ref_stats
            if ref_rows is not None:
                ref = ref_feats[torch.from_numpy(ref_rows)]  # type: ignore[index]
                stats = statistics(ref)
            out["fid"].append(fid(statistics(sample), stats))
            if with_kid:
                out["kid"].append(kid(sample, ref, kid_subset_size)["kid"])  # type: ignore[arg-type]
            if inf_sizes is not None:
                out["fid_inf"].append(
                    fid_infinity(sample, stats, inf_sizes, fid_inf_rng(seed, b))["fid_inf"]
                )
            bar.update(1)
    return out


def bootstrap_std(values: Sequence[float]) -> float:
    """Std (ddof 1) of the replicates; NaN for fewer than two."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")
