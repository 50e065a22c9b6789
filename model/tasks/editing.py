"""Zero-shot in-context editing (reference section 11): inpainting, outpainting, class swap.

A model trained only for class-conditional generation edits real images with no retraining: the
known tokens go in as clean context (cached once, like earlier AR groups), and the tokens of the
region are generated in any order, split into any groups (model/sampling.py `generate`).

Regions (`edit.region`) name the tokens to *generate*; every other token is kept bitwise:

    center                 the centre box, half the side in each direction (a quarter of the area)
    left_half right_half top_half bottom_half   (on an odd grid a half is the smaller part)
    all                    every token (plain generation; refused for swap)
    none                   no token (the output is the input)
    box:r0:c0:r1:c1        token-grid rows r0..r1-1 and columns c0..c1-1 (half-open)
    pixels:y0:x0:y1:x1     pixel rows y0..y1-1, columns x0..x1-1 (half-open); every token that
                           touches the box (latent runs: pixels of the decoded image)
Commas work too (box:r0,c0,r1,c1) but must be quoted on the command line, where hydra would read
them as a sweep.

Orders (`edit.order`): `nearest` generates the tokens closest to the known ones first (Euclidean
distance on the token grid, ties in seeded random order); random, raster, block_raster and
dilated are the generation orders of model/ar.py restricted to the region.

Eval tasks (`eval.task`, model/inference.py): inpaint regenerates the centre box, outpaint the
right half, swap the centre box under another class; inputs are the first sample.num images of
eval.split (cycled), the order is sample.order and the groups min(sample.ar_steps, region size).
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso
from model.data.sources import build_dataset, center_crop_arr, image_source_cfg, read_latent_meta
from model.method.ar import ORDERS, equal_group_sizes, token_order
from model.method.diffusion import Diffusion, Sampler, make_sampler
from model.method.network import CausalFusion
from model.method.noise import NoiseSource, SampleNoise, uniform
from model.method.sampling import generate

TASKS = ("inpaint", "outpaint", "swap")
EDIT_ORDERS = ("nearest", *ORDERS)
REGION_NAMES = ("center", "left_half", "right_half", "top_half", "bottom_half", "all", "none")
REGION_FORMS = f"{', '.join(REGION_NAMES)}, box:r0:c0:r1:c1 (token grid), pixels:y0:x0:y1:x1"
TASK_REGIONS = {"inpaint": "center", "outpaint": "right_half", "swap": "center"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_TILES = 100  # image_grid_png lays out at most 100 images


# --------------------------------------------------------------------------------------------
# regions and orders


def _box(grid: int, r0: int, c0: int, r1: int, c1: int) -> torch.Tensor:
    """(grid*grid,) bool: True on rows r0..r1-1, columns c0..c1-1."""
    m = torch.zeros(grid, grid, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m.flatten()


def parse_region(spec: Any, grid: int, pixels: int, key: str = "edit.region") -> torch.Tensor:
    """The tokens a region spec names, as a (grid*grid,) bool mask in raster order.

    `pixels` is the image side in pixels (for `pixels:` boxes). UserError for anything else.
    """
    if not isinstance(spec, str):
        raise UserError(f"{key}={spec!r} must be a string; allowed: {REGION_FORMS}")
    half, quarter = grid // 2, grid // 4
    named = {
        "center": (quarter, quarter, quarter + (grid + 1) // 2, quarter + (grid + 1) // 2),
        "left_half": (0, 0, grid, half),
        "right_half": (0, grid - half, grid, grid),
        "top_half": (0, 0, half, grid),
        "bottom_half": (grid - half, 0, grid, grid),
        "all": (0, 0, grid, grid),
        "none": (0, 0, 0, 0),
    }
    if spec in named:
        return _box(grid, *named[spec])
    num, sep = r"\s*(-?\d+)\s*", "[:,]"  # ':' needs no quoting on a hydra command line
    m = re.fullmatch(rf"(box|pixels):{num}{sep}{num}{sep}{num}{sep}{num}", spec)
    if m is None:
        raise UserError(f"{key}={spec!r} is not a region; allowed: {REGION_FORMS}")
    kind, (a0, b0, a1, b1) = m.group(1), map(int, m.groups()[1:])
    side, unit = (grid, "token grid") if kind == "box" else (pixels, "image in pixels")
    r0, c0, r1, c1 = ("r0", "c0", "r1", "c1") if kind == "box" else ("y0", "x0", "y1", "x1")
    if not (0 <= a0 <= a1 <= side and 0 <= b0 <= b1 <= side):
        raise UserError(
            f"{key}={spec!r} is outside the {side}x{side} {unit} or reversed; "
            f"{kind}:{r0}:{c0}:{r1}:{c1} needs 0 <= {r0} <= {r1} <= {side} and "
            f"0 <= {c0} <= {c1} <= {side} (half-open)"
        )
    if kind == "box":
        return _box(grid, a0, b0, a1, b1)
    step = pixels // grid  # pixels per token side; a token touching the box is in the region
    if a0 == a1 or b0 == b1:
        return _box(grid, 0, 0, 0, 0)
    return _box(grid, a0 // step, b0 // step, -(-a1 // step), -(-b1 // step))


def _batched(region: torch.Tensor, batch: int) -> torch.Tensor:
    """A (L,) or (B, L) bool region as (B, L), checking that every sample has the same size."""
    region = region.expand(batch, -1) if region.dim() == 1 else region
    counts = region.sum(1)
    if region.shape[0] != batch or (counts != counts[0]).any():
        raise UserError("a batched region must be (B, L) with the same token count per sample")
    return region


def nearest_order(region: torch.Tensor, grid: int, generator: NoiseSource = None):
    """(B, M) long: the region's positions, nearest to a known (non-region) token first.

    Distance is Euclidean on the token grid; ties (and a region with no known token) fall in a
    seeded random order, so equally near tokens are not always taken in raster order.
    """
    B, L = region.shape
    rc = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1)
    rc = rc.reshape(L, 2).float()
    dist = torch.zeros(B, L)
    for b in range(B):
        known = rc[~region[b].cpu()]
        if len(known):
            dist[b] = torch.cdist(rc, known).min(1).values
    dist[~region.cpu()] = float("inf")  # known tokens sort last and are dropped below
    tie = uniform(generator, (B, L)).argsort(1).cpu()  # random first
    _, by_dist = dist.gather(1, tie).sort(dim=1, stable=True)  # then by distance, ties kept random
    order = tie.gather(1, by_dist)
    M = int(region[0].sum())
    return order[:, :M].to(region.device)


def region_positions(
    region: torch.Tensor,
    order: str,
    grid: int,
    batch: int,
    generator: NoiseSource = None,
    block: int = 4,
) -> torch.Tensor:
    """(B, M) long: the region's positions in generation order (`order` in EDIT_ORDERS)."""
    region = _batched(region, batch)
    if order == "nearest":
        return nearest_order(region, grid, generator)
    if order not in ORDERS:
        raise UserError(
            f"edit.order={order!r} is not allowed; choose one of: {', '.join(EDIT_ORDERS)}"
        )
    full = token_order(order, batch, grid, generator, block).to(region.device)  # (B, L)
    keep = region.gather(1, full)  # (B, L): is the k-th position of the order in the region?
    return full[keep].view(batch, -1)


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


