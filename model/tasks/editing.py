"""Zero-shot in-context editing (reference section 11): inpainting, outpainting, class swap.

A model trained only for class-conditional generation edits real images with no retraining: the
known tokens go in as clean context (cached once, like earlier AR groups), and the tokens of the
region are generated in any order, split into any groups (model/method/sampling.py `generate`).
Regions and orders: model/tasks/regions.py; the input images: model/tasks/inputs.py.

Eval tasks (`eval.task`, model/tasks/evaluate.py): inpaint regenerates the centre box, outpaint
the right half, swap the centre box under another class; inputs are the first sample.num images
of eval.split (cycled), the order is sample.order and the groups min(sample.ar_steps, region
size).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.choices import EDIT_TASKS
from core.config import RunConfig, read_run_config, typed
from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso, owner_lock
from model.evaluation.run_io import (
    decode_to_pixels,
    guidance_interval,
    image_grid_png,
    load_trained,
    run_sampler,
    sample_progress,
    settings_hash,
    to_uint8,
)
from model.method.ar import equal_group_sizes
from model.method.diffusion import Sampler
from model.method.network import CausalFusion
from model.method.noise import NoiseSource, SampleNoise
from model.method.sampling import generate
from model.tasks.inputs import eval_dataset, gather, input_list, load_inputs, pixel_resolution
from model.tasks.regions import REGION_FORMS, TASK_REGIONS, parse_region, region_positions

MAX_TILES = 100  # image_grid_png lays out at most 100 images


# --------------------------------------------------------------------------------------------
# generation given clean context


@torch.no_grad()
def fill(
    model: CausalFusion,
    sampler: Sampler,
    images: torch.Tensor,
    y: torch.Tensor,
    positions: torch.Tensor,
    group_sizes: list[int],
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
    generator: NoiseSource = None,
) -> torch.Tensor:
    """Regenerate the tokens at `positions` (B, M), in that order and in `group_sizes` groups.

    Every other token of `images` (B, C, H, W) is clean context and comes back bitwise; with M = 0
    the output is a copy of the input. Any ordered list and any partition works, e.g. the bottom
    half in groups [11, 11, 10] given the top half.
    """
    net = getattr(model, "module", model)
    B, L = images.shape[0], net.num_tokens
    if positions.shape[1] == 0:
        return images.clone()
    generated = torch.zeros(B, L, dtype=torch.bool, device=positions.device)
    generated.scatter_(1, positions, True)
    known = torch.arange(L, device=positions.device).expand(B, L)[~generated].view(B, -1)
    return generate(
        model,
        sampler,
        y,
        positions,
        group_sizes,
        cfg_scale=cfg_scale,
        cfg_interval=cfg_interval,
        generator=generator,
        context=images,
        context_positions=known,
    )


@torch.no_grad()
def edit_images(
    model: CausalFusion,
    sampler: Sampler,
    images: torch.Tensor,
    y: torch.Tensor,
    region: torch.Tensor,
    ar_steps: int = 1,
    order: str = "nearest",
    cfg_scale: float = 1.0,
    cfg_interval: tuple[float, float] | None = None,
    generator: NoiseSource = None,
    block: int = 4,
) -> tuple[torch.Tensor, list[int]]:
    """Regenerate `region` ((L,) or (B, L) bool) of `images` under labels `y`.

    The region's M tokens go in min(ar_steps, M) near-equal groups in `order`. Returns the
    edited images and the group sizes used ([] for an empty region: the output is the input).
    """
    net = getattr(model, "module", model)
    B = images.shape[0]
    positions = region_positions(region.to(images.device), order, net.cfg.grid, B, generator, block)
    M = positions.shape[1]
    sizes = equal_group_sizes(M, min(int(ar_steps), M)) if M else []
    out = fill(model, sampler, images, y, positions, sizes, cfg_scale, cfg_interval, generator)
    return out, sizes


def swap_labels(y: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Another class for every sample, cycling through all the others: y + 1 + index % (K - 1)."""
    if num_classes < 2:
        raise UserError(f"a class swap needs data.num_classes >= 2, not {num_classes}")
    return (y + 1 + index % (num_classes - 1)) % num_classes


# --------------------------------------------------------------------------------------------
# inputs


# --------------------------------------------------------------------------------------------
# cfh edit


@dataclass
class EditSpec:
    """A validated `cfh edit` request."""

    task: str
    region_spec: str
    region: torch.Tensor  # (L,) bool, the tokens to generate
    order: str
    label: int | None  # the class to generate under (None: each input's own / unconditional)
    inputs: list[Any]
    samples: int
    out: Path | None
    train_cfg: RunConfig


