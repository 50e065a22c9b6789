"""Samples and eval settings of a run: checkpoint -> samples/<hash>/samples.npz and grid.png.

Samples are keyed by their sampling settings, so `cfh evaluate` with another extractor reuses
them; an eval record is keyed by sampling settings + extractor (`eval_settings`), so a finished
evaluation is never recomputed. Several ranks (torchrun, a multi-task job) split the samples and
rank 0 gathers them through files (`samples/<hash>/shards/`). How the images of a task are drawn
is passed in (`draw_samples`' `draws`): generate and t2i are here, the editing tasks in
model/tasks/editing.py, and model/tasks/evaluate.py joins them for `cfh sample` and `cfh evaluate`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import RunConfig
from core.config.datasets import train_split
from core.errors import DiskFull, UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso, owner_lock, read_status
from model.data.joint_pairs import is_caption_data, saved_tokenizer
from model.data.tokenizers import encode_batch
from model.evaluation.extractors import classifier_recipe, extractor_weights
from model.evaluation.metrics import file_sha256
from model.evaluation.prompts import prompt_labels, read_prompts, split_prompts
from model.evaluation.resampling import resolve_fid_inf_sizes
from model.evaluation.run_io import (
    decode_to_pixels,
    default_device,
    guidance_interval,
    image_grid_png,
    load_samples,
    load_trained,
    run_sampler,
    sample_progress,
    settings_hash,
    to_uint8,
)
from model.method.network import CausalFusion
from model.method.noise import SampleNoise
from model.method.sampling import sample as sample_images
from model.training.distributed import DistInfo, dist_info, shard_range

log = logging.getLogger("cfh.inference")


def sample_settings(cfg: RunConfig, ckpt_step: int, joint: bool = False) -> dict:
    """Everything that decides the samples (`joint`: text-to-image from prompts)."""
    s = cfg.sample
    interval = list(s.cfg_interval) if s.cfg_interval is not None else None
    settings = {
        "s_eval": int(s.ar_steps),
        "order": str(s.order),
        "cfg": float(s.cfg),
        "cfg_interval": interval,
        "steps": int(s.steps),
        "sampler": str(s.sampler),
        "num_samples": int(s.num),
        "seed": int(s.seed),
        "ema": bool(s.ema),
        "ckpt_step": ckpt_step,
        "task": str(cfg.eval.task),
        "noise": "per-sample",  # sample i's stream is seeded by (seed, i): model.noise
    }
    if interval is not None:  # guided for t_low <= t < t_high (closed before: another key)
        settings["cfg_interval_kind"] = "half-open"
    if settings["task"] != "generate":  # edits start from real images of the eval split
        settings["split"] = str(cfg.eval.split)
    if joint and settings["task"] == "generate":
        settings["task"] = "t2i"  # a joint run generates from text
    if settings["task"] == "t2i":
        prompts = read_prompts(s, int(s.num))
        if prompts is None:
            settings["prompts"] = f"split:{cfg.eval.split}"  # image i's first caption
            settings["split"] = str(cfg.eval.split)
        else:
            settings["prompts"] = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return settings


def eval_settings(cfg: RunConfig, ckpt_step: int, train_data: Any) -> dict:
    """Everything that decides an eval record's numbers: the samples' settings, the extractor
    and a hash of its actual weights (and the classifier's recipe), the reference (split and
    ref_num, or the statistics file's sha256), the KID subset size, the bootstrap (count and what
    it resamples) and FID_inf (on or off, and its resolved subset sizes when on)."""
    extractor = str(cfg.eval.extractor)
    _, _, weights_hash = extractor_weights(extractor, train_data, cfg.eval.weights_path)
    reference = cfg.eval.reference
    settings = {
        **sample_settings(cfg, ckpt_step, is_caption_data(train_data)),
        "extractor": extractor,
        "extractor_weights_hash": weights_hash,
        "split": str(cfg.eval.split),
        "ref_num": cfg.eval.ref_num,
        "reference_sha256": None if reference is None else file_sha256(str(reference)),
        "kid_subset_size": int(cfg.eval.kid_subset_size),
        "bootstrap": int(cfg.eval.bootstrap),
        "prc_reference": "equal-size",  # P/R against as many reference images as samples
    }
    if settings["bootstrap"]:  # samples-only records (before the reference was resampled) differ
        settings["bootstrap_resample"] = "samples+reference"
    if cfg.eval.fid_inf:  # off: no key, so records without FID_inf keep theirs
        sizes = cfg.eval.fid_inf_sizes
        sizes = None if sizes is None else [int(s) for s in sizes]
        settings["fid_inf"] = True
        settings["fid_inf_sizes"] = resolve_fid_inf_sizes(int(cfg.sample.num), sizes)
    if train_split(train_data) != "train":  # the reference images were trained on: say so
        settings["train_split"] = train_split(train_data)
    if extractor == "classifier":
        settings["classifier_recipe"] = settings_hash(classifier_recipe(train_data))
    return settings


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(num) % num_classes


# (net, train_cfg, cfg, device, sample indices) -> (uint8 NHWC, int64 labels, seconds, details)
Draw = Callable[
    [CausalFusion, Any, RunConfig, torch.device, range],
    tuple[np.ndarray, np.ndarray, float, dict],
]


# written last: samples.npz alone may be there without it (a process stopped or killed between
# the two writes), and then the samples are drawn again (their shards reused), not half-read
SAMPLES_DONE = "settings.json"


def draw_samples(
    cfg: RunConfig,
    run_dir: Path,
    device: torch.device | None,
    draws: Mapping[str, Draw],
    wait: bool = False,
) -> dict | None:
    """Draw cfg.sample.num samples with `draws[task]` (reused if already drawn with these settings).

    Under torchrun or a multi-task job each rank draws its contiguous share of the sample
    indices into `shards/`; rank 0 waits for every share, writes samples.npz and returns its
    metadata, the other ranks return None as soon as their share is written. Sample i's noise
    comes from its own stream (model.noise), so the samples do not depend on the number of
    ranks or on sample.batch_size; a share written by an interrupted job is reused.

    Rank 0 holds `samples/<hash>/.lock` while drawing: the same samples asked for again
    meanwhile are refused, naming the process that draws them (`wait`: an evaluation waits for
    them instead, then reuses them).
    """
    info = dist_info()
    device = device or default_device(info)
    net, step, train_cfg = load_trained(cfg, device)
    settings = sample_settings(cfg, step, is_caption_data(train_cfg.data))
    out_dir = run_dir / "samples" / settings_hash(settings)
    if (out_dir / SAMPLES_DONE).exists():
        return _reused(cfg, out_dir, info)
    with owner_lock(
        out_dir / ".lock",
        f"samples {out_dir.name} of run_dir={run_dir}",
        "drawing samples",
        enabled=info.is_main,
        wait=wait,
    ):
        if (out_dir / SAMPLES_DONE).exists():  # drawn by the process that held the lock
            return _reused(cfg, out_dir, info)
        return _draw(cfg, run_dir, out_dir, settings, net, train_cfg, device, draws)


def _reused(cfg: RunConfig, out_dir: Path, info: DistInfo) -> dict | None:
    """The metadata of samples drawn before (rank 0; None on the others)."""
    if not info.is_main:
        return None
    if cfg.sample.adm_npz:
        write_adm_npz(out_dir)
    meta = json.loads((out_dir / SAMPLES_DONE).read_text())
    return {**meta, "dir": str(out_dir), "grid": str(out_dir / "grid.png"), "reused": True}


def _draw(
    cfg: RunConfig,
    run_dir: Path,
    out_dir: Path,
    settings: dict,
    net: CausalFusion,
    train_cfg: Any,
    device: torch.device,
    draws: Mapping[str, Draw],
) -> dict | None:
    """Draw this rank's share into shards/; rank 0 gathers them into samples.npz."""
    info = dist_info()
    if int(cfg.sample.ar_steps) > net.num_tokens:
        raise UserError(
            f"sample.ar_steps={cfg.sample.ar_steps} must be in 1..L={net.num_tokens} "
            "(the tokens per image)"
        )
    num = int(cfg.sample.num)
    if num < info.world:
        raise UserError(f"sample.num={num} must be at least the number of ranks ({info.world})")
    mine = shard_range(num, info)
    path = _shard_path(out_dir, mine)
    if not path.exists():
        draw = draws.get(settings["task"])
        if draw is None:
            raise UserError(
                f"eval.task={settings['task']!r} draws no samples; allowed: {', '.join(draws)}"
            )
        _write_shard(path, *draw(net, train_cfg, cfg, device, mine))
    if not info.is_main:
        return None
    shards = [
        _shard_path(out_dir, shard_range(num, DistInfo(r, info.world)))
        for r in range(1, info.world)
    ]
    _wait_for(shards, run_dir, float(cfg.train.dist_timeout_s))
    images, labels, rates, details = _merge_shards([path, *shards])
    meta = {
        "settings": settings,
        "num_samples": len(images),
        "sample_img_per_s": sum(rates),
        "ranks": info.world,
        "created": now_iso(),
        **details,
    }
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    try:
        atomic_write_bytes(out_dir / "samples.npz", buf.getvalue())
        if cfg.sample.adm_npz:
            write_adm_npz(out_dir)
        atomic_write_bytes(out_dir / "grid.png", image_grid_png(images))
        atomic_write_json(out_dir / SAMPLES_DONE, meta)
    except DiskFull:  # nothing of the gathered samples stays; the shards do (a rerun reuses them)
        for name in (SAMPLES_DONE, "grid.png", "samples_adm.npz", "samples.npz"):
            (out_dir / name).unlink(missing_ok=True)
        raise
    shutil.rmtree(out_dir / "shards", ignore_errors=True)
    log.info(
        "sampled %d images at %.1f img/s into %s", len(images), meta["sample_img_per_s"], out_dir
    )
    return {**meta, "dir": str(out_dir), "grid": str(out_dir / "grid.png"), "reused": False}


