"""Synthetic run folders in the run-folder contract, for the reports tests and
benchmarks/bench_report.py (test-only: the wheel ships no fake data).

The FID model follows the shape of the paper's Table 2 (reference section 10): a fixed S_train
is best at S_eval = S_train and degrades away from it; random S (uniform/decay) keeps every
S_eval usable; AR weighting 2->1 helps a little; seeds add noise.
"""

from __future__ import annotations

import copy
import json
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from core.hashing import json_hash
from core.io import atomic_write_bytes, atomic_write_json, atomic_write_text

CONFIG_TEMPLATE: dict[str, Any] = {
    "model": {"name": "T", "num_cond_tokens": 4, "pos_embed": "sincos", "attention": "sdpa"},
    "data": {
        "name": "digits",
        "root": None,
        "resolution": 8,
        "channels": 1,
        "num_classes": 10,
        "patch_size": 1,
        "flip": False,
        "latent_scale": 1.0,
    },
    "seed": 0,
    "run_dir": None,
    "train": {
        "steps": 300,
        "batch_size": 64,
        "lr": 1.0e-4,
        "ar": {"mode": "decay", "steps": 1, "decay": 0.9},
        "order": "random",
        "order_block": 4,
        "loss": {
            "ar_weight": {"max": 1.0, "min": 1.0, "schedule": "linear"},
            "noise_weighting": "uniform",
            "min_snr_gamma": 5.0,
        },
        "log_every": 10,
    },
}
SIZES = {"T": 0.8e6, "XS": 4.8e6, "S": 21e6, "B": 85e6, "L": 300e6, "XL": 640e6}


def synthetic_fid(
    ar_mode: str,
    ar_steps: int,
    ar_decay: float,
    s_eval: int,
    w_max: float = 1.0,
    order: str = "random",
    seed: int = 0,
    model: str = "T",
) -> float:
    """A plausible FID for one training setting at one S_eval (deterministic per seed)."""
    if ar_mode == "fixed":
        gap = abs(math.log2(s_eval) - math.log2(ar_steps))
        fid = 14.0 + 2.0 * math.log2(ar_steps) + 40.0 * gap**1.6
    elif ar_mode == "uniform":
        fid = 21.0 + 1.3 * math.log2(s_eval)
    else:
        fid = 12.9 + 4.0 * (1.0 - ar_decay) * 10 + 3.2 * math.log2(s_eval) * (1.5 - ar_decay)
    fid -= 0.6 * min(w_max - 1.0, 1.0)  # AR weighting 2->1 helps a little
    fid += {"random": 0.0, "raster": 1.6, "block_raster": 1.8, "dilated": 2.6}.get(order, 0.0)
    fid *= 1.0 - 0.05 * math.log10(SIZES.get(model, 1e6) / 1e6)  # bigger models: a bit better
    key = repr((ar_mode, ar_steps, ar_decay, s_eval, w_max, order, seed, model)).encode()
    rng = np.random.default_rng(zlib.crc32(key))  # hash() is salted per process
    return float(fid * (1.0 + 0.03 * rng.standard_normal()))


def make_config(**over: Any) -> dict:
    """A resolved-config dict; keyword names are dotted keys with '__' for '.'."""
    cfg = copy.deepcopy(CONFIG_TEMPLATE)
    for key, value in over.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return cfg


def signature_of(axes: dict) -> str:
    """A short deterministic signature for a set of axis values (12 digits: never one the
    harness makes, whose signatures have 10)."""
    return json_hash(axes, 12, compact=False)


