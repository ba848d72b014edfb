"""The pieces examples are built from: a tokenizer's interface, a token builder, vision spans.

Shared by the JSONL formats (`records`) and the chat template (`chat`), so that neither imports
the other's internals.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from lwm.data.store import TokenExample


@runtime_checkable
class TokenizerLike(Protocol):
    """What the data layer needs from a text tokenizer.

    `encode` returns ids without bos/eos (the data layer adds those). Optional attributes:
    `vocab_size` (checks ids; else `data.text_vocab_size` must be set) and `name` (recorded in
    the store's metadata).
    """

    bos_id: int
    eos_id: int
    vision_start_id: int
    vision_end_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""
        ...


class RecordProblem(ValueError):
    """What is wrong with one record; the reader adds the file and line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TokenBuilder:
    """Accumulates (ids, is_vision, loss) pieces of one example."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._vision: list[np.ndarray] = []
        self._loss: list[np.ndarray] = []
        self.content_tokens = 0

    def add(self, ids: Any, is_vision: Any, loss: bool, *, content: bool = True) -> None:
        """Adds ids (with their vision flags); `content=False` for bos/eos and template text."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        vision = np.broadcast_to(np.asarray(is_vision, bool), ids.shape)
        self._ids.append(ids)
        self._vision.append(vision)
        self._loss.append(np.full(ids.shape, bool(loss)))
        if content:
            self.content_tokens += len(ids)

    def add_text(self, ids: Any, loss: bool, *, content: bool = True) -> None:
        """Adds text ids."""
        self.add(ids, False, loss, content=content)

    def build(self) -> TokenExample:
        """The example; raises `RecordProblem('empty_example')` when no field gave a token."""
        if self.content_tokens == 0:
            raise RecordProblem("empty_example", "the example has no tokens from its fields")
        return TokenExample(np.concatenate(self._ids), np.concatenate(self._vision),
                            np.concatenate(self._loss))


def check_text_ids(ids: Any, vocab_size: int, what: str) -> np.ndarray:
    """Text ids as int32, raising `RecordProblem('token_out_of_range')` outside [0, vocab_size)."""
    array = np.asarray(ids)
    if array.size and array.dtype.kind not in "iu":
        raise RecordProblem("wrong_type", f"{what}: expected integer token ids, got {array.dtype}")
    array = array.astype(np.int64).reshape(-1)
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        raise RecordProblem(
            "token_out_of_range",
            f"{what}: token id {int(array[bad][0])} outside the text vocabulary [0, {vocab_size})",
        )
    return array.astype(np.int32)


def vision_span(
    codes: Any,
    *,
    tokenizer: TokenizerLike,
    tokens_per_frame: int,
    codebook_size: int,
    what: str = "vision",
) -> tuple[np.ndarray, np.ndarray]:
    """`<vision>` + per frame its codes and `<eof>` (the last `<eov>`) + `</vision>`.

    Returns (ids int32, is_vision bool). Codes must be a flat list of ints in
    [0, codebook_size) whose length is a whole, non-zero number of frames.
    """
    if not isinstance(codes, (list, tuple, np.ndarray)):
        raise RecordProblem("wrong_type", f"field {what!r}: expected a flat list of VQ codes, "
                                          f"got {type(codes).__name__}")
    array = np.asarray(codes)
    if array.size == 0:
        raise RecordProblem("empty_vision", f"field {what!r} holds no codes")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise RecordProblem("wrong_type", f"field {what!r}: expected a flat list of integer VQ "
                                          f"codes, got shape {array.shape} of {array.dtype}")
    if len(array) % tokens_per_frame:
        raise RecordProblem(
            "partial_frame",
            f"field {what!r} holds {len(array)} codes, not a whole number of frames of "
            f"{tokens_per_frame} (data.tokens_per_frame)",
        )
    bad = (array < 0) | (array >= codebook_size)
    if bad.any():
        raise RecordProblem(
            "token_out_of_range",
            f"field {what!r}: VQ code {int(array[bad][0])} outside [0, {codebook_size}) "
            f"(data.codebook_size)",
        )
    frames = array.reshape(-1, tokens_per_frame).astype(np.int32)
    ends = np.full((len(frames), 1), codebook_size, np.int32)  # <eof>
    ends[-1, 0] = codebook_size + 1  # <eov>
    body = np.concatenate([frames, ends], axis=1).reshape(-1)
    ids = np.concatenate([[tokenizer.vision_start_id], body, [tokenizer.vision_end_id]]).astype(np.int32)
    is_vision = np.ones(len(ids), bool)
    is_vision[0] = is_vision[-1] = False
    return ids, is_vision