def write_adm_npz(sample_dir: Path) -> Path:
    """samples_adm.npz beside samples.npz: arr_0 uint8 NHWC images, arr_1 labels, the layout
    of ADM's sample files that its evaluator (guided-diffusion evaluations/evaluator.py) reads."""
    path = sample_dir / "samples_adm.npz"
    if not path.exists():
        images, labels = load_samples(sample_dir)
        buf = io.BytesIO()
        np.savez(buf, arr_0=images, arr_1=labels)
        atomic_write_bytes(path, buf.getvalue())
    return path


def _shard_path(out_dir: Path, indices: range) -> Path:
    return out_dir / "shards" / f"{indices.start:08d}-{indices.stop:08d}.npz"


def _write_shard(
    path: Path, images: np.ndarray, labels: np.ndarray, seconds: float, details: dict
) -> None:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels, seconds=seconds, details=json.dumps(details))
    atomic_write_bytes(path, buf.getvalue())


def _wait_for(paths: list[Path], run_dir: Path, timeout_s: float) -> None:
    """Block until every file exists; fail after timeout_s, or at once when a rank failed."""
    deadline = time.monotonic() + timeout_s
    while missing := [p for p in paths if not p.exists()]:
        status = read_status(run_dir)
        if status.get("state") == "failed":
            raise RuntimeError(f"another rank failed while sampling: {status.get('error')}")
        if time.monotonic() > deadline:
            names = ", ".join(p.name for p in missing)
            raise RuntimeError(
                f"samples of other ranks did not appear within train.dist_timeout_s={timeout_s:g}"
                f" s (missing: {names} in {missing[0].parent})"
            )
        time.sleep(0.2)


