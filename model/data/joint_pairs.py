"""Caption data for joint runs: the run's tokenizer and its (image, caption) pairs.

A joint run's tokenizer is built from its training captions at the first start and stored as
run_dir/tokenizer.json; later starts, sampling and captioning read that file, so a run always
decodes with the vocabulary it was trained with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from core.config.datasets import CAPTION_DATASETS, CAPTIONED_IMAGES
from core.config.sections import DataConfig
from core.errors import UserError
from model.data.captions import CaptionData, load_caption_data
from model.data.sources import to_float
from model.data.tokenizers import (
    Tokenizer,
    build_tokenizer,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
)

TOKENIZER_FILE = "tokenizer.json"
DIGIT_CAPTION_DATASETS = tuple(CAPTIONED_IMAGES)  # digits_captions, mnist_captions


def is_caption_data(data_cfg: DataConfig) -> bool:
    """Whether `data_cfg` names a dataset of images with captions (a joint run)."""
    return data_cfg.name in CAPTION_DATASETS


def max_text_len(data_cfg: DataConfig) -> int:
    """Text positions of the model (BOS and EOS included): data.max_text_len."""
    return int(data_cfg.max_text_len)


def run_tokenizer(data_cfg: DataConfig, run_dir: Path, write: bool) -> Tokenizer:
    """run_dir/tokenizer.json, or a new one from the training captions (written if `write`)."""
    path = Path(run_dir) / TOKENIZER_FILE
    if path.exists():
        return load_tokenizer(path)
    captions = [c for caps in load_caption_data(data_cfg, "train").captions for c in caps]
    tok = build_tokenizer(str(data_cfg.tokenizer), captions)
    if write:
        save_tokenizer(tok, path)
    return tok


def saved_tokenizer(run_dir: Path) -> Tokenizer:
    """The tokenizer a joint run was trained with."""
    path = Path(run_dir) / TOKENIZER_FILE
    if not path.exists():
        raise UserError(f"{path} is missing: this joint run has not started training yet")
    return load_tokenizer(path)


class CaptionPairs(Dataset):
    """Every (image, caption) pair of a split once per epoch: x in [-1, 1], caption ids (T,)."""

    flip = False  # a mirrored image no longer matches words such as "slanted right"

    def __init__(self, data: CaptionData, tok: Tokenizer, max_len: int):
        pairs = [(i, c) for i, caps in enumerate(data.captions) for c in caps]
        if not pairs:
            raise UserError("the caption dataset is empty (no image has a caption)")
        self.data = data
        self.image_index = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        self.tokens = encode_batch(tok, [c for _, c in pairs], max_len)  # (pairs, T)

    def __len__(self) -> int:
        return len(self.image_index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(self.data.images[self.image_index[i]]), self.tokens[i]

    def get_batch(
        self, idx: torch.Tensor, flips: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in [-1, 1] and their caption ids (B, T) for pair indices idx."""
        return to_float(self.data.images[self.image_index[idx]]), self.tokens[idx]
