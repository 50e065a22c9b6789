"""Samples -> features -> FID (with a bootstrap and FID_inf), KID, precision/recall, class acc.

Every metric is computed from features with torch-fidelity's own functions
(`fid_features_to_statistics`, `fid_statistics_to_metric`, `kid_features_to_metric`,
`prc_features_to_metric`), so the sample features are extracted once and reused:

- FID: sample statistics against the reference's: the whole `eval.split` (or `eval.ref_num`
  images of it, a fixed seeded subset), or the `mu`/`sigma` of an `eval.reference` file.
- the bootstrap (model/evaluation/resampling.py): `eval.bootstrap` replicates, each resampling
  with replacement the sample features and, where the reference statistics are those of
  features at hand (a split, a file's arr_0 images that its statistics come from), the
  reference features; indices seeded, so that two evaluations with the same seed, sample count
  and reference resample the same rows (a paired bootstrap of their difference). The record
  keeps every replicate's FID (and KID, FID_inf) under `bootstrap`, and `fid_bootstrap_std`:
  the sampling noise of that one FID, not the spread over training seeds.
- FID_inf (`eval.fid_inf`): FID extrapolated to infinitely many samples from FIDs of subsets
  of several sizes (Chong & Forsyth 2020; resampling.py).
- precision/recall: k-NN manifolds (k = 3) of two sets of equal size: the samples and a seeded
  subset of the reference of the same size (or `eval.ref_num` images), because both numbers
  move with the set sizes. A reference file contributes its `arr_0` images; without them P/R
  (and KID) are skipped with the reason in the record.
- KID: mean and std over 100 subsets of `kid_subset_size` against the whole reference.

Reference statistics files (`cfh stats`, or ADM's reference batches): npz with `mu`, `sigma`
and optionally `arr_0` (uint8 NHWC images). cfh's files add `extractor` and `weights_hash`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from core.cache import cache_root
from core.errors import UserError
from core.io import atomic_torch_save, atomic_write_bytes
from core.progress import Progress
from model.data.reference import dataset_key, reference_dataset
from model.evaluation.extractors import (
    EXTRACTORS,
    INCEPTION_FE,
    class_accuracy,
    extractor_weights,
    single_thread,
)
from model.evaluation.resampling import (
    bootstrap_replicates,
    bootstrap_std,
    fid,
    fid_inf_rng,
    fid_infinity,
    kid,
    resolve_fid_inf_sizes,
    statistics,
)

log = logging.getLogger("cfh.extract")

FEATURE_LAYER = {"classifier": "feat", "inception": "2048"}
PRC_SEED = 0  # the reference subset that precision/recall compare with


class Images(Dataset):
    """uint8 (N, H, W, C) images as torch-fidelity's uint8 (C, H, W) items (1 -> 3 for RGB)."""

    def __init__(self, images: torch.Tensor, rgb: bool):
        self.images = images
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.images[i].permute(2, 0, 1)
        return x.expand(3, -1, -1).contiguous() if self.rgb and x.shape[0] == 1 else x


