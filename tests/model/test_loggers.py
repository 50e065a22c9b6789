"""train.loggers=[jsonl,tensorboard]: the event file holds metrics.jsonl's scalars once per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from core.errors import UserError
from core.io import read_jsonl
from harness.config.compose import load_config
from model.training.checkpoint import checkpoint_path, remove_checkpoint
from model.training.loggers import eval_tag, log_eval_record, tensorboard_dir
from model.training.trainer import train

TINY = [
    "model=T",
    "data=digits",
    "train.batch_size=16",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.keep_checkpoints=10",
    "train.lr=1e-3",
    "train.ar.mode=decay",
    "train.loggers=[jsonl,tensorboard]",
]


def _scalars(run: Path) -> EventAccumulator:
    acc = EventAccumulator(str(tensorboard_dir(run)), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def test_event_file_equals_metrics_jsonl_after_a_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(load_config([*TINY, f"run_dir={run}", "train.steps=4"]))
    # as if the job died after logging steps 3-4 but before their checkpoint: resume at 2
    remove_checkpoint(checkpoint_path(run, 4))
    train(load_config([*TINY, f"run_dir={run}", "train.steps=4"]))
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    acc = _scalars(run)
    keys = [k for k in rows[0] if k != "step" and rows[0][k] is not None]
    assert {"loss", "lr", "grad_norm", "img_per_s", "mfu"} <= set(keys)
    assert sorted(acc.Tags()["scalars"]) == sorted(f"train/{k}" for k in keys)
    for key in keys:
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [1, 2, 3, 4], key
        # TensorBoard stores float32; the values are metrics.jsonl's, rounded to that
        assert [e.value for e in events] == [float(np.float32(r[key])) for r in rows], key
    # the resumed writer asked TensorBoard to drop the first attempt's steps >= 3
    files = sorted(tensorboard_dir(run).glob("events.out.tfevents.*"))
    assert len(files) == 2
    starts = [
        e.step
        for e in EventFileLoader(str(files[1])).Load()
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [3]


def test_jsonl_only_writes_no_event_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(load_config([*TINY[:-1], f"run_dir={run}", "train.steps=2"]))
    assert len(read_jsonl(run / "metrics.jsonl")) == 2
    assert not tensorboard_dir(run).exists()


def test_loggers_without_jsonl_are_refused() -> None:
    with pytest.raises(UserError, match="train.loggers.*must hold jsonl"):
        load_config(["train.loggers=[tensorboard]"])
    with pytest.raises(UserError, match="train.loggers"):
        load_config(["train.loggers=[jsonl,mlflow]"])


def test_eval_record_metrics_go_to_tensorboard(tmp_path: Path) -> None:
    record = {
        "settings": {"s_eval": 4, "extractor": "classifier", "cfg": 1.5, "num_samples": 200},
        "metrics": {"fid": 12.5, "kid": 0.01, "class_acc": None, "skipped": "x", "ok": True},
        "ckpt_step": 300,
    }
    train_cfg = {"train": {"loggers": ["jsonl", "tensorboard"]}}
    log_eval_record(tmp_path, train_cfg, record)
    tag = eval_tag(record["settings"])
    assert tag == "S4_classifier_cfg1.5_n200"
    acc = _scalars(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == [f"eval/{tag}/fid", f"eval/{tag}/kid"]
    (event,) = acc.Scalars(f"eval/{tag}/fid")
    assert (event.step, event.value) == (300, 12.5)
    other = tmp_path / "plain"
    log_eval_record(other, {"train": {"loggers": ["jsonl"]}}, record)
    log_eval_record(other, {"train": {}}, record)  # a run folder from before train.loggers
    assert not tensorboard_dir(other).exists()
