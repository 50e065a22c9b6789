"""The trainer: one process, or DDP over ranks (gloo on CPU, nccl on GPUs); exact resume.

`train(cfg)` trains into cfg.run_dir. Running it again on the same folder resumes from the
latest readable checkpoint and continues bit-for-bit (every rank's RNG states and data position
are saved); a raised `train.steps` continues training. Rank 0 holds `run_dir/.run.lock` for
the whole run (core.io.run_lock): a second process on the same folder is refused at once.
SIGUSR2/SIGTERM reaching any rank (from the start, start-up included) make every rank save one
checkpoint at the same step boundary (model/training/signals.py), mark the run `interrupted`,
call the caller's `on_preempt`, then hand over to the handler installed before (the harness's,
which requeues the job and says so in status.json), or exit with code 124. SIGINT marks it
`interrupted` where it stands, an exception `failed` with the reason. A resume needs the world
size the checkpoint was written with. A step's parts live in model/training/step.py, the
factories in build.py, the resume identity check in identity.py.

The loop never waits for the device between log steps: the next batch is made (and copied) by
a prefetching thread while a step runs (model/data/stream.py), a step's finiteness check stays
on the device and skips a non-finite step there (model/training/step.py), and the values are
read at log steps. So `train.max_nonfinite` is checked at log steps and before each checkpoint:
a run notices its non-finite steps at most `train.log_every` steps late (the skipped steps
changed nothing). With several ranks the signal flag is reduced every SIGNAL_EVERY steps
(model/training/signals.py), at the same steps on every rank.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from core.config import RunConfig, config_yaml, typed
from core.config.datasets import train_split
from core.config.identity import config_identity
from core.config.sections import TrainConfig
from core.errors import UserError
from core.io import (
    RUN_LOCK,
    atomic_write_text,
    cut_jsonl,
    record_failure,
    run_lock,
    update_status,
)
from core.progress import Progress, run_log
from core.provenance import code_version
from model.data.captions import load_caption_data
from model.data.joint_pairs import CaptionPairs, is_caption_data, max_text_len, run_tokenizer
from model.data.sources import build_dataset, on_device
from model.data.stream import BatchStream
from model.method.joint import JointObjective
from model.method.network import count_params, train_flops_per_image
from model.training.build import load_optimizer, model_from_config, pick_device
from model.training.checkpoint import (
    checkpoint_path,
    checkpoint_paths,
    load_latest_checkpoint,
    rank_states,
    remove_checkpoint,
    remove_stale_temps,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.training.distributed import (
    CommTimer,
    DistInfo,
    RankPresence,
    barrier,
    gather_to_all,
    init_distributed,
    reduce_max,
    reduce_max_,
)
from model.training.identity import check_run_dir
from model.training.loggers import TrainLoggers, check_loggers
from model.training.perf import machine_info, matmul_peak_flops
from model.training.signals import SIGNAL_EVERY, SignalCatcher
from model.training.step import Learner, compile_forward, draw_split, make_learner, train_step
from model.training.window import Window

log = logging.getLogger("cfh.train")
PREFETCH = 2  # batches made ahead of the step that runs

# the caller's hook after a preemption checkpoint (rank 0 only): (run_dir, step)
OnPreempt = Callable[[Path, int], None]

__all__ = ["TrainingFailed", "model_from_config", "pick_device", "train"]


class TrainingFailed(RuntimeError):
    """Training cannot go on (non-finite loss); the run is marked failed."""


def train(
    cfg: RunConfig, *, num_threads: int | None = None, on_preempt: OnPreempt | None = None
) -> dict:
    """Train (or resume) the run in cfg.run_dir; return the final summary.

    `num_threads`: torch CPU threads when training on the CPU (the harness passes the CPUs its
    scheduler allotted). `on_preempt(run_dir, step)`: called on rank 0 after the checkpoint a
    signal asked for, before the signal is handed over. A config given as a mapping (a test's,
    an old caller's) is typed here, once.
    """
    cfg = typed(cfg)
    if not cfg.run_dir:
        raise UserError("run_dir is required: cfh train run_dir=PATH ...")
    check_loggers(cfg.train.loggers)  # a missing optional package, before the run folder is touched
    run_dir = Path(str(cfg.run_dir))
    info = init_distributed(float(cfg.train.dist_timeout_s))
    if cfg.train.batch_size % info.world:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by the world size "
            f"{info.world}; use a multiple of {info.world}"
        )
    device = pick_device(cfg, info)
    if device.type == "cpu" and num_threads:
        torch.set_num_threads(int(num_threads))
    # one writer: rank 0 holds run_dir/.run.lock until the end; the signals of a stop are
    # caught from here on, so one during start-up is acted on at the first step boundary
    with (
        _owning(run_dir, info, device),
        RankPresence(run_dir, info) as presence,
        SignalCatcher() as signals,
    ):
        check_run_dir(cfg, run_dir)
        if info.is_main:
            atomic_write_text(run_dir / "config.yaml", config_yaml(cfg))
        with run_log(run_dir / "log.txt", enabled=info.is_main):  # rank 0 writes the run's log
            if info.is_main:
                identity = config_identity(cfg.to_dict())  # what config.yaml trains, recorded
                update_status(
                    run_dir, state="running", phase="train", error=None, config_identity=identity
                )
            barrier(info)  # the folder exists and an earlier failure is cleared before any work
            try:
                return _train(cfg, run_dir, info, device, on_preempt, signals)
            except Exception as e:
                # the first rank to fail names the cause; the others then fail on its missing
                # collectives; a rank that died without a word (killed) is named by the others
                record_failure(run_dir, e, info.rank, info.world, lost=presence.lost(e))
                if isinstance(e, TrainingFailed):
                    log.error("%s", e)
                raise
            except KeyboardInterrupt:
                if info.is_main:  # Ctrl-C: stopped where it was; a rerun resumes from a checkpoint
                    update_status(run_dir, state="interrupted", error="interrupted by SIGINT")
                raise


@contextlib.contextmanager
def _owning(run_dir: Path, info: DistInfo, device: torch.device) -> Iterator[None]:
    """Rank 0 holds the run lock (core.io.run_lock) for the whole run; when another process
    holds it, every rank stops at once (the others would wait on rank 0's collectives)."""
    refusal: UserError | None = None
    with contextlib.ExitStack() as stack:
        if info.is_main:
            try:
                stack.enter_context(run_lock(run_dir, "cfh train"))
            except UserError as e:
                refusal = e
        if reduce_max(int(refusal is not None), info, device):
            raise refusal or UserError(f"run_dir={run_dir}: rank 0 could not take {RUN_LOCK}")
        yield


def _train(
    cfg: RunConfig,
    run_dir: Path,
    info: DistInfo,
    device: torch.device,
    on_preempt: OnPreempt | None,
    signals: SignalCatcher,
) -> dict:
    t_cfg = cfg.train
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    np.random.seed(cfg.seed * 1000 + info.rank)
    random.seed(cfg.seed * 1000 + info.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    joint = is_caption_data(cfg.data)
    tokenizer = None
    if joint:
        # every rank builds the same vocabulary; rank 0 writes it (before its first checkpoint)
        tokenizer = run_tokenizer(cfg.data, run_dir, write=info.is_main)
    net = model_from_config(cfg, tokenizer.vocab_size if tokenizer else 0).to(device)
    learner = make_learner(cfg, net, device, joint=joint)
    if tokenizer is not None:
        data = load_caption_data(cfg.data, "train")
        dataset = CaptionPairs(data, tokenizer, max_text_len(cfg.data))
    else:
        dataset = build_dataset(cfg.data, split=train_split(cfg.data))
        if cfg.data.on_device:
            dataset = on_device(dataset, device)
    stream = BatchStream(
        dataset,
        t_cfg.batch_size // info.world,
        seed=int(cfg.seed),
        rank=info.rank,
        world=info.world,
        num_workers=int(t_cfg.num_workers),
        pin_memory=device.type == "cuda",
        device=device,
        prefetch=PREFETCH,
    )

    step = 0
    saved_at = 0  # the step of the last checkpoint this run wrote or loaded (step 0: a seed)
    if info.is_main and remove_stale_temps(run_dir):
        log.info("removed the temp files of an interrupted checkpoint write")
    barrier(info)
    ckpt = load_latest_checkpoint(run_dir)
    if ckpt is not None:
        per_rank = rank_states(ckpt, info.world, run_dir)
        net.load_state_dict(ckpt["model"])
        learner.ema.load_state_dict(ckpt["ema"])
        load_optimizer(learner.opt, ckpt["optimizer"])
        stream.load_state_dict(per_rank["data"][info.rank])
        set_rng_state(per_rank["rng"][info.rank])
        step = saved_at = int(ckpt["step"])
        log.info("resumed from step %d", step)
    if info.is_main:
        dropped = cut_jsonl(run_dir / "metrics.jsonl", step)  # steps after it are logged again
        if dropped:
            log.info("metrics.jsonl: dropped %d rows after step %d", dropped, step)
        update_status(  # code and machine: what a report names behind the numbers
            run_dir, state="running", phase="train", step=step, total_steps=int(t_cfg.steps),
            code=code_version(), machine=machine_info(device),
        )  # fmt: skip
        log.info("params=%d device=%s world=%d", count_params(net), device, info.world)
    # the gradient all-reduces' time (metrics.jsonl comm_frac), measured on gloo (CPU) only
    comm = CommTimer(info.world) if info.world > 1 and device.type == "cpu" else None
    learner.forward = _wrap(net, cfg, info, device, joint, comm)
    peak = matmul_peak_flops(str(device), torch.bfloat16 if learner.bf16 else torch.float32)

    def save(at_step: int) -> None:
        # one checkpoint per step: a signal right after a periodic save writes nothing again
        nonlocal saved_at
        if saved_at == at_step:
            return
        # every rank sends its RNG states and data position (a collective), rank 0 writes
        per_rank = gather_to_all({"rng": rng_state(device), "data": stream.state_dict()}, info)
        if info.is_main:
            _save_checkpoint(run_dir, cfg, learner, per_rank, at_step)
        barrier(info)
        saved_at = at_step

    def all_ranks(bad: torch.Tensor) -> torch.Tensor:
        return reduce_max_(bad, info)  # on the device: NCCL does not wait for it on the host

    window = Window()
    bar = Progress(int(t_cfg.steps), "train", log, unit="step", initial=step, enabled=info.is_main)
    config = cfg.to_dict()  # what config.yaml holds, for wandb
    sinks = TrainLoggers(
        run_dir, t_cfg.loggers, resume_step=step, enabled=info.is_main, config=config
    )
    t_start = time.perf_counter()
    with (
        sinks,  # closes them; on an exception the wandb run is marked failed
        contextlib.closing(bar),
        contextlib.closing(stream),
    ):
        while step < t_cfg.steps:
            # the same answer on every rank, asked at the same steps; with several ranks it is a
            # collective that waits for the device, so only every SIGNAL_EVERY steps
            ask = info.world == 1 or step % SIGNAL_EVERY == 0
            caught = reduce_max(signals.code(), info, device) if ask else 0
            if caught:
                save(step)
                sinks.close()  # the events so far are on disk before the job goes
                if info.is_main:  # a requeue, if one follows, is the caller's to say (on_preempt)
                    name = signal.Signals(signals.signal_of(caught)).name
                    why = f"stopped by {name} at step {step} (checkpoint saved)"
                    update_status(run_dir, state="interrupted", step=step, error=why)
                    if on_preempt is not None:
                        on_preempt(run_dir, step)
                signals.hand_over(signals.signal_of(caught))
            t0 = time.perf_counter()
            x, y = stream.next_batch()  # made while the last step ran, on the device
            t1 = time.perf_counter()
            split = draw_split(cfg, step, info.rank, x.shape[0], device)
            out = train_step(learner, x, y, split, step, all_ranks if info.world > 1 else None)
            seq_len = split.seq_len + (y.shape[1] if joint else 0)
            window.add(
                step, out.loss, out.grad_norm, out.ok, x.shape[0] * info.world, seq_len,
                t1 - t0, time.perf_counter() - t1, out.parts,
            )  # fmt: skip
            step += 1
            if step % t_cfg.log_every == 0 or step == t_cfg.steps:
                flops = train_flops_per_image(net.cfg, window.mean_seq_len())
                comm_s = comm.take() if comm is not None else None
                row = window.flush(step, out.lr, info, flops, peak, device, t_start, comm_s)
                if learner.graphs:
                    row["compiled_graphs"] = len(learner.graphs)
                    row["compile_s"] = sum(learner.graphs.values())
                sinks.log(row)
                _fail_if_nonfinite(window, t_cfg)
                if info.is_main:
                    update_status(run_dir, step=step, loss=row["loss"])
                    if row["loss"] is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.0f}")
            bar.update(1)
            if step % t_cfg.ckpt_every == 0 and step < t_cfg.steps:
                t_save = time.perf_counter()
                _fail_if_nonfinite(window, t_cfg)  # no checkpoint after an unnoticed failure
                save(step)
                sinks.flush()
                window.exclude(time.perf_counter() - t_save)
    save(step)
    summary = {"step": step, "params": count_params(net), "wall_s": time.perf_counter() - t_start}
    if info.is_main:
        update_status(run_dir, state="completed", phase="train", step=step)
        log.info("finished at step %d", step)
    return summary


def _fail_if_nonfinite(window: Window, t_cfg: TrainConfig) -> None:
    """TrainingFailed once more than train.max_nonfinite steps were non-finite."""
    if window.count_nonfinite() <= t_cfg.max_nonfinite:
        return
    at, loss = window.first_nonfinite or (-1, float("nan"))
    raise TrainingFailed(
        f"non-finite loss or gradients ({loss}) at step {at}, {window.nonfinite} such steps; "
        f"lower train.lr (now {t_cfg.lr}) or raise train.grad_clip; "
        f"train.max_nonfinite={t_cfg.max_nonfinite} tolerated"
    )


def _wrap(
    net: torch.nn.Module,
    cfg: RunConfig,
    info: DistInfo,
    device: torch.device,
    joint: bool,
    comm: CommTimer | None = None,
) -> torch.nn.Module:
    """The module the loss calls: net, in JointObjective, DDP (with `comm` as its
    communication hook: the same sums, timed) and torch.compile as asked."""
    out: torch.nn.Module = net
    if joint:
        out = JointObjective(net)  # both losses in one forward, as DDP needs
    if info.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        out = torch.nn.parallel.DistributedDataParallel(out, device_ids=ids)
        if comm is not None:
            out.register_comm_hook(None, comm.hook)
    if cfg.train.compile:
        out = compile_forward(out, cfg)
    return out


def _save_checkpoint(
    run_dir: Path, cfg: RunConfig, learner: Learner, per_rank: list[dict], step: int
) -> None:
    state = {
        "model": learner.net.state_dict(),
        "ema": learner.ema.state_dict(),
        "optimizer": learner.opt.state_dict(),
        "step": step,
        "world_size": len(per_rank),
        "rng": [r["rng"] for r in per_rank],  # index = rank
        "data": [r["data"] for r in per_rank],
        "config": cfg.to_dict(),
    }
    save_checkpoint(checkpoint_path(run_dir, step), state)
    for old in checkpoint_paths(run_dir)[: -int(cfg.train.keep_checkpoints)]:
        remove_checkpoint(old)
    log.info("checkpoint at step %d", step)
