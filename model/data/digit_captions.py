"""Templated captions of handwritten digits: measured properties and the words they back.

digits_captions and mnist_captions (model/data/captions.py) caption every image from the
templates of model/data/caption_templates.py. Ink is a pixel >= INK_LEVEL; the property words'
thresholds are terciles over the training split (the rules are in captions.py's docstring).
Arrays only (numpy, no torch).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from model.data.arrays import digits_arrays, digits_split_indices, mnist_arrays
from model.data.caption_templates import DIGIT_WORDS, TEMPLATES, template_fields

CAPTION_SEED = 20241202
INK_LEVEL = 128


def measure_digits(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per image of uint8 (N, 1, H, W): ink box height (px), ink fraction, slant (nan: none)."""
    out: dict[str, list[np.ndarray]] = {"height": [], "ink": [], "slant": []}
    for start in range(0, len(images), 8192):  # chunks: MNIST as float64 at once is 300 MB
        ink = (images[start : start + 8192, 0] >= INK_LEVEL).astype(np.float64)
        _, h, w = ink.shape
        rows = np.arange(h, dtype=np.float64)
        cols = np.arange(w, dtype=np.float64)
        per_row = ink.sum(2)
        has = per_row > 0
        top = has.argmax(1)
        bottom = h - 1 - has[:, ::-1].argmax(1)
        n = per_row.sum(1)
        out["height"].append(np.where(n > 0, bottom - top + 1, 0))
        out["ink"].append(n / (h * w))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_r = per_row @ rows / n
            mean_c = ink.sum(1) @ cols / n
            var_r = per_row @ rows**2 / n - mean_r**2
            cov = np.einsum("nrc,r,c->n", ink, rows, cols) / n - mean_r * mean_c
            slant = np.where(var_r > 1e-9, -cov / var_r, np.nan)
        out["slant"].append(slant)
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclass(frozen=True)
class DigitThresholds:
    """Tercile thresholds: height (px), ink fraction per class, |slant|."""

    height: tuple[float, float]
    ink: dict[int, tuple[float, float]]
    slant: tuple[float, float]


def _terciles(values: np.ndarray) -> tuple[float, float]:
    """The 1/3 and 2/3 quantiles of the finite values."""
    lo, hi = np.quantile(values[np.isfinite(values)], [1 / 3, 2 / 3])
    return float(lo), float(hi)


def digit_thresholds(props: dict[str, np.ndarray], labels: np.ndarray) -> DigitThresholds:
    """The thresholds of the property words, from the training images' measurements."""
    return DigitThresholds(
        height=_terciles(props["height"].astype(np.float64)),
        ink={int(c): _terciles(props["ink"][labels == c]) for c in np.unique(labels)},
        slant=_terciles(np.abs(props["slant"])),
    )


def property_words(
    props: dict[str, np.ndarray], labels: np.ndarray, th: DigitThresholds
) -> list[dict[str, str]]:
    """Per image, the template fields its measurements back (size, thick, slant, ...)."""
    out = []
    for height, ink, slant, label in zip(
        props["height"], props["ink"], props["slant"], labels, strict=True
    ):
        words: dict[str, str] = {}
        if height < th.height[0]:
            words["size"] = "small"
        elif height > th.height[1]:
            words["size"] = "large"
        lo, hi = th.ink[int(label)]
        if ink < lo:
            words.update(thick="thin", thickly="thinly")
        elif ink > hi:
            words.update(thick="thick", thickly="thickly")
        if np.isfinite(slant) and abs(slant) < th.slant[0]:
            words.update(slant="upright", slanted="upright")
        elif np.isfinite(slant) and abs(slant) > th.slant[1]:
            side = "right" if slant > 0 else "left"
            words.update(slant=f"slanted {side}", slanted="slanted")
        out.append(words)
    return out


def digit_captions(
    labels: np.ndarray, words: list[dict[str, str]], seeds: np.ndarray, per_image: int
) -> list[list[str]]:
    """`per_image` distinct captions per image from the templates its words allow, seeded."""
    fields = template_fields()
    out = []
    for label, have, seed in zip(labels, words, seeds, strict=True):
        label = int(label)
        usable = [i for i, need in enumerate(fields) if need <= have.keys()]
        rng = np.random.default_rng([CAPTION_SEED, *map(int, seed)])
        picked = rng.choice(len(usable), size=per_image, replace=False)
        word = DIGIT_WORDS[label]
        values = {**have, "word": word, "num": str(label)}
        values["a_word"] = f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
        out.append([TEMPLATES[usable[int(j)]].format(**values) for j in picked])
    return out


@functools.cache
def digits_thresholds() -> DigitThresholds:
    """Property thresholds from the digits' training split."""
    images, labels = digits_arrays()
    idx = digits_split_indices()["train"]
    return digit_thresholds(measure_digits(images[idx]), labels[idx])


@functools.cache
def mnist_thresholds() -> DigitThresholds:
    """Property thresholds from MNIST's training split."""
    images, labels = mnist_arrays("train")
    return digit_thresholds(measure_digits(images), labels)
