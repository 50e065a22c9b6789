"""Run-level sampling and evaluation: checkpoint -> samples.npz/grid.png -> eval/<hash>.json.

Samples are keyed by their sampling settings, so `cfh evaluate` with another extractor reuses
them; an eval record is keyed by sampling settings + extractor, so a finished evaluation is
never recomputed. Several ranks (torchrun, a multi-task job) split the samples and rank 0
gathers them through files (`samples/<hash>/shards/`); only rank 0 scores.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso
from model.data.joint_pairs import is_caption_data, saved_tokenizer
from model.method.diffusion import Diffusion, make_sampler
from model.method.network import CausalFusion
from model.method.noise import SampleNoise
from model.method.sampling import sample as sample_images
from model.training.checkpoint import (
    DamagedCheckpoints,
    checkpoint_path,
    checkpoint_paths,
    good_checkpoints,
    read_checkpoint,
    step_of,
)
from model.training.distributed import DistInfo, dist_info, shard_range
from model.training.progress import Progress, run_log
from model.training.trainer import model_from_config

log = logging.getLogger("cfh.inference")


def sample_progress(count: int) -> Progress:
    """Progress of this rank's samples (rank 0 reports; the shares are equal to within one)."""
    return Progress(count, "sample", "cfh.sample", unit="img", enabled=dist_info().is_main)


def settings_hash(settings: dict) -> str:
    """Short stable hash of a settings dict (folder and file names)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _run_dir(cfg: DictConfig) -> Path:
    if not cfg.run_dir:
        raise UserError("run_dir is required: point it at a trained run folder")
    run_dir = Path(str(cfg.run_dir))
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir}: no such folder")
    return run_dir


def resolve_checkpoint(run_dir: Path, ckpt: Any) -> Path:
    """The checkpoint file for sample.ckpt: the newest good one for latest, or that step's."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise UserError(f"run_dir={run_dir} has no checkpoint; train it first (cfh train)")
    if ckpt == "latest":
        good = good_checkpoints(run_dir)
        if not good:
            raise DamagedCheckpoints(
                f"run_dir={run_dir}: every checkpoint is damaged "
                f"({', '.join(p.name for p in paths)}); train again (cfh train) to rewrite them"
            )
        return good[-1]
    wanted = checkpoint_path(run_dir, int(ckpt))
    if wanted not in paths:
        steps = ", ".join(str(step_of(p)) for p in paths)
        raise UserError(f"sample.ckpt={ckpt}: no checkpoint at that step; available: {steps}")
    return wanted


def load_trained(cfg: DictConfig, device: torch.device) -> tuple[CausalFusion, int, DictConfig]:
    """The run's network (EMA weights unless sample.ema=false), its step and its train config."""
    run_dir = _run_dir(cfg)
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    path = resolve_checkpoint(run_dir, cfg.sample.ckpt)
    state = read_checkpoint(path)
    vocab = 0
    if is_caption_data(train_cfg.data):
        vocab = saved_tokenizer(run_dir).vocab_size
    net = model_from_config(train_cfg, vocab)  # type: ignore[arg-type]
    net.load_state_dict(state["ema" if cfg.sample.ema else "model"])
    return net.to(device).eval(), int(state["step"]), train_cfg  # type: ignore[return-value]


def sample_settings(cfg: DictConfig, ckpt_step: int, joint: bool = False) -> dict:
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
        from model.data.joint_pairs import read_prompts

        prompts = read_prompts(s, int(s.num))
        if prompts is None:
            settings["prompts"] = f"split:{cfg.eval.split}"  # image i's first caption
            settings["split"] = str(cfg.eval.split)
        else:
            settings["prompts"] = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    return settings


