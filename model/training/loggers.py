"""Where training metrics go (`train.loggers`): metrics.jsonl always, TensorBoard on request.

metrics.jsonl is the source of truth (reports, `cfh status`, resume all read it). With
`train.loggers=[jsonl,tensorboard]` rank 0 also writes every numeric value of each metrics row
as the scalar `train/<key>` at its step, and every numeric metric of an eval record as
`eval/<setting>/<metric>` at the record's checkpoint step, into event files under
`run_dir/tensorboard/` (torch.utils.tensorboard's SummaryWriter). A resumed run opens its writer
with `purge_step` = the resumed step + 1, so TensorBoard drops what the interrupted attempt
logged after that checkpoint, as the trainer cuts metrics.jsonl back: every step appears once.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from core.io import append_jsonl

TENSORBOARD_DIR = "tensorboard"
FLUSH_S = 30  # seconds between event-file flushes (SummaryWriter's default is 120)


def tensorboard_dir(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's TensorBoard event files."""
    return Path(run_dir) / TENSORBOARD_DIR


def _writer(run_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    return SummaryWriter(
        log_dir=str(tensorboard_dir(run_dir)), purge_step=purge_step, flush_secs=FLUSH_S
    )


def _scalars(values: dict) -> dict[str, float]:
    """The finite numbers of a row or metrics dict (no bools, strings, None or dicts)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class TrainLoggers:
    """The training metrics sinks of one run: metrics.jsonl, and TensorBoard when asked."""

    def __init__(
        self, run_dir: str | os.PathLike, names: Any, resume_step: int = 0, enabled: bool = True
    ) -> None:
        self.run_dir = Path(run_dir)
        self.names = tuple(str(n) for n in names)
        self.enabled = enabled  # rank 0 only
        self.tb = None
        if enabled and "tensorboard" in self.names:
            self.tb = _writer(self.run_dir, purge_step=resume_step + 1 if resume_step else None)

    def log(self, row: dict) -> None:
        """One metrics row: appended to metrics.jsonl, and its scalars to TensorBoard."""
        if not self.enabled:
            return
        append_jsonl(self.run_dir / "metrics.jsonl", row)
        if self.tb is not None:
            step = int(row["step"])
            for key, value in _scalars(row).items():
                if key != "step":
                    self.tb.add_scalar(f"train/{key}", value, step)

    def flush(self) -> None:
        """Write buffered events to disk (at checkpoints: a resume continues from there)."""
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def eval_tag(settings: dict) -> str:
    """A readable TensorBoard name of an eval setting: task, S_eval, extractor, cfg, samples."""
    parts = []
    task = settings.get("task", "generate")
    if task != "generate":
        parts.append(str(task))
    if settings.get("s_eval") is not None:
        parts.append(f"S{settings['s_eval']}")
    if settings.get("extractor"):
        parts.append(str(settings["extractor"]))
    cfg = settings.get("cfg")
    if cfg is not None and float(cfg) != 1.0:
        parts.append(f"cfg{float(cfg):g}")
    n = settings.get("num_samples", settings.get("num_images"))
    if n is not None:
        parts.append(f"n{n}")
    return "_".join(parts) or "eval"


def log_eval_record(run_dir: str | os.PathLike, train_cfg: Any, record: dict) -> None:
    """Write an eval record's numeric metrics to TensorBoard when the run logs there."""
    loggers = _get(train_cfg, "train", "loggers") or ("jsonl",)
    if "tensorboard" not in [str(n) for n in loggers]:
        return
    tag = eval_tag(record.get("settings", {}))
    step = int(record.get("ckpt_step") or 0)
    writer = _writer(run_dir)
    try:
        for key, value in _scalars(record.get("metrics", {})).items():
            writer.add_scalar(f"eval/{tag}/{key}", value, step)
    finally:
        writer.close()


def _get(cfg: Any, *keys: str) -> Any:
    """cfg.a.b for a DictConfig or dict, None where a key is missing (old run folders)."""
    for key in keys:
        try:
            cfg = cfg.get(key)
        except AttributeError:
            return None
        if cfg is None:
            return None
    return cfg
