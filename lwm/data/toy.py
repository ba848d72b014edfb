"""Learnable toy token sequences: arithmetic progressions modulo the vocabulary.

Each example starts at a random token and steps by a random stride, so after two tokens the
rest is predictable: a model that learns shows its loss falling towards zero. Used by smoke
tests and the quick training demo; deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

from lwm.data.store import TokenExample


def progression_examples(
    num_examples: int,
    vocab_size: int,
    *,
    min_length: int = 16,
    max_length: int = 96,
    max_stride: int = 7,
    vision_vocab_size: int = 0,
    seed: int = 0,
) -> list[TokenExample]:
    """Examples of `start, start+stride, start+2·stride, ...` (mod the vocabulary).

    With `vision_vocab_size > 0`, every other example is a vision-token progression, so both
    heads of a vision-language model get targets.
    """
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(num_examples):
        length = int(rng.integers(min_length, max_length + 1))
        is_vision = vision_vocab_size > 0 and index % 2 == 1
        vocab = vision_vocab_size if is_vision else vocab_size
        start = int(rng.integers(0, vocab))
        stride = int(rng.integers(1, max_stride + 1))
        tokens = (start + stride * np.arange(length)) % vocab
        examples.append(TokenExample.make(tokens, np.full(length, is_vision)))
    return examples
