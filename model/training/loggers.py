"""Where training metrics go (`train.loggers`): metrics.jsonl always, TensorBoard, wandb on request.

metrics.jsonl is the source of truth (reports, `cfh status`, resume all read it). With
`train.loggers=[jsonl,tensorboard]` rank 0 also writes every numeric value of each metrics row
as the scalar `train/<key>` at its step, and every numeric metric of an eval record as
`eval/<setting>/<metric>` at the record's checkpoint step, into event files under
`run_dir/tensorboard/` (torch.utils.tensorboard's SummaryWriter). A resumed run opens its writer
with `purge_step` = the resumed step + 1, so TensorBoard drops what the interrupted attempt
logged after that checkpoint, as the trainer cuts metrics.jsonl back: every step appears once.

`wandb` (the optional extra causalfusion-harness[wandb]) gets the same `train/<key>` scalars at
the same steps and the resolved config (config.yaml's), in one wandb run per run folder: its id
is stored in `run_dir/wandb/run_id`, so a resume or requeue continues that run. wandb has no
purge_step; online, a resumed run's re-logged steps (after the checkpoint it resumed from) are
ignored by wandb as not past its last step, and the resume is exact, so their values are the
kept ones. Offline each attempt writes its own `run_dir/wandb/offline-run-*` folder under the
same id. An eval record's metrics go to the run's summary (`eval/<setting>/<metric>`, with
`eval/<setting>/ckpt_step`): logged as history they would move wandb's step past steps a later
resume still has to log. The run is offline (files under run_dir/wandb/, nothing sent) unless
the user chose WANDB_MODE or is logged in (WANDB_API_KEY, or a .netrc entry for the wandb host).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import netrc
import os
import secrets
import string
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from core.config import RunConfig, typed
from core.errors import DiskFull, UserError, disk_full
from core.io import append_jsonl, atomic_write_text

TENSORBOARD_DIR = "tensorboard"
FLUSH_S = 30  # seconds between event-file flushes (SummaryWriter's default is 120)
WANDB_DIR = "wandb"  # wandb.init(dir=run_dir) writes run_dir/wandb/
WANDB_ID_FILE = "run_id"  # in WANDB_DIR: the one wandb run id of this run folder
WANDB_INSTALL = "pip install 'causalfusion-harness[wandb]'"
WANDB_PROJECT = "cfh"  # where WANDB_PROJECT is not set

log = logging.getLogger("cfh.train")


def tensorboard_dir(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's TensorBoard event files."""
    return Path(run_dir) / TENSORBOARD_DIR


def _writer(run_dir: str | os.PathLike, purge_step: int | None = None) -> Any:
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

    _quiet_event_thread()
    with tensorboard_writes(run_dir):
        return SummaryWriter(
            log_dir=str(tensorboard_dir(run_dir)), purge_step=purge_step, flush_secs=FLUSH_S
        )


@contextlib.contextmanager
def tensorboard_writes(run_dir: str | os.PathLike) -> Iterator[None]:
    """A full disk under TensorBoard's writer as core.io's DiskFull, naming the event folder
    (SummaryWriter raises a bare OSError with no file name, from its writer thread's failure)."""
    try:
        yield
    except OSError as e:
        full = disk_full(e, tensorboard_dir(run_dir))
        if full is None:
            raise
        raise full from e


