"""Caption metrics: CIDEr, BLEU-4 and ROUGE-L (coco-caption's scorers) and digit-naming accuracy.

The scores come from pycocoevalcap's own `Bleu(4)`, `Cider` and `Rouge` on captions passed
through `normalize_caption`, a pure-Python stand-in for coco-caption's Java PTBTokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from core.errors import UserError
from model.data.caption_templates import DIGIT_WORDS

# pycocoevalcap/tokenizer/ptbtokenizer.py drops these PTB tokens after tokenizing:
# "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
# "...", ";". PTB writes " as ``/'' and ( ) { } as -LRB- -RRB- -LCB- -RCB-, and "--"/"..." are
# runs of these characters, so dropping single characters covers the whole list.
_DROPPED = frozenset("'\"`.?!,:;-(){}")

# One token: a clitic PTB splits off (n't, 's, 're, ...), the word before an n't (do|n't),
# a number or word kept whole as PTB keeps it (3.5, 10,000, 4:30, black-and-white, and/or), or
# any other single character (punctuation, dropped if in _DROPPED).
_TOKEN = re.compile(
    r"n't\b|'(?:s|re|ve|ll|d|m)\b|\w+?(?=n't\b)|\d+(?:[.,:]\d+)+|\w+(?:[-/]\w+)*|\S"
)

_DIGIT_TOKENS = {w: i for i, w in enumerate(DIGIT_WORDS)} | {str(i): i for i in range(10)}


def _tokens(text: str) -> list[str]:
    """Lowercased PTB-like tokens of `text`, coco-caption's punctuation removed."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _DROPPED]


def normalize_caption(text: str) -> str:
    """Lowercase, split off PTB clitics, drop coco-caption's punctuation, single-space the words.

    This approximates coco-caption's Stanford PTBTokenizer (which needs Java) in pure Python; it
    can differ on rare forms (abbreviations like "e.g.", "o'clock", square brackets).
    """
    return " ".join(_tokens(text))


def caption_scores(
    candidates: Mapping[str | int, str], references: Mapping[str | int, Sequence[str]]
) -> dict[str, float]:
    """Corpus CIDEr(-D), BLEU-4 and ROUGE-L of one candidate per key against its references.

    Keys are image ids; both mappings must have the same keys and each key at least one
    reference. CIDEr's IDF is computed over the references given, so (as in coco-caption) CIDEr
    depends on the whole evaluated set: the same caption scores differently in another set, and a
    set of one image always scores CIDEr 0. BLEU-4 is corpus-level (n-gram counts summed over the
    set, "closest" reference length); ROUGE-L is the mean over images.
    """
    # Imported here: pycocoevalcap is a 100 MB wheel (Java jars) that the digit helpers below
    # do not need.
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if not candidates:
        raise UserError("caption_scores: no candidates to score")
    missing, extra = set(references) - set(candidates), set(candidates) - set(references)
    if missing or extra:
        raise UserError(
            f"caption_scores: candidate and reference keys differ: no candidate for "
            f"{sorted(map(str, missing))[:5]}, no references for {sorted(map(str, extra))[:5]}"
        )
    res: dict[str | int, list[str]] = {}
    gts: dict[str | int, list[str]] = {}
    for key, caption in candidates.items():
        refs = references[key]
        if isinstance(refs, str) or not isinstance(caption, str):
            raise UserError(f"caption_scores: key {key!r} needs a str caption and a list of str")
        if not refs:
            raise UserError(f"caption_scores: key {key!r} has an empty reference list")
        res[key] = [normalize_caption(caption)]
        gts[key] = [normalize_caption(r) for r in refs]
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no "{'testlen': ..." print
    cider, _ = Cider().compute_score(gts, res)
    rouge, _ = Rouge().compute_score(gts, res)
    return {"cider": float(cider), "bleu4": float(bleu[3]), "rouge_l": float(rouge)}


def caption_digit(text: str) -> int | None:
    """The digit a caption names ("seven" or "7"); None if it names none or two different ones.

    Only whole tokens count ("17" and "seventy" name no digit); "one" as a pronoun counts too.
    """
    named = {_DIGIT_TOKENS[t] for t in _tokens(text) if t in _DIGIT_TOKENS}
    return named.pop() if len(named) == 1 else None


def caption_accuracy(captions: Sequence[str], labels: Sequence[int]) -> float:
    """Share of captions whose named digit (`caption_digit`) equals the label."""
    if len(captions) != len(labels):
        raise UserError(f"caption_accuracy: {len(captions)} captions but {len(labels)} labels")
    if not captions:
        raise UserError("caption_accuracy: no captions")
    hits = sum(caption_digit(c) == int(y) for c, y in zip(captions, labels, strict=True))
    return hits / len(captions)
