"""Caption tokenizers: a word vocabulary built from the training captions, or CLIP's BPE.

Both give ids with PAD, BOS, EOS, UNK = 0, 1, 2, 3 and a vocabulary restricted to the pieces the
training captions use (plus those four), so the LM head stays small; anything else is UNK.

- `word`: lowercase; the pieces are `[a-z0-9]+` runs and every other non-space character on its
  own (punctuation, and also each letter outside a-z, e.g. the "ä" in "räuchermännchen").
  Vocabulary: the specials, then the pieces by descending count, ties alphabetically; pieces seen
  fewer than `min_count` times are left out (UNK).
- `bpe`: OpenAI CLIP's byte-level BPE (`bpe_simple_vocab_16e6.txt.gz`, 48,894 merges, sha256
  below) read from the open_clip_torch package (or clip-anytorch, which ships the same file)
  without importing it. Text is cleaned as CLIP's `lower` clean does, without ftfy (html entities
  unescaped twice, whitespace collapsed, lowercased), split with CLIP's pattern and merged by
  rank exactly as CLIP's SimpleTokenizer; the kept tokens are ordered by their CLIP id.

`decode` stops at EOS, skips PAD and BOS, writes UNK as `<unk>`, and joins the pieces with spaces
except around punctuation: `.,;:!?)]}”%…` attach to the previous piece, `([{“‘$#¿¡` to the next,
hyphens, dashes, slashes and apostrophes to both, a `"` alternately opens and closes, and a `.`
or `,` inside a number joins it. So `decode(encode(t))` gives back lowercased captions written
that way ("the digit 7, written thickly", "grandma’s old rag doll."); the spacing of anything
else is normalised.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from core.choices import TOKENIZERS
from core.errors import UserError
from core.io import atomic_write_text
from model.method.text_tokens import BOS, EOS, PAD, SPECIALS, UNK

WORD_PATTERN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
BPE_PACKAGES = ("open_clip", "clip")  # open_clip_torch, clip-anytorch: both ship the file
BPE_NUM_MERGES = 49152 - 256 - 2  # what CLIP's SimpleTokenizer reads of the file

_CLOSE = frozenset(".,;:!?)]}”%…")
_OPEN = frozenset("([{“‘$#¿¡")
_GLUE = frozenset("-‐–—/'’")


class Tokenizer(Protocol):
    """What the model and the harness use of a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict: ...


# --------------------------------------------------------------------------------------------
# decoding: pieces back to text


def _inner_letter(piece: str) -> bool:
    """A single non-ASCII letter or digit: a piece of a word that WORD_PATTERN cut apart."""
    return len(piece) == 1 and piece.isalnum() and not piece.isascii()


def _decimal_point(pieces: list[str], i: int) -> bool:
    """Piece i ends in a `.` or `,` inside a number (1.00, 10,000, $.05; BPE keeps "($." whole)."""
    piece = pieces[i]
    before = piece[-2] if len(piece) > 1 else (pieces[i - 1][-1] if i > 0 else " ")
    return (
        piece[-1] in ".,"
        and i < len(pieces) - 1
        and (before.isdigit() or before == "$")
        and pieces[i + 1][0].isdigit()
    )


def join_pieces(pieces: list[str], glue_digits: bool = False) -> str:
    """Pieces joined with spaces, punctuation attached as written English has it.

    `glue_digits` joins adjacent digit pieces (CLIP's BPE splits numbers into single digits).
    """
    out: list[str] = []
    quote_open = False
    tight_after = True  # no space before the first piece
    for i, piece in enumerate(pieces):
        first, last = piece[0], piece[-1]
        decimal = _decimal_point(pieces, i)
        tight_before = (
            first in _CLOSE
            or first in _GLUE
            or (first == '"' and quote_open)
            or _inner_letter(piece)
            or (decimal and len(piece) == 1)
            or (glue_digits and bool(out) and out[-1][-1].isdigit() and first.isdigit())
        )
        if out and not (tight_after or tight_before):
            out.append(" ")
        out.append(piece)
        quote_open ^= piece.count('"') % 2 == 1
        tight_after = (
            last in _OPEN
            or last in _GLUE
            or (last == '"' and quote_open)
            or _inner_letter(piece)
            or decimal
        )
    return "".join(out)


def _content_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """The ids up to the first EOS, without PAD and BOS (ValueError for an id out of range)."""
    kept = []
    for i in ids:
        i = int(i)
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (size {vocab_size})")
        if i == EOS:
            break
        if i not in (PAD, BOS):
            kept.append(i)
    return kept


