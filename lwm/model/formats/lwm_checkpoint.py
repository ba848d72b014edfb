"""`lwm convert jax2lwm` / `lwm2jax`: LWM's released `params` files <-> lwm model directories.

LWM's files carry no config, so the shapes come from a YAML `model:` section (the presets in
`configs/lwm/`), optionally changed by `--model.FIELD VALUE` overrides. Reading streams the
file record by record into the parameter dict, which is then written once through
`lwm.model.params_io.save_params`: the weights are held once, never the file and a copy.
A converted directory also holds `lwm_source.json`, which tells `lwm chat` / `lwm generate`
to build prompts with LWM's token layout (`lwm.data.lwm_layout`) and its LLaMA tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lwm.config import ModelConfig, load_config
from lwm.model.formats.lwm_llama import lwm_param_shapes, lwm_to_flat_params, params_to_lwm
from lwm.model.formats.lwm_streaming import (
    CHUNK_BYTES,
    parse_spec,
    read_lwm_params,
    write_streaming,
)
from lwm.model.params_io import fill_params, load_params_host, save_params

LWM_SOURCE_FILE = "lwm_source.json"


@dataclasses.dataclass(frozen=True)
class LwmModelFile:
    """The root of a `configs/lwm/*.yaml` preset: the model's shape (LWM's files have none)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)


def load_lwm_model_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> ModelConfig:
    """The `model:` section of a preset YAML with `--model.FIELD VALUE` overrides, validated."""
    return load_config(LwmModelFile, path, list(overrides)).model


def is_lwm_release(directory: str | Path) -> bool:
    """Whether a model directory was converted from LWM's JAX files (and so reads LWM's prompts)."""
    return (Path(directory) / LWM_SOURCE_FILE).is_file()


def jax_to_lwm(spec: str | Path, out_dir: str | Path, config: ModelConfig, *, progress: bool = True) -> Path:
    """Converts an LWM `params` file (`params::F`, `trainstate::F`, `trainstate_params::F`,
    `flax_params::F`, or a bare path) into an lwm model directory for `config`."""
    kind, path = parse_spec(spec)
    records = read_lwm_params(f"{kind}::{path}", progress=progress)
    flat = lwm_to_flat_params(records, config, str(path))
    params = fill_params(config, flat, str(path))
    del flat
    out = save_params(config, params, out_dir)
    (out / LWM_SOURCE_FILE).write_text(json.dumps({
        "format": "lwm-jax", "source": f"{kind}::{path}", "prompt_layout": "lwm",
    }, indent=2) + "\n")
    return out


def lwm_to_jax(model_dir: str | Path, out_file: str | Path, *, dtype: str = "bfloat16",
               scan_layers: bool = True, chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Writes an lwm model directory as LWM's streaming `params` file (keys under `params/`,
    as LWM's trainer writes them; load it in LWM with `params::OUT_FILE`)."""
    config, params = load_params_host(model_dir)
    total = len(lwm_param_shapes(config, scan_layers=scan_layers))
    records = params_to_lwm(params, config, scan_layers=scan_layers, dtype=_numpy_dtype(dtype))
    return write_streaming(out_file, records, chunk_bytes=chunk_bytes, progress_total=total)


def _numpy_dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    if name == "float32":
        return "float32"
    raise ValueError(f"--dtype {name}: LWM's files are bfloat16 or float32")