def _run_config(cfg: RunConfig) -> RunConfig:
    """The trained run's config (run_dir/config.yaml); UserError when there is no run."""
    if not cfg.run_dir:
        raise UserError("run_dir is required: point it at a trained run folder")
    path = Path(str(cfg.run_dir)) / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir={cfg.run_dir}: no trained run there (no config.yaml)")
    return read_run_config(path)


def check_edit_config(cfg: RunConfig) -> EditSpec:
    """The edit.* keys against the run (read from run_dir/config.yaml); UserError.

    Types and ranges were checked with the rest of the config (core.config.validate); what depends
    on the run (its classes, its token grid) is checked here.
    """
    e = cfg.edit
    samples = int(e.samples)
    inputs = input_list(e.input)
    tiles = len(inputs) * (2 + samples)
    if tiles > MAX_TILES:
        raise UserError(
            f"edit.input has {len(inputs)} images x (2 + edit.samples={samples}) columns = "
            f"{tiles} tiles; at most {MAX_TILES} fit in one grid"
        )
    train_cfg = _run_config(cfg)
    K = int(train_cfg.data.num_classes)
    label = e.class_
    if label is not None and not 0 <= label < K:
        raise UserError(f"edit.class={label} is outside the run's classes; allowed: 0..{K - 1}")
    if e.task == "swap" and label is None:
        raise UserError(f"edit.task=swap needs edit.class=<the new class, 0..{K - 1}>")
    spec = e.region if e.region is not None else TASK_REGIONS[e.task]
    grid = int(train_cfg.data.resolution) // int(train_cfg.data.patch_size)
    region = parse_region(spec, grid, pixel_resolution(train_cfg))
    if e.task == "swap" and bool(region.all()):
        raise UserError(
            f"edit.region={spec!r} covers the whole image: a class swap keeps some of it; "
            f"allowed: a smaller region ({REGION_FORMS})"
        )
    out = Path(str(e.out)).expanduser() if e.out is not None else None
    return EditSpec(e.task, spec, region, str(e.order), label, inputs, samples, out, train_cfg)


def mask_images(region: torch.Tensor, grid: int, pixels: int, channels: int) -> np.ndarray:
    """(1, H, W, C) uint8: white on the generated region, black on the kept tokens."""
    m = region.view(grid, grid).to(torch.uint8) * 255
    step = pixels // grid
    m = m.repeat_interleave(step, 0).repeat_interleave(step, 1)  # (H, W)
    return m[None, :, :, None].expand(1, -1, -1, channels).numpy()


@torch.no_grad()
def edit_run(
    cfg: RunConfig, spec: EditSpec | None = None, device: torch.device | None = None
) -> dict:
    """`cfh edit`: edit the inputs, write input | mask | results rows as a PNG; return paths."""
    cfg = typed(cfg)
    spec = spec or check_edit_config(cfg)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = str(cfg.eval.split)
    x, y_in, names = load_inputs(spec.inputs, spec.train_cfg, split)  # before the model loads
    net, step, train_cfg = load_trained(cfg, device)
    K = int(train_cfg.data.num_classes)
    if spec.label is not None:
        y = torch.full_like(y_in, spec.label)
    else:  # the input's own class; files have none, so they are edited unconditionally
        y = torch.where(y_in >= 0, y_in, torch.full_like(y_in, K))
    k = spec.samples
    settings = {
        "task": spec.task,
        "region": spec.region_spec,
        "order": spec.order,
        "class": spec.label,
        "inputs": [str(i) for i in spec.inputs],
        "split": split,
        "samples": k,
        "s_eval": int(cfg.sample.ar_steps),
        "cfg": float(cfg.sample.cfg),
        "cfg_interval": list(cfg.sample.cfg_interval) if cfg.sample.cfg_interval else None,
        "steps": int(cfg.sample.steps),
        "sampler": str(cfg.sample.sampler),
        "seed": int(cfg.sample.seed),
        "ema": bool(cfg.sample.ema),
        "ckpt_step": step,
    }
    out_dir = Path(str(cfg.run_dir)) / "edits" / settings_hash(settings)
    where = f"edit {out_dir.name} of run_dir={cfg.run_dir}"
    with owner_lock(out_dir / ".lock", where, "cfh edit"):  # the same edit twice: one writes
        return _edit(cfg, spec, net, train_cfg, (x, y, names), settings, out_dir)