def pixel_resolution(train_cfg: Any) -> int:
    """Side in pixels of the images a run shows (latent runs: the encoded source images)."""
    data = train_cfg.data
    if data.name != "latents":
        return int(data.resolution)
    return int(image_source_cfg(data)["resolution"])


def _eval_dataset(train_cfg: Any, split: str):
    """The run's dataset (model space: pixels or scaled latents) of `split`, unflipped."""
    data = OmegaConf.to_container(train_cfg.data, resolve=True)
    return build_dataset({**data, "flip": False}, split)  # type: ignore[dict-item]


def _gather(ds: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (x, y) by index from an in-memory or a file-backed dataset."""
    if hasattr(ds, "get_batch"):
        return ds.get_batch(idx)
    items = [ds[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _read_image(path: Path, channels: int, resolution: int) -> torch.Tensor:
    """An image file as (C, H, W) floats in [-1, 1], center-cropped/resized (ADM crop)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = center_crop_arr(img.convert("L" if channels == 1 else "RGB"), resolution)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"edit.input={str(path)!r} is not a readable image: {e}") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0  # PIL: read-only


def _vae_for(train_cfg: Any, path: Path):
    """The VAE of a latent run (meta.json's vae.path), or a UserError saying why there is none."""
    root = Path(str(train_cfg.data.root)).expanduser()
    meta = read_latent_meta(root)
    vae_path = Path(meta.get("vae", {}).get("path", ""))
    vae_path = vae_path if vae_path.is_absolute() else root / vae_path
    why = None
    if not vae_path.is_dir():
        why = f"its VAE folder {str(vae_path)!r} (meta.json vae.path) is missing"
    else:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            why = "diffusers is not installed (pip install -e '.[vae]')"
    if why:
        raise UserError(
            f"edit.input={str(path)!r} is an image file, but this run trains on VAE latents and "
            f"{why}; give a dataset index instead"
        )
    from model.data.encode import load_vae

    return load_vae(str(vae_path)), float(meta["scale_factor"])