def _merge_shards(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, list[float], dict]:
    """Shards in index order -> (images, labels, img/s of each shard, details of the first)."""
    images, labels, rates, details = [], [], [], {}
    for path in paths:
        with np.load(path) as f:
            images.append(f["images"])
            labels.append(f["labels"])
            rates.append(len(f["images"]) / max(float(f["seconds"]), 1e-9))
            details = details or json.loads(str(f["details"]))
    return np.concatenate(images), np.concatenate(labels), rates, details


def generate_samples(
    net: CausalFusion, train_cfg: Any, cfg: RunConfig, device: torch.device, indices: range
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Class-balanced samples `indices` of sample.num: (uint8 NHWC, int64 labels, seconds, {})."""
    sampler = run_sampler(cfg, train_cfg)
    labels = balanced_labels(int(cfg.sample.num), int(train_cfg.data.num_classes))
    chunks = []
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    with sample_progress(len(indices)) as bar:
        for start in range(indices.start, indices.stop, bs):
            batch = range(start, min(start + bs, indices.stop))
            y = labels[batch.start : batch.stop].to(device)
            chunks.append(_sample_batch(net, sampler, cfg, train_cfg, y, list(batch)))
            bar.update(len(batch))
    seconds = time.perf_counter() - t0
    mine = labels[indices.start : indices.stop]
    return to_uint8(torch.cat(chunks)), mine.numpy(), seconds, {}


def text_to_image_samples(
    net: CausalFusion, train_cfg: Any, cfg: RunConfig, device: torch.device, indices: range
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Samples `indices` from prompts: sample.prompt(s), else the eval split's captions.

    Labels are the digit each prompt names (digit captions; -1 otherwise), for class_acc.
    Prompts of one token length share a batch (the cache holds no padding); per-sample noise
    makes a sample independent of that grouping.
    """
    num = int(cfg.sample.num)
    prompts = read_prompts(cfg.sample, num)
    if prompts is None:
        prompts, labels = split_prompts(train_cfg.data, str(cfg.eval.split), num)
    else:
        labels = prompt_labels(prompts, train_cfg.data)
    tok = saved_tokenizer(Path(str(cfg.run_dir)))
    tokens = encode_batch(tok, prompts, net.cfg.max_text_len)  # (num, T) BOS .. EOS PAD
    lengths = (tokens != 0).sum(1)
    sampler = run_sampler(cfg, train_cfg)
    null = int(train_cfg.data.num_classes)
    mine = list(indices)
    out: dict[int, torch.Tensor] = {}
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    with sample_progress(len(mine)) as bar:
        for length in sorted({int(lengths[i]) for i in mine}):
            same = [i for i in mine if int(lengths[i]) == length]
            for start in range(0, len(same), bs):
                batch = same[start : start + bs]
                y = torch.full((len(batch),), null, dtype=torch.long, device=device)
                text = tokens[batch, :length].to(device)
                x = _sample_batch(net, sampler, cfg, train_cfg, y, batch, text)
                for i, img in zip(batch, x, strict=True):
                    out[i] = img
                bar.update(len(batch))
    seconds = time.perf_counter() - t0
    images = torch.stack([out[i] for i in mine])
    details = {"prompts": prompts[:8]}
    return to_uint8(images), labels[mine].numpy(), seconds, details


def _sample_batch(
    net: CausalFusion,
    sampler: Any,
    cfg: RunConfig,
    train_cfg: Any,
    y: torch.Tensor,
    indices: list[int],
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples `indices` of sample.num (labels y, prompts `text`) as pixels in [-1, 1]."""
    x = sample_images(
        net,
        sampler,
        y,
        int(cfg.sample.ar_steps),
        order=str(cfg.sample.order),
        cfg_scale=float(cfg.sample.cfg),
        cfg_interval=guidance_interval(cfg),
        generator=SampleNoise.for_indices(int(cfg.sample.seed), indices),
        block=int(train_cfg.train.order_block),
        text=text,
    )
    return decode_to_pixels(x, train_cfg)


DRAWS: dict[str, Draw] = {"generate": generate_samples, "t2i": text_to_image_samples}
