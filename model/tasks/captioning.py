"""Captions from a joint run: `cfh caption` and eval.task=caption.

`cfh caption run_dir=R caption.input=[0,1,...]` captions images of eval.split and/or image
files and writes captions.json and sheet.png (each image with its caption) under
run_dir/captions/<settings hash>/. eval.task=caption captions the first min(sample.num, N)
images of eval.split and scores them against all of their reference captions: CIDEr, BLEU-4 and
ROUGE-L (pycocoevalcap's scorers, model/evaluation/caption_metrics.py), and for digit captions
caption_acc, the share of captions that name the image's digit.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import RunConfig
from core.errors import UserError
from core.io import atomic_write_bytes, atomic_write_json, now_iso
from model.data.captions import load_caption_data
from model.data.joint_pairs import DIGIT_CAPTION_DATASETS, is_caption_data, saved_tokenizer
from model.data.sources import to_float
from model.evaluation.caption_metrics import caption_accuracy, caption_scores
from model.evaluation.run_io import decode_to_pixels, load_trained, run_dir, settings_hash, to_uint8
from model.method.joint import caption_images
from model.method.noise import SampleNoise
from model.tasks.inputs import input_list, load_inputs

CAPTION_BATCH = 64


def caption_settings(cfg: RunConfig, ckpt_step: int) -> dict:
    """Everything that decides the captions of a run's checkpoint."""
    c = cfg.caption
    settings = {
        "method": str(c.method),
        "max_len": None if c.max_len is None else int(c.max_len),
        "ema": bool(cfg.sample.ema),
        "ckpt_step": ckpt_step,
    }
    if c.method == "beam":
        settings["beams"] = int(c.beams)
    if c.method == "nucleus":
        settings.update(top_p=float(c.top_p), seed=int(c.seed))
    return settings


def _check_joint(train_cfg: Any, what: str) -> None:
    if not is_caption_data(train_cfg.data):
        raise UserError(
            f"{what} needs a joint run (trained on data with captions); this run trained on "
            f"data={train_cfg.data.name}"
        )


def decode_captions(
    net: Any, tok: Any, x: torch.Tensor, cfg: RunConfig, indices: list[int]
) -> list[str]:
    """Captions (text) of images x (N, C, H, W) in model space, in batches; image k of the
    batch uses stream (caption.seed, indices[k]) for nucleus sampling."""
    c = cfg.caption
    out: list[str] = []
    for start in range(0, len(x), CAPTION_BATCH):
        rows = list(range(start, min(start + CAPTION_BATCH, len(x))))
        ids = caption_images(
            net,
            x[rows],
            max_len=None if c.max_len is None else int(c.max_len),
            method=str(c.method),
            beams=int(c.beams),
            top_p=float(c.top_p),
            generator=SampleNoise.for_indices(int(c.seed), [indices[r] for r in rows]),
        )
        out += [tok.decode(i) for i in ids]
    return out


def caption_run(cfg: RunConfig, device: torch.device | None = None) -> dict:
    """`cfh caption`: caption caption.input; write captions.json and sheet.png; return them."""
    folder = run_dir(cfg)
    device = device or torch.device("cpu")
    net, step, train_cfg = load_trained(cfg, device)
    _check_joint(train_cfg, "cfh caption")
    inputs = input_list(cfg.caption.input)
    x, labels, names = load_inputs(inputs, train_cfg, str(cfg.eval.split))
    settings = {**caption_settings(cfg, step), "inputs": names, "split": str(cfg.eval.split)}
    out = Path(str(cfg.caption.out)) if cfg.caption.out else None
    out = out or folder / "captions" / settings_hash(settings)
    t0 = time.perf_counter()
    captions = decode_captions(net, saved_tokenizer(folder), x.to(device), cfg, list(range(len(x))))
    seconds = time.perf_counter() - t0
    record = {
        "settings": settings,
        "captions": [{"input": n, "caption": c} for n, c in zip(names, captions, strict=True)],
        "seconds": seconds,
        "created": now_iso(),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "captions.json", record)
    pixels = to_uint8(decode_to_pixels(x, train_cfg))
    atomic_write_bytes(out / "sheet.png", caption_sheet_png(pixels, captions))
    return {**record, "dir": str(out), "sheet": str(out / "sheet.png")}


def caption_sheet_png(images: np.ndarray, captions: list[str], ncol: int = 4) -> bytes:
    """A PNG of uint8 NHWC images, each enlarged to 128 px with its caption underneath."""
    from PIL import Image, ImageDraw

    side, text_h, pad = 128, 40, 6
    rows = -(-len(images) // ncol)
    sheet = Image.new(
        "RGB", (ncol * (side + pad) + pad, rows * (side + text_h + pad) + pad), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for k, (img, caption) in enumerate(zip(images, captions, strict=True)):
        arr = img[..., 0] if img.shape[-1] == 1 else img
        tile = Image.fromarray(arr).convert("RGB").resize((side, side), Image.NEAREST)
        x0 = pad + (k % ncol) * (side + pad)
        y0 = pad + (k // ncol) * (side + text_h + pad)
        sheet.paste(tile, (x0, y0))
        draw.multiline_text((x0, y0 + side + 2), _wrap(caption, 22), fill="black", spacing=1)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _wrap(text: str, width: int) -> str:
    """Break `text` into lines of at most `width` characters at spaces (3 lines at most)."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[:3])


def caption_metrics_of_run(
    net: Any, train_cfg: Any, cfg: RunConfig, run_dir: Path, device: torch.device
) -> tuple[dict, list[dict]]:
    """eval.task=caption: caption the first min(sample.num, N) eval.split images, score them;
    (metrics, the first 8 captions with their references)."""
    _check_joint(train_cfg, "eval.task=caption")
    data = load_caption_data(train_cfg.data, str(cfg.eval.split))
    num = min(int(cfg.sample.num), len(data.captions))
    x = to_float(data.images[:num]).to(device)
    t0 = time.perf_counter()
    captions = decode_captions(net, saved_tokenizer(run_dir), x, cfg, list(range(num)))
    seconds = time.perf_counter() - t0
    scores = caption_scores(dict(enumerate(captions)), dict(enumerate(data.captions[:num])))
    metrics: dict[str, Any] = {**scores, "num_images": num, "caption_img_per_s": num / seconds}
    if train_cfg.data.name in DIGIT_CAPTION_DATASETS:
        metrics["caption_acc"] = caption_accuracy(captions, data.labels[:num].tolist())
    examples = [
        {"caption": c, "references": r}
        for c, r in zip(captions[:8], data.captions[:8], strict=True)
    ]
    return metrics, examples


def write_caption_record(
    path: Path, settings: dict, metrics: dict, step: int, examples: list[dict]
) -> dict:
    """The eval record of a caption evaluation (the eval/<hash>.json layout)."""
    record = {
        "settings": settings,
        "metrics": metrics,
        "ckpt_step": step,
        "examples": examples,
        "created": now_iso(),
    }
    atomic_write_json(path, record)
    return {**record, "path": str(path)}