def write_run(
    root: str | os.PathLike,
    *,
    model: str = "T",
    ar_mode: str = "decay",
    ar_steps: int = 1,
    ar_decay: float = 0.9,
    order: str = "random",
    w_max: float = 1.0,
    w_min: float = 1.0,
    schedule: str = "linear",
    noise: str = "uniform",
    seed: int = 0,
    s_evals: tuple[int, ...] = (1, 4),
    ckpt_steps: tuple[int, ...] = (300,),
    train_steps: int = 300,
    state: str = "completed",
    log_every: int = 20,
    samples: bool = False,
    dataset: str = "digits",
) -> Path:
    """Write one run folder with config, point, status, metrics and eval jsons; return it."""
    axes = {
        "model": model,
        "train.ar.mode": ar_mode,
        "train.ar.steps": ar_steps,
        "train.ar.decay": ar_decay,
        "train.order": order,
        "train.loss.ar_weight.max": w_max,
        "train.loss.ar_weight.min": w_min,
        "train.loss.ar_weight.schedule": schedule,
        "train.loss.noise_weighting": noise,
        "seed": seed,
    }
    sig = signature_of(axes)
    run = Path(root) / "runs" / sig
    cfg = make_config(
        model__name=model,
        data__name=dataset,
        seed=seed,
        train__steps=train_steps,
        train__ar__mode=ar_mode,
        train__ar__steps=ar_steps,
        train__ar__decay=ar_decay,
        train__order=order,
        train__loss__ar_weight__max=w_max,
        train__loss__ar_weight__min=w_min,
        train__loss__ar_weight__schedule=schedule,
        train__loss__noise_weighting=noise,
        run_dir=str(run),
    )
    import yaml

    atomic_write_text(run / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    atomic_write_json(run / "point.json", {"signature": sig, "axes": axes})
    done = state == "completed"
    last = train_steps if done else train_steps // 2
    status = {
        "state": state,
        "phase": "done" if done else "train",
        "step": last,
        "total_steps": train_steps,
        "attempts": 1,
        "job_id": None,
        "error": "RuntimeError: loss is NaN at step 151\nTraceback ..."
        if state == "failed"
        else None,
        "log": str(run / "log.txt"),
    }
    atomic_write_json(run / "status.json", status)
    _write_metrics(run, model, last, log_every, seed)
    if done:
        evals = {}
        for step in ckpt_steps:
            for s in s_evals:
                fid = synthetic_fid(ar_mode, ar_steps, ar_decay, s, w_max, order, seed, model)
                fid *= 1.0 + 0.5 * (train_steps - step) / train_steps  # earlier ckpt: worse
                h = _write_eval(run, s, step, fid, samples)
                evals[f"k{h}"] = {"file": f"eval/{h}.json", "fid": fid, "s_eval": s}
        # like harness/launch/jobs.py: eval-point key -> eval file, and the points in point.json
        atomic_write_json(run / "status.json", {**status, "evals": evals})
        point = {"signature": sig, "axes": axes, "evals": [{"key": k} for k in evals]}
        atomic_write_json(run / "point.json", point)
    return run


def _write_metrics(run: Path, model: str, last: int, every: int, seed: int) -> None:
    """metrics.jsonl with a decaying loss and steady throughput after a slow first window."""
    rng = np.random.default_rng(seed)
    speed = 2e8 / SIZES.get(model, 1e6)
    lines = []
    for i, step in enumerate(range(every, last + 1, every)):
        img_s = speed * (0.4 if i == 0 else 1.0) * (1 + 0.02 * rng.standard_normal())
        lines.append(
            json.dumps(
                {
                    "step": step,
                    "loss": 0.2 + 0.8 * math.exp(-step / 80) + 0.01 * rng.standard_normal(),
                    "lr": 1e-4,
                    "grad_norm": 0.5,
                    "img_per_s": img_s,
                    "tokens_per_s": img_s * 100,
                    "mfu": 0.45 * img_s / speed,
                    "peak_mem_mb": 300 + SIZES.get(model, 1e6) / 1e5,
                    "wall_s": step * 64 / speed,
                }
            )
        )
    atomic_write_text(run / "metrics.jsonl", "\n".join(lines) + "\n")


def _write_eval(run: Path, s_eval: int, step: int, fid: float, samples: bool) -> str:
    """One eval json (and optionally a samples folder with a grid.png); its hash."""
    settings = {
        "s_eval": s_eval,
        "order": "random",
        "cfg": 1.0,
        "cfg_interval": None,
        "steps": 100,
        "sampler": "ddpm",
        "num_samples": 1000,
        "seed": 0,
        "ema": True,
        "ckpt_step": step,
        "task": "generate",
        "extractor": "classifier",
        "extractor_weights_hash": "abc123",
        "split": "test",
    }
    h = signature_of(settings)
    metrics = {
        "fid": fid,
        "kid": fid / 1000,
        "kid_std": fid / 20000,
        "precision": max(0.0, 0.9 - fid / 200),
        "recall": max(0.0, 0.8 - fid / 250),
        "class_acc": max(0.0, 0.97 - fid / 150),
        "sample_img_per_s": 40.0 / s_eval**0.2,
    }
    record = {"settings": settings, "metrics": metrics, "ckpt_step": step, "created": "2025-01-01"}
    atomic_write_json(run / "eval" / f"{h}.json", record)
    if samples:
        atomic_write_bytes(run / "samples" / h / "grid.png", _sample_png(s_eval))
        atomic_write_json(run / "samples" / h / "settings.json", {"settings": settings})
    return h


def _sample_png(seed: int) -> bytes:
    """A small noise image standing in for a sample grid."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((40, 80)) * 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_grid(root: str | os.PathLike, name: str, runs: list[Path]) -> Path:
    """A grid folder whose plan.json lists `runs` (signatures + axis values)."""
    points = []
    for run in runs:
        point = json.loads((run / "point.json").read_text())
        points.append(
            {"signature": run.name, "axes": point["axes"], "evals": point.get("evals", [])}
        )
    path = Path(root) / "grids" / name / "plan.json"
    atomic_write_json(path, {"grid": name, "points": points})
    return path
