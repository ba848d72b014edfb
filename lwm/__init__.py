"""lwm: long-context video+language world models in JAX.

The stable surface: `lwm.load_model(path)` returns a model that, called on int32 tokens
`[batch, seq]`, returns logits `[batch, seq, vocab]`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load_model(path: str, overrides: tuple[str, ...] = ()) -> Any:
    """Loads a model directory written by training, `save_model` or `lwm convert hf2lwm`.

    `overrides` adjust runtime settings, e.g. `("--attention", "blockwise")`.
    """
    from lwm.model.params_io import load_model as _load_model

    return _load_model(path, overrides)


__all__ = ["__version__", "load_model"]
