"""Does the training data fit the model? Checked before anything is built or trained.

A token store records its text vocabulary, its vision vocabulary and, for video, the VQ
tokenizer's codebook size and codes per frame (`store.json`, see `lwm.data.store`). Ids past
the model's embedding tables do not fail loudly on an accelerator: they read garbage rows and
the run drifts to NaN many steps later. So a store that does not fit is refused up front, with
the flag that fixes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from lwm.config import ModelConfig
from lwm.data.store import read_store_metadata
from lwm.errors import LwmError


class DataModelMismatchError(LwmError, ValueError):
    """The token store's vocabulary or vision tokenizer does not match the model's."""


def store_metadata(source: Any, store_path: str) -> tuple[str, Mapping[str, Any]] | None:
    """`(where, metadata)` of the token store training will read, or None for in-memory data.

    `source` is what `train(..., source=...)` got: None (then `store_path`), a path, or a
    `TokenStore` (anything with `path` and `metadata`).
    """
    if source is None:
        source = store_path or None
    if isinstance(source, (str, os.PathLike)):
        return str(source), read_store_metadata(source)
    metadata = getattr(source, "metadata", None)
    if isinstance(metadata, Mapping) and "text_vocab_size" in metadata:
        return str(getattr(source, "path", "the token store")), metadata
    return None


def check_store_fits_model(where: str, metadata: Mapping[str, Any], model: ModelConfig) -> None:
    """Raises `DataModelMismatchError` naming the store, the field and the fix."""
    text = int(metadata.get("text_vocab_size") or 0)
    if text > model.vocab_size:
        raise DataModelMismatchError(
            f"{where}: the store's text vocabulary has {text} ids but model.vocab_size is "
            f"{model.vocab_size}: set --model.vocab_size {text} (or tokenize with the model's tokenizer)"
        )
    vision = int(metadata.get("vision_vocab_size") or 0)
    has_vision_tokens = vision > 0 or int(metadata.get("num_vision_tokens") or 0) > 0
    if not has_vision_tokens:
        return
    if not model.has_vision:
        raise DataModelMismatchError(
            f"{where}: the store holds vision tokens (vision vocabulary {vision}) but the model "
            f"is text-only (model.vision_vocab_size 0): set --model.vision_vocab_size {vision or 'N'} "
            f"and model.vision to the store's VQ tokenizer, or train on a text store"
        )
    if vision > model.vision_vocab_size:
        raise DataModelMismatchError(
            f"{where}: the store's vision vocabulary has {vision} ids but model.vision_vocab_size "
            f"is {model.vision_vocab_size}: set --model.vision_vocab_size {vision}"
        )
    for name, have in (("codebook_size", model.codebook_size), ("tokens_per_frame", model.tokens_per_frame)):
        stored = metadata.get(name)
        if stored is not None and int(stored) != have:
            raise DataModelMismatchError(
                f"{where}: the store's VQ tokenizer has {name} {int(stored)} but model.vision.{name} "
                f"is {have}: set --model.vision.{name} {int(stored)} (the model must read the "
                f"codes of the tokenizer that made the store)"
            )