class Rgb(Dataset):
    """Repeat a 1-channel uint8 (C, H, W) dataset to 3 channels (Inception's input)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.dataset[i]
        return x.expand(3, -1, -1).contiguous() if x.shape[0] == 1 else x


def as_uint8_nhwc(images: Any) -> torch.Tensor:
    """Validate samples: uint8 (N, H, W, C) as a CPU tensor."""
    t = torch.as_tensor(np.asarray(images)) if not torch.is_tensor(images) else images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be uint8 (N, H, W, C) with C 1 or 3, got {t.dtype} {t.shape}"
        )
    return t.cpu()


def extract_features(
    dataset: Dataset, extractor: str, weights: Path, batch_size: int = 64, what: str = "samples"
) -> torch.Tensor:
    """(N, D) float32 features of a uint8 (C, H, W) dataset (torch-fidelity's extractor).

    The loop is torch-fidelity's get_featuresdict_from_dataset (same loader, batches and
    extractor calls, so the same features) with cfh's progress per batch (`what` names the set).
    """
    from torch.utils.data import DataLoader
    from torch_fidelity.utils import create_feature_extractor

    layer = FEATURE_LAYER[extractor]
    name = INCEPTION_FE if extractor == "inception" else "cfh-classifier"
    cuda = torch.cuda.is_available()
    threads = single_thread() if extractor == "classifier" else contextlib.nullcontext()
    batch_size = min(batch_size, len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=False, pin_memory=cuda)
    parts = []
    with threads, torch.no_grad():
        fe = create_feature_extractor(
            name, [layer], cuda=cuda, feature_extractor_weights_path=str(weights), verbose=False
        )
        desc = f"features ({what}, {extractor})"
        with Progress(len(dataset), desc, "cfh.extract", unit="img") as bar:
            for batch in loader:
                if cuda:
                    batch = batch.cuda(non_blocking=True)
                out = fe.convert_features_tuple_to_dict(fe(batch))
                parts.append(out[layer].cpu())
                bar.update(len(batch))
    return torch.cat(parts).to(torch.float32)


def subset(features: torch.Tensor, size: int, seed: int = PRC_SEED) -> torch.Tensor:
    """A fixed seeded subset of `size` rows (all rows when there are not more)."""
    if size >= len(features):
        return features
    g = torch.Generator().manual_seed(seed)
    return features[torch.randperm(len(features), generator=g)[:size].sort().values]


def _prc(sample: torch.Tensor, ref: torch.Tensor) -> dict:
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(sample, ref, save_cpu_ram=True, verbose=False)
    return {"precision": float(out["precision"]), "recall": float(out["recall"])}


# ---------------------------------------------------------------- references


def reference_features(
    data_cfg: Any, split: str, ref_num: int | None, extractor: str, weights: Path, whash: str,
    cache_dir: str | os.PathLike | None = None,
) -> torch.Tensor:  # fmt: skip
    """Features of `split` (or its seeded ref_num subset), cached by dataset, size and weights."""
    ref = reference_dataset(data_cfg, split, ref_num)
    name = f"cfh-{dataset_key(data_cfg)}-{split}-n{len(ref)}-{extractor}-{whash[:16]}"
    path = cache_root(cache_dir) / "fidelity" / f"{name}-features.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    log.info("extracting %s features of %d reference images (%s)", extractor, len(ref), split)
    data = Rgb(ref) if extractor == "inception" else ref
    feats = extract_features(data, extractor, weights, what=f"reference {split}")
    atomic_torch_save(path, feats)
    return feats


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def read_reference(path: str | os.PathLike) -> dict:
    """A reference file: {"mu", "sigma" (or None), "images" (uint8 NHWC or None), "meta"}.

    ADM's reference batches hold mu/sigma and arr_0; an ADM sample batch (or another tool's
    reference) may hold arr_0 images only, whose statistics compute_metrics then takes with the
    configured extractor, as ADM's evaluator does. UserError when it has neither.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            has_stats = "mu" in f and "sigma" in f
            if not has_stats and "arr_0" not in f:
                raise UserError(
                    f"eval.reference={path}: neither mu/sigma arrays nor arr_0 images "
                    f"(keys: {f.files})"
                )
            meta = json.loads(str(f["meta"])) if "meta" in f else {}
            images = f["arr_0"] if "arr_0" in f else None
            mu, sigma = (f["mu"], f["sigma"]) if has_stats else (None, None)
            return {"mu": mu, "sigma": sigma, "images": images, "meta": meta}
    except (OSError, ValueError) as e:
        raise UserError(f"eval.reference={path} is not a readable .npz ({e})") from None


def write_reference(
    out: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, images: np.ndarray | None,
    meta: dict,
) -> None:  # fmt: skip
    """Write a statistics file in ADM's reference-batch layout plus cfh's meta (atomically)."""
    import io

    arrays = {"mu": mu, "sigma": sigma, "meta": np.asarray(json.dumps(meta))}
    if images is not None:
        arrays["arr_0"] = images
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out, buf.getvalue())


# ---------------------------------------------------------------- the record's metrics