def _quiet_event_thread() -> None:
    """Keep the traceback of TensorBoard's writer thread off stderr when the disk is full.

    That thread re-raises its write error to print it, and then hands it to the next
    add_scalar or flush of the main thread, which fails with it (tensorboard_writes: one line).
    Any other error of any thread still goes to the hook that was there before.
    """
    before = threading.excepthook
    if getattr(before, "cfh_event_thread", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__name__ == "_AsyncWriterThread" and disk_full(args.exc_value):
            return
        before(args)

    hook.cfh_event_thread = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _scalars(values: dict) -> dict[str, float]:
    """The finite numbers of a row or metrics dict (no bools, strings, None or dicts)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def check_loggers(names: Any) -> None:
    """UserError when a logger's optional package is missing (before the run writes anything)."""
    if "wandb" in [str(n) for n in names] and importlib.util.find_spec("wandb") is None:
        raise UserError(f"train.loggers holds wandb but wandb is not installed: {WANDB_INSTALL}")


def wandb_dir(run_dir: str | os.PathLike) -> Path:
    """The folder of a run's wandb files (its run id, the offline runs)."""
    return Path(run_dir) / WANDB_DIR


def wandb_mode() -> str | None:
    """The wandb mode: offline unless the user chose one (WANDB_MODE) or is logged in; None lets
    wandb choose (online). Nothing leaves the machine unless asked for."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return None
    return None if _netrc_has_wandb() else "offline"


def _netrc_has_wandb() -> bool:
    """Whether `wandb login` stored a key for the wandb host (wandb's own lookup: $NETRC first)."""
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_run(run_dir: Path, config: dict | None = None) -> Any:
    """This run folder's wandb run, started or continued (the id stored at its first start)."""
    import wandb  # optional, and about a second to import: only when train.loggers holds it

    folder = wandb_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    id_file = folder / WANDB_ID_FILE
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:  # random, not a hash of the path: outputs/try on two machines are two runs
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        atomic_write_text(id_file, run_id + "\n")
    return wandb.init(
        dir=str(run_dir),
        id=run_id,
        resume="allow",
        mode=wandb_mode(),
        project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT,
        name=run_dir.resolve().name,
        config=config,
        # a run of its own beside any the caller has open; log.txt already holds the console
        reinit="create_new",
        settings=wandb.Settings(console="off"),
    )


class TrainLoggers:
    """The training metrics sinks of one run: metrics.jsonl, and TensorBoard and wandb when
    asked. `config`: the resolved config, for wandb. A context manager: on an exception the
    wandb run is marked failed."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        names: Any,
        resume_step: int = 0,
        enabled: bool = True,
        config: dict | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.names = tuple(str(n) for n in names)
        self.enabled = enabled  # rank 0 only
        self.tb = None
        self.wandb = None
        if enabled and "tensorboard" in self.names:
            self.tb = _writer(self.run_dir, purge_step=resume_step + 1 if resume_step else None)
        if enabled and "wandb" in self.names:
            self.wandb = _wandb_run(self.run_dir, config)

    def __enter__(self) -> TrainLoggers:
        return self

    def __exit__(self, exc_type: type | None, *_: Any) -> None:
        self.close(exit_code=0 if exc_type is None else 1)

    def log(self, row: dict) -> None:
        """One metrics row: appended to metrics.jsonl, and its scalars to TensorBoard/wandb."""
        if not self.enabled:
            return
        append_jsonl(self.run_dir / "metrics.jsonl", row)
        step = int(row["step"])
        scalars = {f"train/{k}": v for k, v in _scalars(row).items() if k != "step"}
        if self.tb is not None:
            with tensorboard_writes(self.run_dir):
                for tag, value in scalars.items():
                    self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def flush(self) -> None:
        """Write buffered events to disk (at checkpoints: a resume continues from there).
        wandb needs none: its service process writes each row as it comes."""
        if self.tb is not None:
            with tensorboard_writes(self.run_dir):
                self.tb.flush()

    def close(self, exit_code: int = 0) -> None:
        """Flush and close the event file; finish the wandb run (exit_code 1: failed).

        On a failure (exit_code 1) an event file that cannot be written is given up: the
        error that failed the run is the one to report, not TensorBoard's echo of a full disk."""
        tb, self.tb = self.tb, None
        run, self.wandb = self.wandb, None
        try:
            if tb is not None:
                with tensorboard_writes(self.run_dir):
                    tb.close()
        except DiskFull:
            if exit_code == 0:
                raise
        finally:
            if run is not None:
                run.finish(exit_code=exit_code)


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


def log_eval_record(run_dir: str | os.PathLike, train_cfg: RunConfig | dict, record: dict) -> None:
    """Write an eval record's numeric metrics to TensorBoard and wandb when the run logs there."""
    names = [str(n) for n in typed(train_cfg).train.loggers]
    tag = eval_tag(record.get("settings", {}))
    step = int(record.get("ckpt_step") or 0)
    metrics = _scalars(record.get("metrics", {}))
    if "tensorboard" in names:
        writer = _writer(run_dir)
        with tensorboard_writes(run_dir):
            try:
                for key, value in metrics.items():
                    writer.add_scalar(f"eval/{tag}/{key}", value, step)
            finally:
                writer.close()
    if "wandb" in names:
        try:
            check_loggers(["wandb"])
        except UserError as e:  # the eval record is written; only its copy to wandb is missing
            log.warning("eval metrics not sent to wandb: %s", e)
            return
        run = _wandb_run(Path(run_dir))
        try:
            run.summary.update({f"eval/{tag}/{k}": v for k, v in metrics.items()})
            run.summary[f"eval/{tag}/ckpt_step"] = step
        finally:
            run.finish()
