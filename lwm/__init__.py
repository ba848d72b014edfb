"""lwm: long-context video+language world models in JAX.

The stable surface: `lwm.load_model(path)` returns a model that, called on int32 tokens
`[batch, seq]`, returns logits `[batch, seq, vocab]`; `lwm.load_vq(path)` returns the VQ video
tokenizer (`encode(frames) -> codes`, `decode(codes) -> frames in [-1, 1]`).
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


def load_vq(path: str, config: Any = None) -> Any:
    """Loads a VQ tokenizer: LWM's released `vqgan` file, a diffusers `VQModel` folder or a
    `lwm train-vq` directory.

    The result's `encode(frames)` takes uint8 `[N, H, W, 3]` (or float in [-1, 1]) frames and
    returns int32 codes `[N, h, w]`; `decode(codes)` returns float32 frames in [-1, 1].
    `config` (a `lwm.config.vq.VQModelConfig`) overrides the shape of an LWM file.
    """
    from lwm.model.vq_tokenizer import load_vq as _load_vq

    return _load_vq(path, config)


__all__ = ["__version__", "load_model", "load_vq"]