def compute_metrics(
    images_uint8: Any,
    labels: Any,
    data_cfg: Any,
    extractor: str,
    split: str = "test",
    kid_subset_size: int = 100,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    ref_max_n: int | None = None,
    reference: str | os.PathLike | None = None,
    bootstrap: int = 0,
    bootstrap_seed: int = 0,
    fid_inf: bool = False,
    fid_inf_sizes: list[int] | None = None,
) -> dict:
    """FID (+ bootstrap, FID_inf), KID, precision/recall and class_acc of samples (module doc).

    `images_uint8`: uint8 (N, H, W, C) samples; `labels`: their requested classes (or None);
    `bootstrap`: replicates (0: none); `fid_inf_sizes`: FID_inf's subset sizes (None: 8 between
    n/4 and n, resampling.resolve_fid_inf_sizes).
    """
    if extractor not in EXTRACTORS:
        allowed = ", ".join(EXTRACTORS)
        raise UserError(f"eval.extractor={extractor!r} is unknown; allowed: {allowed}")
    images = as_uint8_nhwc(images_uint8)
    if len(images) < 4:  # precision/recall use the 3rd nearest neighbour
        raise UserError(f"sample.num={len(images)} is too small for FID/KID/P/R; allowed: >= 4")
    inf_sizes = resolve_fid_inf_sizes(len(images), fid_inf_sizes) if fid_inf else None
    ref = read_reference(reference) if reference is not None else None
    if ref is None:
        first = reference_dataset(data_cfg, split, ref_max_n)[0]  # (C, H, W)
        _check_shape(images, first.permute(1, 2, 0)[None])
    elif ref["images"] is not None:
        _check_shape(images, as_uint8_nhwc(ref["images"][:1]))
    _, weights, whash = extractor_weights(extractor, data_cfg, weights_path, cache_dir)
    rgb = extractor == "inception"
    sample_feats = extract_features(Images(images, rgb), extractor, weights)
    out: dict[str, Any] = {"extractor_weights_hash": whash, "num_samples": len(images)}
    if ref is not None:
        made_by = ref["meta"].get("extractor", "inception")  # ADM's files: TF Inception pool3
        if ref["mu"] is not None and made_by != extractor:
            raise UserError(
                f"eval.reference={reference} holds {made_by} statistics; eval.extractor="
                f"{extractor} needs {extractor} ones (cfh stats eval.extractor={extractor})"
            )
        ref_feats = None
        if ref["images"] is not None:
            ref_imgs = as_uint8_nhwc(ref["images"])
            ref_feats = extract_features(
                Images(ref_imgs, rgb), extractor, weights, what="reference file"
            )
        if ref["mu"] is not None:
            ref_stats = {"mu": ref["mu"], "sigma": ref["sigma"]}
            out["num_reference"] = int(ref["meta"].get("num", 0)) or None
            # the bootstrap resamples arr_0 only where the statistics are those of all of it
            resample_ref = ref_feats is not None and out["num_reference"] == len(ref_feats)
        else:  # images only: their statistics with this extractor
            ref_stats = statistics(ref_feats)
            out["num_reference"] = len(ref_feats)
            resample_ref = True
        out["reference_statistics"] = "file" if ref["mu"] is not None else "from arr_0 images"
    else:
        ref_feats = reference_features(
            data_cfg, split, ref_max_n, extractor, weights, whash, cache_dir
        )
        ref_stats = statistics(ref_feats)
        out["num_reference"] = len(ref_feats)
        resample_ref = True
    out["fid"] = fid(statistics(sample_feats), ref_stats)
    if inf_sizes is not None:
        out.update(fid_infinity(sample_feats, ref_stats, inf_sizes, fid_inf_rng(bootstrap_seed)))
    kid_size = None
    if ref_feats is None:
        out["skipped"] = "KID, precision and recall: the reference file has no arr_0 images"
    else:
        kid_size = max(2, min(int(kid_subset_size), len(images), len(ref_feats)))
        out.update(kid(sample_feats, ref_feats, kid_size), kid_subset_size=kid_size)
        prc_ref = subset(ref_feats, int(ref_max_n) if ref_max_n else len(sample_feats))
        out.update(_prc(sample_feats, prc_ref), prc_num_reference=len(prc_ref))
    if extractor == "classifier" and labels is not None:
        out["class_acc"] = class_accuracy(images, labels, weights)
    else:
        out["class_acc"] = None
    replicates = {"fid": []}
    if bootstrap >= 2:
        replicates = bootstrap_replicates(
            sample_feats, ref_stats, ref_feats, resample_ref, bootstrap, bootstrap_seed,
            kid_size, inf_sizes,
        )  # fmt: skip
        out["bootstrap"] = replicates
    out["fid_bootstrap_std"] = bootstrap_std(replicates["fid"])
    out["fid_bootstrap_n"] = bootstrap
    return out


def _check_shape(samples: torch.Tensor, reference: torch.Tensor) -> None:
    if tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(
            f"samples have shape (H, W, C)={tuple(samples.shape[1:])}, the reference images "
            f"{tuple(reference.shape[1:])}"
        )


def write_split_statistics(
    data_cfg: Any,
    split: str,
    ref_num: int | None,
    extractor: str,
    out: str | os.PathLike,
    weights_path: str | os.PathLike | None = None,
    num_images: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """`cfh stats`: mu/sigma of a split's features and up to num_images of its images (arr_0,
    a seeded subset, in split order) into a reference file; returns its meta."""
    _, weights, whash = extractor_weights(extractor, data_cfg, weights_path, cache_dir)
    feats = reference_features(data_cfg, split, ref_num, extractor, weights, whash, cache_dir)
    stats = statistics(feats)
    ref = reference_dataset(data_cfg, split, ref_num)
    keep = range(len(ref))
    if num_images < len(ref):
        g = torch.Generator().manual_seed(PRC_SEED)
        keep = torch.randperm(len(ref), generator=g)[:num_images].sort().values.tolist()
    images = np.stack([ref[i].permute(1, 2, 0).numpy() for i in keep]) if num_images else None
    meta = {
        "extractor": extractor,
        "weights_hash": whash,
        "dataset": dataset_key(data_cfg),
        "split": split,
        "num": len(feats),
        "num_images": 0 if images is None else len(images),
    }
    write_reference(out, stats["mu"], stats["sigma"], images, meta)
    return meta
