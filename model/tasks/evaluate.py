"""`cfh sample` and `cfh evaluate`: every eval task's samples, scored into run_dir/eval/<hash>.json.

The eval tasks (`eval.task`) meet here: generate and t2i draw samples (model/evaluation/
inference.py), inpaint, outpaint and swap edit real images (model/tasks/editing.py), caption
scores captions (model/tasks/captioning.py). Rank 0's log lines go to the run's log.txt.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from core.choices import EDIT_TASKS
from core.config import RunConfig, read_run_config, typed
from core.config.datasets import check_eval_extractor
from core.io import atomic_write_json, now_iso, owner_lock
from core.progress import run_log
from model.evaluation.inference import DRAWS, Draw, draw_samples, eval_settings
from model.evaluation.metrics import compute_metrics
from model.evaluation.run_io import (
    default_device,
    load_samples,
    load_trained,
    resolve_checkpoint,
    run_dir,
    settings_hash,
)
from model.tasks.captioning import caption_metrics_of_run, caption_settings, write_caption_record
from model.tasks.editing import task_samples
from model.training.checkpoint import skipped_for, step_of
from model.training.distributed import dist_info
from model.training.loggers import log_eval_record

log = logging.getLogger("cfh.inference")  # the logger name `cfh.inference: wrote eval record`

# eval.task -> how its samples are drawn (eval.task=caption draws no images)
TASK_DRAWS: dict[str, Draw] = {**DRAWS, **dict.fromkeys(EDIT_TASKS, task_samples)}


def sample_run(cfg: RunConfig, device: torch.device | None = None) -> dict | None:
    """Draw cfg.sample.num samples of eval.task (reused if already drawn with these settings).

    Ranks split the samples (model.evaluation.inference.draw_samples); rank 0 returns the
    samples' metadata, the other ranks None. Rank 0's log lines (progress included) go to the
    run's log.txt.
    """
    cfg = typed(cfg)
    folder = run_dir(cfg)
    with run_log(folder / "log.txt", enabled=dist_info().is_main):
        return draw_samples(cfg, folder, device, TASK_DRAWS)


def evaluate_run(cfg: RunConfig, device: torch.device | None = None) -> dict:
    """Sample (or reuse samples) and score them; write and return run_dir/eval/<hash>.json.

    Rank 0's log lines go to the run's log.txt; a new record's metrics also go to TensorBoard
    when the run was trained with train.loggers holding tensorboard (model.training.loggers).
    """
    cfg = typed(cfg)
    folder = run_dir(cfg)
    with run_log(folder / "log.txt", enabled=dist_info().is_main):
        record, new = _evaluate_run(cfg, folder, device)
        if new and record.get("path"):
            log_eval_record(folder, read_run_config(folder / "config.yaml"), record)
            log.info("wrote eval record %s", record["path"])
    return record


def _evaluate_run(cfg: RunConfig, folder: Path, device: torch.device | None) -> tuple[dict, bool]:
    """(the eval record, whether it was written now)."""
    ckpt = resolve_checkpoint(folder, cfg.sample.ckpt)
    step = step_of(ckpt)
    train_cfg = read_run_config(folder / "config.yaml")
    if cfg.eval.task == "caption":
        return _evaluate_captions(cfg, folder, step, device)
    check_eval_extractor(train_cfg.data, cfg.eval)
    settings = eval_settings(cfg, step, train_cfg.data)
    path = folder / "eval" / f"{settings_hash(settings)}.json"
    if path.exists():
        record = json.loads(path.read_text())
        return {**record, "path": str(path)}, False
    skipped = skipped_for(folder, ckpt) if cfg.sample.ckpt == "latest" else []
    with record_lock(path, folder):
        if path.exists():  # written by the process that held the lock just before
            return {**json.loads(path.read_text()), "path": str(path)}, False
        return _score(cfg, folder, device, train_cfg, settings, step, skipped, path), True


def record_lock(path: Path, folder: Path) -> AbstractContextManager[None]:
    """`eval/.<hash>.lock`: one process writes an eval record (rank 0; the others draw their
    samples share only); the same evaluation started again meanwhile is refused."""
    return owner_lock(
        path.with_name(f".{path.stem}.lock"),
        f"eval record {path.name} of run_dir={folder}",
        "cfh evaluate",
        enabled=dist_info().is_main,
    )


def _score(
    cfg: RunConfig,
    folder: Path,
    device: torch.device | None,
    train_cfg: RunConfig,
    settings: dict,
    step: int,
    skipped: list[dict],
    path: Path,
) -> dict:
    """Draw (or reuse) the samples, score them, write the record at `path` (rank 0)."""
    drawn = draw_samples(cfg, folder, device, TASK_DRAWS, wait=True)
    if drawn is None:  # not rank 0: this rank's share of the samples is written, rank 0 scores
        return {"path": None, "rank": dist_info().rank}
    images, labels = load_samples(drawn["dir"])
    sizes = cfg.eval.fid_inf_sizes
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
        fid_inf=bool(cfg.eval.fid_inf),
        fid_inf_sizes=None if sizes is None else [int(s) for s in sizes],
    )
    record = {
        "settings": settings,
        "metrics": {**metrics, "sample_img_per_s": drawn["sample_img_per_s"]},
        "ckpt_step": step,
        "ckpt_skipped": skipped,  # newer checkpoints found damaged: [{path, reason}]
        "samples": drawn["dir"],
        "reference": None if cfg.eval.reference is None else str(cfg.eval.reference),
        "created": now_iso(),
    }
    atomic_write_json(path, record)
    return {**record, "path": str(path)}


def _evaluate_captions(
    cfg: RunConfig, folder: Path, step: int, device: torch.device | None
) -> tuple[dict, bool]:
    """eval.task=caption: the eval record of captions of the eval split (model.tasks.captioning)."""
    settings = {
        **caption_settings(cfg, step),
        "task": "caption",
        "split": str(cfg.eval.split),
        "num_images": int(cfg.sample.num),
        "scorer": "pycocoevalcap-1.2 (normalized text)",
    }
    path = folder / "eval" / f"{settings_hash(settings)}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "path": str(path)}, False
    if not dist_info().is_main:  # captions are cheap: rank 0 alone
        return {"path": None, "rank": dist_info().rank}, False
    device = device or default_device()
    with record_lock(path, folder):
        net, _, train_cfg = load_trained(cfg, device)
        metrics, examples = caption_metrics_of_run(net, train_cfg, cfg, folder, device)
        return write_caption_record(path, settings, metrics, step, examples), True