def _edit(
    cfg: RunConfig,
    spec: EditSpec,
    net: CausalFusion,
    train_cfg: RunConfig,
    inputs: tuple[torch.Tensor, torch.Tensor, list[str]],
    settings: dict,
    out_dir: Path,
) -> dict:
    """Edit the inputs (images, labels, names), write grid.png, edits.npz and settings.json."""
    x, y, names = inputs
    n, k, device = len(x), spec.samples, next(net.parameters()).device
    sampler = run_sampler(cfg, train_cfg)
    xb = x.to(device).repeat_interleave(k, 0)  # (n k, C, H, W): k results per input
    yb = y.to(device).repeat_interleave(k, 0)
    outs, sizes = [], []
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    for start in range(0, len(xb), bs):
        stop = min(start + bs, len(xb))  # sample j * k + r is result r of input j
        gen = SampleNoise.for_indices(int(cfg.sample.seed), range(start, stop))
        out, sizes = edit_images(
            net,
            sampler,
            xb[start : start + bs],
            yb[start : start + bs],
            spec.region,
            ar_steps=int(cfg.sample.ar_steps),
            order=spec.order,
            cfg_scale=float(cfg.sample.cfg),
            cfg_interval=guidance_interval(cfg),
            generator=gen,
            block=int(train_cfg.train.order_block),
        )
        outs.append(out)
    seconds = time.perf_counter() - t0
    results = to_uint8(decode_to_pixels(torch.cat(outs), train_cfg))  # (n k, H, W, C)
    shown = to_uint8(decode_to_pixels(x.to(device), train_cfg))  # (n, H, W, C)
    grid, res = net.cfg.grid, shown.shape[1]
    mask = mask_images(spec.region, grid, res, shown.shape[-1])
    rows = [
        np.concatenate([shown[j : j + 1], mask, results[j * k : (j + 1) * k]]) for j in range(n)
    ]
    tiles = np.concatenate(rows)
    png = spec.out or out_dir / "grid.png"
    atomic_write_bytes(png, image_grid_png(tiles, ncol=2 + k))
    buf = io.BytesIO()
    np.savez(buf, inputs=shown, results=results, labels=yb.cpu().numpy(), region=spec.region)
    atomic_write_bytes(out_dir / "edits.npz", buf.getvalue())
    meta = {
        "settings": settings,
        "names": names,
        "labels": y.tolist(),
        "region_tokens": int(spec.region.sum()),
        "group_sizes": sizes,
        "seconds": seconds,
        "grid": str(png),
        "created": now_iso(),
    }
    atomic_write_json(out_dir / "settings.json", meta)
    return {**meta, "dir": str(out_dir)}


# --------------------------------------------------------------------------------------------
# eval tasks


@torch.no_grad()
def task_samples(
    net: CausalFusion,
    train_cfg: Any,
    cfg: RunConfig,
    device: torch.device,
    indices: range | None = None,
) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Edited real images of eval.split for eval.task (inpaint | outpaint | swap).

    Samples `indices` of sample.num (default: all); sample i edits split image i % len(split)
    with noise stream i. Returns (uint8 NHWC images, int64 labels they were generated under,
    seconds, details).
    Labels are the inputs' own classes, or for swap each input's new class (y + 1 + i % (K-1)),
    so the classifier's class_acc scores the swap.
    """
    task, split = str(cfg.eval.task), str(cfg.eval.split)
    if task not in EDIT_TASKS:
        raise UserError(
            f"eval.task={task!r} is not an editing task; allowed: {', '.join(EDIT_TASKS)}"
        )
    region = parse_region(TASK_REGIONS[task], net.cfg.grid, pixel_resolution(train_cfg))
    ds = eval_dataset(train_cfg, split)
    num = int(cfg.sample.num)
    indices = range(num) if indices is None else indices
    index = torch.arange(indices.start, indices.stop)
    K = int(train_cfg.data.num_classes)
    sampler = run_sampler(cfg, train_cfg)
    chunks, labels, sizes = [], [], []
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    bar = sample_progress(len(index))
    for start in range(0, len(index), bs):
        idx = index[start : start + bs]
        x, y = gather(ds, idx % len(ds))  # more samples than images: the split again, new noise
        y = swap_labels(y, idx, K) if task == "swap" else y
        gen = SampleNoise.for_indices(int(cfg.sample.seed), idx.tolist())
        out, sizes = edit_images(
            net,
            sampler,
            x.to(device),
            y.to(device),
            region,
            ar_steps=int(cfg.sample.ar_steps),
            order=str(cfg.sample.order),
            cfg_scale=float(cfg.sample.cfg),
            cfg_interval=guidance_interval(cfg),
            generator=gen,
            block=int(train_cfg.train.order_block),
        )
        chunks.append(decode_to_pixels(out, train_cfg))
        labels.append(y)
        bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - t0
    details = {
        "region": TASK_REGIONS[task],
        "region_tokens": int(region.sum()),
        "group_sizes": sizes,
        "inputs": f"{split}[i % {len(ds)}] for i < {num}",
    }
    return to_uint8(torch.cat(chunks)), torch.cat(labels).numpy(), seconds, details
