"""The caption templates of digits_captions and mnist_captions, and the digit words.

Plain text, no torch or numpy: the torch-free config checks (core/config/datasets.py) count the
templates, the captions (model/data/digit_captions.py) fill them in, and the caption metrics
(model/evaluation/caption_metrics.py) read the digit words back.
"""

from __future__ import annotations

import functools
import string

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Fields: word (seven), a_word (a seven / an eight), num (7), size (small | large), thick (thin |
# thick), thickly (thinly | thickly), slant (slanted left | slanted right | upright), slanted
# (slanted | upright). Every template names the digit; the plain ones need no measurement.
PLAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {num}",
    "{a_word}, written by hand",
    "a handwritten digit {num}",
    "the number {word}",
    "an image of the digit {word}",
)
PROPERTY_TEMPLATES = (
    "a {size} {word}",
    "a {size} handwritten {num}",
    "a {thick} {word}",
    "the digit {num}, written {thickly}",
    "a handwritten {num}, {slant}",
    "{a_word}, drawn {slant}",
    "a {size}, {slanted} {num}",
    "a {thick}, {slanted} {word}",
    "a {size}, {thick} {num}",
)
TEMPLATES = PLAIN_TEMPLATES + PROPERTY_TEMPLATES
DIGIT_FIELDS = frozenset({"word", "a_word", "num"})


@functools.cache
def template_fields() -> tuple[frozenset[str], ...]:
    """The fields each template uses (every one names the digit)."""
    fields = []
    for t in TEMPLATES:
        names = frozenset(f for _, f, _, _ in string.Formatter().parse(t) if f)
        assert names & DIGIT_FIELDS, f"template {t!r} does not name the digit"
        fields.append(names - DIGIT_FIELDS)
    return tuple(fields)