@torch.no_grad()
def _encode(pixels: torch.Tensor, train_cfg: Any, path: Path) -> torch.Tensor:
    """Pixels in [-1, 1] -> the run's model space (scaled VAE latents for latent runs)."""
    if train_cfg.data.name != "latents":
        return pixels
    vae, scale = _vae_for(train_cfg, path)
    want = int(vae.config.in_channels)
    x = pixels.expand(-1, want, -1, -1) if pixels.shape[1] == 1 else pixels
    return vae.encode(x).latent_dist.mode().float() * scale  # the posterior mean, as cfh encode


def load_inputs(
    inputs: list[Any], train_cfg: Any, split: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(x in model space (N, C, H, W), labels (N,) with -1 for files, names) of edit.input."""
    ds = None
    xs, ys, names = [], [], []
    data = train_cfg.data
    for item in inputs:
        if isinstance(item, int):
            ds = ds if ds is not None else _eval_dataset(train_cfg, split)
            if not 0 <= item < len(ds):
                raise UserError(
                    f"edit.input={item} is not an index of the {split} split "
                    f"({len(ds)} images); allowed: 0..{len(ds) - 1} or an image file"
                )
            x, y = _gather(ds, torch.tensor([item]))
            xs.append(x[0])
            ys.append(int(y[0]))
            names.append(f"{split}[{item}]")
            continue
        path = Path(item).expanduser()
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise UserError(
                f"edit.input={item!r} is neither a dataset index nor an existing image file; "
                f"allowed: an int (index into eval.split={split}) or a {'/'.join(IMAGE_SUFFIXES)}"
            )
        if data.name == "latents":
            source = image_source_cfg(data)
            channels, res = int(source["channels"]), int(source["resolution"])
        else:
            channels, res = int(data.channels), int(data.resolution)
        pixels = _read_image(path, channels, res)[None]
        xs.append(_encode(pixels, train_cfg, path)[0])
        ys.append(-1)
        names.append(str(path))
    return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), names


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
    train_cfg: DictConfig


def _edit_inputs(value: Any) -> list[Any]:
    """edit.input (checked by harness.schema) as a list of split indices and image paths."""
    return list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else [value]


def _run_config(cfg: DictConfig) -> DictConfig:
    """The trained run's config (run_dir/config.yaml); UserError when there is no run."""
    if not cfg.run_dir:
        raise UserError("run_dir is required: point it at a trained run folder")
    path = Path(str(cfg.run_dir)) / "config.yaml"
    if not path.is_file():
        raise UserError(f"run_dir={cfg.run_dir}: no trained run there (no config.yaml)")
    return OmegaConf.load(path)  # type: ignore[return-value]


def check_edit_config(cfg: DictConfig) -> EditSpec:
    """The edit.* keys against the run (read from run_dir/config.yaml); UserError.

    Types and ranges were checked with the rest of the config (harness.schema); what depends
    on the run (its classes, its token grid) is checked here.
    """
    e = cfg.edit
    samples = int(e.samples)
    inputs = _edit_inputs(e.input)
    tiles = len(inputs) * (2 + samples)
    if tiles > MAX_TILES:
        raise UserError(
            f"edit.input has {len(inputs)} images x (2 + edit.samples={samples}) columns = "
            f"{tiles} tiles; at most {MAX_TILES} fit in one grid"
        )
    train_cfg = _run_config(cfg)
    K = int(train_cfg.data.num_classes)
    label = e["class"]
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


def _sampler(cfg: DictConfig, train_cfg: Any) -> Sampler:
    """The run's sampler (clip x0 only for pixels, as sample_run)."""
    pixels = train_cfg.data.name != "latents"
    return make_sampler(Diffusion(), str(cfg.sample.sampler), int(cfg.sample.steps), clip_x0=pixels)


def _cfg_interval(cfg: DictConfig) -> tuple[float, float] | None:
    ci = cfg.sample.cfg_interval
    return tuple(ci) if ci is not None else None  # type: ignore[return-value]


def mask_images(region: torch.Tensor, grid: int, pixels: int, channels: int) -> np.ndarray:
    """(1, H, W, C) uint8: white on the generated region, black on the kept tokens."""
    m = region.view(grid, grid).to(torch.uint8) * 255
    step = pixels // grid
    m = m.repeat_interleave(step, 0).repeat_interleave(step, 1)  # (H, W)
    return m[None, :, :, None].expand(1, -1, -1, channels).numpy()


@torch.no_grad()
def edit_run(
    cfg: DictConfig, spec: EditSpec | None = None, device: torch.device | None = None
) -> dict:
    """`cfh edit`: edit the inputs, write input | mask | results rows as a PNG; return paths."""
    from model.evaluation.inference import (
        decode_to_pixels,
        image_grid_png,
        load_trained,
        settings_hash,
        to_uint8,
    )

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
    n, k = len(x), spec.samples
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
    sampler = _sampler(cfg, train_cfg)
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
            cfg_interval=_cfg_interval(cfg),
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
    out_dir = Path(str(cfg.run_dir)) / "edits" / settings_hash(settings)
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
    cfg: DictConfig,
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
    from model.evaluation.inference import decode_to_pixels, sample_progress, to_uint8

    task, split = str(cfg.eval.task), str(cfg.eval.split)
    if task not in TASKS:
        raise UserError(f"eval.task={task!r} is not an editing task; allowed: {', '.join(TASKS)}")
    region = parse_region(TASK_REGIONS[task], net.cfg.grid, pixel_resolution(train_cfg))
    ds = _eval_dataset(train_cfg, split)
    num = int(cfg.sample.num)
    indices = range(num) if indices is None else indices
    index = torch.arange(indices.start, indices.stop)
    K = int(train_cfg.data.num_classes)
    sampler = _sampler(cfg, train_cfg)
    chunks, labels, sizes = [], [], []
    bs = int(cfg.sample.batch_size)
    t0 = time.perf_counter()
    bar = sample_progress(len(index))
    for start in range(0, len(index), bs):
        idx = index[start : start + bs]
        x, y = _gather(ds, idx % len(ds))  # more samples than images: the split again, new noise
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
            cfg_interval=_cfg_interval(cfg),
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