def eval_settings(cfg: DictConfig, ckpt_step: int, train_data: Any) -> dict:
    """Everything that decides an eval record's numbers: the samples' settings, the extractor
    and a hash of its actual weights (and the classifier's recipe), the reference (split and
    ref_num, or the statistics file's sha256), the KID subset size and the bootstrap count."""
    from model.evaluation.extractors import classifier_recipe, extractor_weights
    from model.evaluation.metrics import file_sha256

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
    if extractor == "classifier":
        settings["classifier_recipe"] = settings_hash(classifier_recipe(train_data))
    return settings


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) floats in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def image_grid_png(images: np.ndarray, ncol: int = 10, scale: int = 0) -> bytes:
    """A PNG of up to 100 uint8 NHWC images laid out in rows of `ncol`."""
    from PIL import Image
    from torchvision.utils import make_grid

    x = torch.from_numpy(images[:100]).permute(0, 3, 1, 2)
    grid = make_grid(x, nrow=ncol, padding=1, pad_value=255).permute(1, 2, 0).numpy()
    img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    scale = scale or max(1, 256 // max(images.shape[1], 1))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., K-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(num) % num_classes


def sample_run(cfg: DictConfig, device: torch.device | None = None) -> dict | None:
    """Draw cfg.sample.num class-balanced samples (reused if already drawn with these settings).

    Under torchrun or a multi-task job each rank draws its contiguous share of the sample
    indices into `shards/`; rank 0 waits for every share, writes samples.npz and returns its
    metadata, the other ranks return None as soon as their share is written. Sample i's noise
    comes from its own stream (model.noise), so the samples do not depend on the number of
    ranks or on sample.batch_size; a share written by an interrupted job is reused. Rank 0's
    log lines (progress included) go to the run's log.txt.
    """
    run_dir = _run_dir(cfg)
    with run_log(run_dir / "log.txt", enabled=dist_info().is_main):
        return _sample_run(cfg, run_dir, device)


def _sample_run(cfg: DictConfig, run_dir: Path, device: torch.device | None) -> dict | None:
    info = dist_info()
    device = device or _default_device(info)
    net, step, train_cfg = load_trained(cfg, device)
    settings = sample_settings(cfg, step, is_caption_data(train_cfg.data))
    out_dir = run_dir / "samples" / settings_hash(settings)
    if (out_dir / "samples.npz").exists():
        if not info.is_main:
            return None
        if cfg.sample.adm_npz:
            write_adm_npz(out_dir)
        meta = json.loads((out_dir / "settings.json").read_text())
        return {**meta, "dir": str(out_dir), "grid": str(out_dir / "grid.png"), "reused": True}
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
        if settings["task"] == "generate":
            drawn = _generate_samples(net, train_cfg, cfg, device, mine)
        elif settings["task"] == "t2i":
            drawn = _text_to_image_samples(net, train_cfg, cfg, device, mine)
        else:  # inpaint / outpaint / swap: real images of eval.split edited in context
            from model.tasks.editing import task_samples

            drawn = task_samples(net, train_cfg, cfg, device, mine)
        _write_shard(path, *drawn)
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
    atomic_write_bytes(out_dir / "samples.npz", buf.getvalue())
    if cfg.sample.adm_npz:
        write_adm_npz(out_dir)
    atomic_write_bytes(out_dir / "grid.png", image_grid_png(images))
    atomic_write_json(out_dir / "settings.json", meta)
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


def _default_device(info: DistInfo) -> torch.device:
    return (
        torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


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
    from core.io import read_status

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


def _generate_samples(
    net: CausalFusion, train_cfg: Any, cfg: DictConfig, device: torch.device, indices: range
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Class-balanced samples `indices` of sample.num: (uint8 NHWC, int64 labels, seconds, {})."""
    sampler = _run_sampler(cfg, train_cfg)
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


def _text_to_image_samples(
    net: CausalFusion, train_cfg: Any, cfg: DictConfig, device: torch.device, indices: range
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Samples `indices` from prompts: sample.prompt(s), else the eval split's captions.

    Labels are the digit each prompt names (digit captions; -1 otherwise), for class_acc.
    Prompts of one token length share a batch (the cache holds no padding); per-sample noise
    makes a sample independent of that grouping.
    """
    from model.data.joint_pairs import prompt_labels, read_prompts, split_prompts
    from model.data.tokenizers import encode_batch

    num = int(cfg.sample.num)
    prompts = read_prompts(cfg.sample, num)
    if prompts is None:
        prompts, labels = split_prompts(train_cfg.data, str(cfg.eval.split), num)
    else:
        labels = prompt_labels(prompts, train_cfg.data)
    tok = saved_tokenizer(Path(str(cfg.run_dir)))
    tokens = encode_batch(tok, prompts, net.cfg.max_text_len)  # (num, T) BOS .. EOS PAD
    lengths = (tokens != 0).sum(1)
    sampler = _run_sampler(cfg, train_cfg)
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


def _run_sampler(cfg: DictConfig, train_cfg: Any) -> Any:
    """sample.sampler over sample.steps; x0 clipped to [-1, 1] for pixels (latents unbounded)."""
    pixels = train_cfg.data.name != "latents"
    return make_sampler(Diffusion(), str(cfg.sample.sampler), int(cfg.sample.steps), clip_x0=pixels)


def _sample_batch(
    net: CausalFusion,
    sampler: Any,
    cfg: DictConfig,
    train_cfg: Any,
    y: torch.Tensor,
    indices: list[int],
    text: torch.Tensor | None = None,
) -> torch.Tensor:
    """Samples `indices` of sample.num (labels y, prompts `text`) as pixels in [-1, 1]."""
    interval = tuple(cfg.sample.cfg_interval) if cfg.sample.cfg_interval is not None else None
    x = sample_images(
        net,
        sampler,
        y,
        int(cfg.sample.ar_steps),
        order=str(cfg.sample.order),
        cfg_scale=float(cfg.sample.cfg),
        cfg_interval=interval,
        generator=SampleNoise.for_indices(int(cfg.sample.seed), indices),
        block=int(train_cfg.train.order_block),
        text=text,
    )
    return decode_to_pixels(x, train_cfg)


def decode_to_pixels(x: torch.Tensor, train_cfg: Any) -> torch.Tensor:
    """Model outputs -> pixels in [-1, 1] (VAE-decoded for latent data)."""
    if train_cfg.data.name != "latents":
        return x
    from model.data.encode import decode_latents

    return decode_latents(x, train_cfg.data)


def load_samples(sample_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 NHWC images and int64 labels of a samples folder."""
    with np.load(Path(sample_dir) / "samples.npz") as f:
        return f["images"], f["labels"]


def evaluate_run(cfg: DictConfig, device: torch.device | None = None) -> dict:
    """Sample (or reuse samples) and score them; write and return run_dir/eval/<hash>.json.

    Rank 0's log lines go to the run's log.txt; a new record's metrics also go to TensorBoard
    when the run was trained with train.loggers holding tensorboard (model.loggers).
    """
    run_dir = _run_dir(cfg)
    with run_log(run_dir / "log.txt", enabled=dist_info().is_main):
        record, new = _evaluate_run(cfg, run_dir, device)
        if new and record.get("path"):
            from model.training.loggers import log_eval_record

            log_eval_record(run_dir, OmegaConf.load(run_dir / "config.yaml"), record)
            log.info("wrote eval record %s", record["path"])
    return record


def _evaluate_run(cfg: DictConfig, run_dir: Path, device: torch.device | None) -> tuple[dict, bool]:
    """(the eval record, whether it was written now)."""
    from model.evaluation.metrics import compute_metrics

    step = step_of(resolve_checkpoint(run_dir, cfg.sample.ckpt))
    train_cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.eval.task == "caption":
        return _evaluate_captions(cfg, run_dir, step, device)
    from model.evaluation.extractors import check_eval_extractor

    check_eval_extractor(train_cfg.data, cfg.eval)
    settings = eval_settings(cfg, step, train_cfg.data)
    path = run_dir / "eval" / f"{settings_hash(settings)}.json"
    if path.exists():
        record = json.loads(path.read_text())
        return {**record, "path": str(path)}, False
    drawn = sample_run(cfg, device)
    if drawn is None:  # not rank 0: this rank's share of the samples is written, rank 0 scores
        return {"path": None, "rank": dist_info().rank}, False
    images, labels = load_samples(drawn["dir"])
    metrics = compute_metrics(
        images,
        labels,
        train_cfg.data,
        str(cfg.eval.extractor),
        split=str(cfg.eval.split),
        kid_subset_size=int(cfg.eval.kid_subset_size),
        weights_path=cfg.eval.weights_path,
        ref_max_n=cfg.eval.ref_num,
        reference=cfg.eval.reference,
        bootstrap=int(cfg.eval.bootstrap),
        bootstrap_seed=int(cfg.sample.seed),
    )
    record = {
        "settings": settings,
        "metrics": {**metrics, "sample_img_per_s": drawn["sample_img_per_s"]},
        "ckpt_step": step,
        "samples": drawn["dir"],
        "reference": None if cfg.eval.reference is None else str(cfg.eval.reference),
        "created": now_iso(),
    }
    atomic_write_json(path, record)
    return {**record, "path": str(path)}, True


def _evaluate_captions(
    cfg: DictConfig, run_dir: Path, step: int, device: torch.device | None
) -> tuple[dict, bool]:
    """eval.task=caption: the eval record of captions of the eval split (model.captioning)."""
    from model.tasks.captioning import (
        caption_metrics_of_run,
        caption_settings,
        write_caption_record,
    )

    settings = {
        **caption_settings(cfg, step),
        "task": "caption",
        "split": str(cfg.eval.split),
        "num_images": int(cfg.sample.num),
        "scorer": "pycocoevalcap-1.2 (normalized text)",
    }
    path = run_dir / "eval" / f"{settings_hash(settings)}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "path": str(path)}, False
    if not dist_info().is_main:  # captions are cheap: rank 0 alone
        return {"path": None, "rank": dist_info().rank}, False
    device = device or _default_device(dist_info())
    net, _, train_cfg = load_trained(cfg, device)
    metrics, examples = caption_metrics_of_run(net, train_cfg, cfg, run_dir, device)
    return write_caption_record(path, settings, metrics, step, examples), True
