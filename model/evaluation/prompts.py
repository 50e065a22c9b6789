"""The prompts of text-to-image samples (eval.task=t2i): sample.prompt(s) or a split's captions.

Labels are the digit each prompt names (digit captions; -1 otherwise), for class_acc.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.config.sections import DataConfig
from core.errors import UserError
from model.data.captions import load_caption_data
from model.data.joint_pairs import DIGIT_CAPTION_DATASETS
from model.evaluation.caption_metrics import caption_digit


def split_prompts(data_cfg: DataConfig, split: str, num: int) -> tuple[list[str], torch.Tensor]:
    """`num` prompts from a split's captions (image i mod N's first caption) and their labels."""
    data = load_caption_data(data_cfg, split)
    n = len(data.captions)
    prompts = [data.captions[i % n][0] for i in range(num)]
    labels = torch.tensor([int(data.labels[i % n]) for i in range(num)], dtype=torch.long)
    return prompts, labels


def prompt_labels(prompts: list[str], data_cfg: DataConfig) -> torch.Tensor:
    """The digit a prompt names (digit datasets; -1 where none or another dataset)."""
    if data_cfg.name not in DIGIT_CAPTION_DATASETS:
        return torch.full((len(prompts),), -1, dtype=torch.long)
    digits = [caption_digit(p) for p in prompts]
    return torch.tensor([-1 if d is None else d for d in digits], dtype=torch.long)


def read_prompts(sample_cfg: Any, num: int) -> list[str] | None:
    """sample.prompt (one for all) or sample.prompts (a file, one per line, cycled); else None."""
    prompt, path = sample_cfg.prompt, sample_cfg.prompts
    if prompt is not None and path is not None:
        raise UserError("set sample.prompt or sample.prompts, not both")
    if prompt is not None:
        return [str(prompt)] * num
    if path is None:
        return None
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise UserError(f"sample.prompts={path!r}: no such file (one prompt per line)")
    lines = [line.strip() for line in file.read_text().splitlines() if line.strip()]
    if not lines:
        raise UserError(f"sample.prompts={path!r} has no prompts (one per line)")
    return [lines[i % len(lines)] for i in range(num)]
