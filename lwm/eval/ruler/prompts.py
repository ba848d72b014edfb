"""Prompt assembly in the model's tokens: chat template, context pieces, and fitting a length.

A RULER prompt is `<s>{system}{user_prefix}{task intro}` + context + `\\n{question}`
`{assistant_prefix}{answer prefix}` (LWM's chat template by default, RULER's `lwm-chat`). It is
built from id pieces: the head is encoded once, every later piece with `encode_continuation`
(so a leading space or newline joins the previous text as the tokenizer would split it), and
the prompt's length is the sum of its pieces. Haystack text is a token stream (`TokenStream`)
of which exactly `n` tokens are taken; inserted needles go in at sentence boundaries at their
depth. `fit_size` is the binary search over the haystack size that makes a prompt as long as
the target and no longer.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lwm.config.data import ChatTemplateConfig
from lwm.eval.needle import Haystack, encode_continuation, sentence_boundary


class Encoder:
    """Text to ids for prompt pieces, with a cache (noise sentences and templates repeat)."""

    def __init__(self, tokenizer: Any, template: ChatTemplateConfig = ChatTemplateConfig()):
        self.tokenizer = tokenizer
        self.template = template
        self._cache: dict[str, list[int]] = {}
        self._period = tokenizer.encode(".")

    def piece(self, text: str, cache: bool = True) -> list[int]:
        """Ids of `text` as it continues a prompt (`text` carries its own leading separator);
        `cache=False` for text that will not come again (random lines)."""
        ids = self._cache.get(text)
        if ids is None:
            # `encode_continuation`'s rule, with the ids of "." encoded once (this runs a
            # million times for a 1M-token word list).
            joint = self.tokenizer.encode("." + text)
            if joint[:len(self._period)] == self._period:
                ids = joint[len(self._period):]
            else:
                ids = encode_continuation(self.tokenizer, text)
            if cache and len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def head(self, intro: str) -> list[int]:
        """`<s>{system}{user_prefix}{intro}`: the start of every prompt."""
        template = self.template
        bos = [self.tokenizer.bos_id] if template.add_bos else []
        return bos + self.tokenizer.encode(template.system + template.user_prefix + intro)

    def tail(self, question: str, answer_prefix: str) -> list[int]:
        """`{question}{assistant_prefix}{answer_prefix}`: the end of every prompt (the question
        carries its leading separator)."""
        return self.piece(question + self.template.assistant_prefix + answer_prefix)


@dataclasses.dataclass
class TokenStream:
    """Haystack ids with sentence-end flags; `take(n)` repeats the stream when it is shorter."""

    ids: np.ndarray
    sentence_end: np.ndarray
    repeats: int = 1

    @classmethod
    def from_text(cls, text: str, tokenizer: Any) -> TokenStream:
        """The text encoded once (see `lwm.eval.needle.Haystack`)."""
        haystack = Haystack(text, tokenizer)
        return cls(haystack.ids, haystack.sentence_end)

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `count` ids and their sentence-end flags."""
        if count <= 0:
            return np.zeros(0, np.int32), np.zeros(0, bool)
        repeats = max(1, math.ceil(count / len(self.ids)))
        self.repeats = max(self.repeats, repeats)
        return np.tile(self.ids, repeats)[:count], np.tile(self.sentence_end, repeats)[:count]


def splice(stream: TokenStream, count: int, inserts: Sequence[tuple[float, list[int]]]) -> tuple[list[int], list[int]]:
    """`count` stream tokens with each insert (depth in percent, ids) at the sentence start at or
    before its depth; returns the context ids and each insert's offset in them (input order).

    Inserts at the same point keep their input order.
    """
    haystack, ends = stream.take(count)
    points = [sentence_boundary(ends, int(count * depth / 100)) for depth, _ in inserts]
    order = sorted(range(len(inserts)), key=lambda index: (points[index], index))
    pieces: list[list[int]] = []
    offsets = [0] * len(inserts)
    previous = offset = 0
    for index in order:
        pieces.append(haystack[previous:points[index]].tolist())
        offset += points[index] - previous
        offsets[index] = offset
        pieces.append(inserts[index][1])
        offset += len(inserts[index][1])
        previous = points[index]
    pieces.append(haystack[previous:].tolist())
    return [token for piece in pieces for token in piece], offsets


def fit_size(length_of: Callable[[int], int], target: int, upper: int, lower: int = 0) -> int:
    """The largest size in `[lower, upper]` whose prompt is at most `target` tokens (binary
    search, as RULER sizes its haystacks); `lower` when even that is too long."""
    best = lower
    low, high = lower, upper
    while low <= high:
        middle = (low + high) // 2
        if length_of(middle) <= target:
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return best


def pad_to(ids: list[int], target: int, filler: Sequence[int]) -> list[int]:
    """`ids` followed by the first `target - len(ids)` ids of `filler` (repeated as needed)."""
    missing = target - len(ids)
    if missing <= 0 or not filler:
        return ids
    repeats = math.ceil(missing / len(filler))
    return ids + (list(filler) * repeats)[:missing]
