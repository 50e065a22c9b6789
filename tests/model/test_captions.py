"""Image-caption data (model/data/captions.py): templated digits, Tux Paint stamps, jsonl."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import datasets as mchecks
from core.config.datasets import CAPTION_DATASETS, check_caption_config, stamps_root
from core.errors import UserError
from model.data import digit_captions as mdc
from model.data.arrays import digits_arrays
from model.data.captions import CaptionData, load_caption_data, write_captions_jsonl
from model.data.sources import build_dataset
from model.data.tokenizers import split_words

DIGITS = {"name": "digits_captions", "root": None, "resolution": 8, "channels": 1,
          "num_classes": 10, "patch_size": 1, "flip": False, "captions_per_image": 2,
          "tokenizer": "word", "max_text_len": 16}  # fmt: skip
STAMPS = {**DIGITS, "name": "stamps", "resolution": 32, "channels": 3, "num_classes": 1,
          "patch_size": 4, "max_text_len": 24}  # fmt: skip
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROPERTY = {"small", "large", "thin", "thinly", "thick", "thickly", "slanted", "upright"}


@pytest.fixture(scope="module")
def digits():
    return {s: load_caption_data(DIGITS, s) for s in ("train", "test")}


@pytest.fixture(scope="module")
def stamps():
    """Both stamps splits; skip where the package is missing, except under CI=true."""
    try:
        stamps_root()
    except UserError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the stamps are missing (scripts/install-stamps.sh): {e}")
        pytest.skip(f"tuxpaint-stamps-default is not installed: {e}")
    return {s: load_caption_data(STAMPS, s) for s in ("train", "test")}


def test_digits_images_and_split_are_data_digits(digits):
    for split, data in digits.items():
        plain = build_dataset({**DIGITS, "name": "digits"}, split)
        assert torch.equal(data.images, plain.images) and torch.equal(data.labels, plain.labels)
        assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (1, 8, 8)
        assert len(data.names) == len(set(data.names)) == len(data)
    assert (len(digits["train"]), len(digits["test"])) == (1437, 360)


def test_every_caption_names_its_digit_and_no_other(digits):
    for data in digits.values():
        for label, caps in zip(data.labels.tolist(), data.captions, strict=True):
            assert len(caps) == len(set(caps)) == 2
            for cap in caps:
                tokens = set(split_words(cap))
                assert WORDS[label] in tokens or str(label) in tokens, cap
                others = {WORDS[d] for d in range(10) if d != label} | {
                    str(d) for d in range(10) if d != label
                }
                assert not tokens & others, cap


def _shape(caption: str) -> str:
    """The template behind a caption: the digit and the property words blanked out."""
    out = []
    for w in split_words(caption):
        if w in WORDS or w.isdigit():
            out.append("D")
        elif w in PROPERTY or w in ("left", "right"):
            out.append("P")
        else:
            out.append(w)
    return " ".join(out)


def test_many_templates_are_used(digits):
    shapes = {_shape(c) for data in digits.values() for caps in data.captions for c in caps}
    assert len(shapes) >= 8, shapes


def _measure(image: np.ndarray) -> tuple[int, float, float]:
    """Ink box height, ink fraction and slant of one image, measured pixel by pixel."""
    ink = image[0] >= 128
    rows, cols = np.nonzero(ink)
    height = int(rows.max() - rows.min() + 1)
    r, c = rows - rows.mean(), cols - cols.mean()
    slant = -float((r * c).mean() / (r * r).mean()) if (r * r).mean() > 0 else float("nan")
    return height, float(ink.mean()), slant


def test_property_words_only_where_measured(digits):
    train = [_measure(im) for im in digits["train"].images.numpy()]
    labels = digits["train"].labels.numpy()
    height = np.quantile([m[0] for m in train], [1 / 3, 2 / 3])
    slant = np.quantile([abs(m[2]) for m in train], [1 / 3, 2 / 3])
    ink = {
        d: np.quantile([m[1] for m, y in zip(train, labels, strict=True) if y == d], [1 / 3, 2 / 3])
        for d in range(10)
    }
    used = set()
    for data in digits.values():
        for im, label, caps in zip(data.images.numpy(), data.labels, data.captions, strict=True):
            h, f, s = _measure(im)
            lo, hi = ink[int(label)]
            for cap in caps:
                words = split_words(cap)
                used |= set(words) & PROPERTY
                assert ("small" not in words or h < height[0]) and "large" not in words, cap
                assert not {"thin", "thinly"} & set(words) or f < lo, (cap, f, lo)
                assert not {"thick", "thickly"} & set(words) or f > hi, (cap, f, hi)
                assert "upright" not in words or abs(s) < slant[0], (cap, s)
                if "slanted" in words:
                    assert abs(s) > slant[1], (cap, s)
                    assert "left" not in words or s < 0, (cap, s)
                    assert "right" not in words or s > 0, (cap, s)
    assert used >= {"small", "thin", "thick", "slanted", "upright"}  # the words do appear


def test_captions_are_seeded_per_image_and_deterministic(digits):
    again = load_caption_data(DIGITS, "train")
    assert again.captions == digits["train"].captions and again.names == digits["train"].names
    images, labels = digits_arrays()
    idx = np.array([5, 17, 1000])
    props = mdc.measure_digits(images[idx])
    words = mdc.property_words(props, labels[idx], mdc.digits_thresholds())
    alone = mdc.digit_captions(labels[idx], words, np.stack([0 * idx, idx], 1), 2)
    everything = {n: c for d in digits.values() for n, c in zip(d.names, d.captions, strict=True)}
    assert alone == [everything[f"digits/{i:04d}"] for i in idx]  # independent of the others
    six = load_caption_data({**DIGITS, "captions_per_image": 6}, "test")
    assert all(len(set(c)) == 6 for c in six.captions)


def test_mnist_captions_use_data_mnist():
    data = load_caption_data({**DIGITS, "name": "mnist_captions", "resolution": 32}, "test")
    plain = build_dataset({**DIGITS, "name": "mnist", "resolution": 32}, "test")
    assert torch.equal(data.images, plain.images) and torch.equal(data.labels, plain.labels)
    for label, caps in zip(data.labels[:2000].tolist(), data.captions[:2000], strict=True):
        assert all(WORDS[label] in split_words(c) or str(label) in split_words(c) for c in caps)


def test_stamps_are_the_packages_cutouts_and_captions(stamps):
    train, test = stamps["train"], stamps["test"]
    assert (len(train), len(test)) == (707, 78)
    assert not set(train.names) & set(test.names)
    for data in (train, test):  # in the order of their sorted paths
        paths = [Path(f"{n}.png") for n in data.names]
        assert paths == sorted(paths)
    root = stamps_root()
    for data in (train, test):
        assert data.images.dtype == torch.uint8 and data.images.shape[1:] == (3, 32, 32)
        assert (data.labels == -1).all()
        for name, caps in zip(data.names, data.captions, strict=True):
            first = (root / f"{name}.txt").read_text(encoding="utf-8").splitlines()[0]
            assert caps == [" ".join(first.split()).lower()]
            assert (root / f"{name}.png").is_file()
    # composited on white: the border of a cut-out is mostly white
    border = torch.cat([train.images[:, :, 0], train.images[:, :, -1]], -1).float()
    assert float(border.mean(dim=(1, 2)).median()) > 240
    assert "a koala." in {c[0] for c in train.captions + test.captions}


def test_jsonl_round_trip_of_the_stamps(stamps, tmp_path):
    for split, data in stamps.items():
        write_captions_jsonl(data, tmp_path / split)
    cfg = {**STAMPS, "name": "captions", "root": str(tmp_path)}
    for split, data in stamps.items():
        back = load_caption_data(cfg, split)
        assert torch.equal(back.images, data.images)  # bitwise
        assert back.captions == data.captions and (back.labels == -1).all()
        assert back.names[0] == "images/00000.png"


def test_jsonl_several_captions_gray_and_seeded_split(digits, tmp_path):
    data = digits["test"]
    path = write_captions_jsonl(data, tmp_path)
    assert len(path.read_text().splitlines()) == 2 * len(data)  # one line per caption
    cfg = {**DIGITS, "name": "captions", "root": str(tmp_path), "num_classes": 1}
    parts = {s: load_caption_data(cfg, s) for s in ("train", "test")}
    assert (len(parts["train"]), len(parts["test"])) == (324, 36)
    assert not set(parts["train"].names) & set(parts["test"].names)
    for part in parts.values():
        for name, image, caps in zip(part.names, part.images, part.captions, strict=True):
            i = int(Path(name).stem)
            assert torch.equal(image, data.images[i]) and caps == data.captions[i]


def _jsonl(tmp_path: Path, lines: list[str]) -> dict:
    (tmp_path / "captions.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return {**STAMPS, "name": "captions", "root": str(tmp_path)}


def test_jsonl_errors_name_file_and_line(digits, tmp_path):
    d = digits["test"]
    write_captions_jsonl(
        CaptionData(d.images[:3], d.labels[:3], d.captions[:3], d.names[:3]), tmp_path
    )
    good = json.dumps({"image": "images/00000.png", "caption": "a zero"})
    cfg = _jsonl(tmp_path, [good, "{not json"])
    with pytest.raises(UserError, match=r"captions.jsonl:2: not a JSON object"):
        load_caption_data(cfg, "train")
    _jsonl(tmp_path, [good, json.dumps({"image": "images/missing.png", "caption": "x"})])
    with pytest.raises(UserError, match=r"captions.jsonl:2: image 'images/missing.png'"):
        load_caption_data(cfg, "train")
    _jsonl(tmp_path, [good, json.dumps({"img": "images/00001.png"})])
    with pytest.raises(UserError, match=r"captions.jsonl:2: needs"):
        load_caption_data(cfg, "train")
    _jsonl(tmp_path, [good, json.dumps({"image": "images/00001.png", "caption": "  "})])
    with pytest.raises(UserError, match=r"captions.jsonl:2: the caption of .* is empty"):
        load_caption_data(cfg, "train")
    _jsonl(tmp_path, [good])
    with pytest.raises(UserError, match=r"split 'valid' does not exist"):
        load_caption_data(cfg, "valid")
    (tmp_path / "captions.jsonl").unlink()
    with pytest.raises(UserError, match=r"has no captions.jsonl"):
        load_caption_data(cfg, "train")
    with pytest.raises(UserError, match=r"data=captions needs data.root"):
        load_caption_data({**cfg, "root": None}, "train")
    with pytest.raises(UserError, match=r"data.root='/nonexistent/x' is not a folder"):
        load_caption_data({**cfg, "root": "/nonexistent/x"}, "train")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "cifar_captions"}, r"data='cifar_captions'.*" + ", ".join(CAPTION_DATASETS)),
        ({"resolution": 16}, r"data.resolution=16 is not supported.*allowed: 8"),
        ({"name": "stamps", "channels": 1, "resolution": 32, "num_classes": 1},
         r"data.channels=1 is not supported for data=stamps; allowed: 3"),
        ({"name": "stamps", "resolution": 0, "num_classes": 1}, r"data.resolution=0 must be"),
        ({"captions_per_image": 7}, r"data.captions_per_image=7 .*allowed: 1..6"),
        ({"captions_per_image": True}, r"data.captions_per_image=True must be"),
        ({"flip": True}, r"data.flip=true is not allowed for data=digits_captions"),
        ({"tokenizer": "chars"}, r"data.tokenizer='chars'"),
        ({"max_text_len": 1}, r"data.max_text_len=1 must be"),
        ({"patch_size": 3}, r"data.patch_size=3 does not divide data.resolution=8"),
        ({"name": "captions", "root": None, "channels": 3, "num_classes": 1},
         r"data=captions needs data.root"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_value(overrides, message):
    with pytest.raises(UserError, match=message):
        check_caption_config({**DIGITS, **overrides})


def test_bad_split_and_missing_stamps_package(monkeypatch):
    with pytest.raises(UserError, match=r"split='valid' does not exist for data=digits_captions"):
        load_caption_data(DIGITS, "valid")
    monkeypatch.setattr(mchecks, "STAMPS_ROOT", Path("/nonexistent/tuxpaint/stamps"))
    with pytest.raises(UserError, match=r"apt-get install tuxpaint-stamps-default"):
        load_caption_data(STAMPS, "train")