def _kept_pieces(counts: Counter, min_count: int) -> list[str]:
    """Pieces seen at least min_count times, by descending count then alphabetically."""
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise UserError(f"min_count={min_count!r} must be an integer >= 1")
    return sorted((p for p, c in counts.items() if c >= min_count), key=lambda p: (-counts[p], p))


def _check_tokens(d: dict, kind: str) -> list[str]:
    """The `tokens` list of a saved tokenizer, specials first (UserError otherwise)."""
    tokens = d.get("tokens")
    if (
        not isinstance(tokens, list)
        or tuple(tokens[: len(SPECIALS)]) != SPECIALS
        or not all(isinstance(t, str) and t for t in tokens)
        or len(set(tokens)) != len(tokens)
    ):
        raise UserError(
            f"a saved {kind} tokenizer needs `tokens`: distinct strings starting with {SPECIALS}"
        )
    return tokens


# --------------------------------------------------------------------------------------------
# word-level


class WordTokenizer:
    """Word-level vocabulary built from training captions; unseen words are UNK."""

    def __init__(self, words: list[str], min_count: int = 1):
        self.words = list(words)
        self.min_count = min_count
        self.tokens = [*SPECIALS, *self.words]
        self._ids = {w: i for i, w in enumerate(self.words, start=len(SPECIALS))}

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1) -> WordTokenizer:
        """The vocabulary of `captions` (deterministic: counts, then alphabetical)."""
        counts = Counter(p for c in captions for p in split_words(c))
        return cls(_kept_pieces(counts, min_count), min_count)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of `text` (no BOS/EOS)."""
        return [self._ids.get(w, UNK) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS."""
        return join_pieces([self.tokens[i] for i in _content_ids(ids, self.vocab_size)])

    def to_dict(self) -> dict:
        """A JSON-able description that tokenizer_from_dict turns back into this tokenizer."""
        return {"kind": "word", "min_count": self.min_count, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        """Inverse of to_dict."""
        tokens = _check_tokens(d, "word")
        return cls(tokens[len(SPECIALS) :], int(d.get("min_count", 1)))


def split_words(text: str) -> list[str]:
    """The word tokenizer's pieces of `text` (lowercased)."""
    return WORD_PATTERN.findall(text.lower())


# --------------------------------------------------------------------------------------------
# CLIP's byte-level BPE


def bpe_path() -> Path:
    """CLIP's BPE merges file from an installed package, located without importing it."""
    for package in BPE_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = Path(folder) / BPE_FILE
            if path.is_file():
                return path
    raise UserError(
        f"tokenizer=bpe needs CLIP's {BPE_FILE}, shipped in the open_clip_torch package: "
        "pip install --no-deps open_clip_torch==3.3.0 (or use tokenizer=word)"
    )


@functools.cache
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map of the 256 bytes to printable characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    # the other bytes (space, controls, ...) get 256, 257, ... in byte order, as in CLIP
    others = [b for b in range(256) if b not in printable]
    codes = printable + [256 + n for n in range(len(others))]
    return dict(zip(printable + others, map(chr, codes), strict=True))


@functools.cache
def _clip_bpe() -> tuple[dict[tuple[str, str], int], dict[str, int]]:
    """CLIP's merge ranks and its token -> id table, read once per process."""
    path = bpe_path()
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != BPE_SHA256:
        raise UserError(f"{path} is not CLIP's {BPE_FILE} (sha256 differs); reinstall its package")
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : BPE_NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    return {m: r for r, m in enumerate(merges)}, {t: i for i, t in enumerate(vocab)}


@functools.cache
def _bpe_pattern():
    """CLIP's pre-tokenizer pattern (needs the `regex` module for the Unicode classes)."""
    import regex

    return regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
    )


def _clean(text: str) -> str:
    """CLIP's `lower` clean without ftfy."""
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


@functools.lru_cache(maxsize=65536)
def _bpe_word(word: str) -> tuple[str, ...]:
    """The BPE tokens of one pre-token (its bytes as CLIP's characters), merged by rank."""
    ranks, _ = _clip_bpe()
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = {(a, b) for a, b in zip(parts, parts[1:], strict=False)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return tuple(parts)


def bpe_tokens(text: str) -> list[str]:
    """CLIP's BPE token strings of `text` (what CLIP's SimpleTokenizer would give ids for)."""
    enc = _bytes_to_unicode()
    out: list[str] = []
    for piece in _bpe_pattern().findall(_clean(text)):
        out.extend(_bpe_word("".join(enc[b] for b in piece.encode("utf-8"))))
    return out


def bpe_clip_ids(text: str) -> list[int]:
    """CLIP's own ids of `text` (as open_clip's SimpleTokenizer.encode, for checks against it)."""
    _, clip_ids = _clip_bpe()
    return [clip_ids[t] for t in bpe_tokens(text)]


class BPETokenizer:
    """CLIP's byte-level BPE restricted to the tokens of the training captions."""

    def __init__(self, kept: list[str], min_count: int = 1):
        _, clip_ids = _clip_bpe()
        unknown = [t for t in kept if t not in clip_ids]
        if unknown:
            raise UserError(f"bpe tokens not in CLIP's vocabulary: {unknown[:5]}")
        self.kept = list(kept)
        self.min_count = min_count
        self.tokens = [*SPECIALS, *self.kept]
        self._ids = {t: i for i, t in enumerate(self.kept, start=len(SPECIALS))}
        self._decoder = {c: b for b, c in _bytes_to_unicode().items()}

    @classmethod
    def from_captions(cls, captions: Iterable[str], min_count: int = 1) -> BPETokenizer:
        """The BPE tokens `captions` use, ordered by CLIP id."""
        counts = Counter(t for c in captions for t in bpe_tokens(c))
        _, clip_ids = _clip_bpe()
        kept = set(_kept_pieces(counts, min_count))
        return cls(sorted(kept, key=clip_ids.__getitem__), min_count)

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Ids of the BPE tokens of `text` (no BOS/EOS)."""
        return [self._ids.get(t, UNK) for t in bpe_tokens(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` up to the first EOS."""
        pieces: list[str] = []
        chars = ""
        for i in _content_ids(ids, self.vocab_size):
            if i == UNK:
                pieces += [self._bytes_text(chars), "<unk>"] if chars else ["<unk>"]
                chars = ""
                continue
            token = self.tokens[i]
            chars += token.removesuffix("</w>")
            if token.endswith("</w>"):
                pieces.append(self._bytes_text(chars))
                chars = ""
        if chars:
            pieces.append(self._bytes_text(chars))
        return join_pieces([p for p in pieces if p], glue_digits=True)

    def _bytes_text(self, chars: str) -> str:
        """CLIP's byte characters back to text (a cut multi-byte character becomes U+FFFD)."""
        return bytes(self._decoder[c] for c in chars).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        """A JSON-able description that tokenizer_from_dict turns back into this tokenizer."""
        return {
            "kind": "bpe",
            "merges": BPE_FILE,
            "merges_sha256": BPE_SHA256,
            "min_count": self.min_count,
            "tokens": list(self.tokens),
        }

    @classmethod
    def from_dict(cls, d: dict) -> BPETokenizer:
        """Inverse of to_dict."""
        if d.get("merges_sha256") != BPE_SHA256:
            raise UserError(
                f"the saved bpe tokenizer was built on merges with sha256 "
                f"{d.get('merges_sha256')!r}, not CLIP's {BPE_FILE} ({BPE_SHA256})"
            )
        tokens = _check_tokens(d, "bpe")
        return cls(tokens[len(SPECIALS) :], int(d.get("min_count", 1)))


# --------------------------------------------------------------------------------------------
# building, saving, batching


def build_tokenizer(kind: str, captions: list[str], min_count: int = 1) -> Tokenizer:
    """A `kind` tokenizer (word | bpe) with the vocabulary of the training `captions`."""
    if kind == "word":
        return WordTokenizer.from_captions(captions, min_count)
    if kind == "bpe":
        return BPETokenizer.from_captions(captions, min_count)
    raise UserError(f"data.tokenizer={kind!r} is not a tokenizer; allowed: {', '.join(TOKENIZERS)}")


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer a `to_dict()` describes."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "word":
        return WordTokenizer.from_dict(d)
    if kind == "bpe":
        return BPETokenizer.from_dict(d)
    raise UserError(f"saved tokenizer kind={kind!r} is unknown; allowed: {', '.join(TOKENIZERS)}")


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write `tok.to_dict()` as JSON, atomically."""
    text = json.dumps(tok.to_dict(), indent=1, sort_keys=True, ensure_ascii=False)
    atomic_write_text(path, text + "\n")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer written by save_tokenizer."""
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read the tokenizer {str(path)!r}: {e}") from None
    return tokenizer_from_dict(d)


def encode_batch(tok: Tokenizer, texts: list[str], max_len: int) -> torch.Tensor:
    """int64 (B, max_len): BOS + ids + EOS per row, cut to max_len with EOS kept last, PAD after."""
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 2:
        raise UserError(f"max_text_len={max_len!r} must be an integer >= 2 (BOS and EOS)")
    out = torch.full((len(texts), max_len), PAD, dtype=torch.int64)
    for row, text in enumerate(texts):
        ids = [BOS, *tok.encode(text)][: max_len - 1] + [EOS]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out
