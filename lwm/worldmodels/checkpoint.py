"""Parameter files of the world-models pipeline: an `.npz` of arrays plus a JSON sidecar.

Every model (V, M, C) is saved the same way: `NAME.npz` holds the parameters as flat arrays keyed
by their '/'-joined path in the model's pure state dict (`nnx.state(model, nnx.Param)
.to_pure_dict()`; C's key is simply `params`), and `NAME.json` holds what is needed to rebuild
the model (sizes, environment) plus the parameter count and a format version. Both are written
under temporary names and renamed, so a crash never leaves half a file. The models are small
(at most a few million parameters) and spawned evaluation workers load them without Orbax's
thread pools, which is why this pipeline does not use the LLaMA trainer's Orbax checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1


def flatten_tree(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays as one flat dict keyed by 'a/b/c' paths."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_tree(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def unflatten_tree(flat: dict[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of `flatten_tree`; integer path parts stay integers (nnx list indices)."""
    tree: dict[Any, Any] = {}
    for path, value in flat.items():
        node = tree
        parts = [int(part) if part.isdigit() else part for part in path.split("/")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def save_arrays(directory: str | Path, name: str, arrays: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Writes `directory/name.npz` and `directory/name.json`; returns the `.npz` path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = flatten_tree(arrays)
    npz_path = directory / f"{name}.npz"
    temporary = directory / f".{name}.npz.tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **flat)
    os.replace(temporary, npz_path)
    sidecar = dict(meta)
    sidecar.update(format_version=FORMAT_VERSION, param_count=int(sum(a.size for a in flat.values())),
                   arrays={key: list(value.shape) for key, value in flat.items()})
    json_temporary = directory / f".{name}.json.tmp"
    json_temporary.write_text(json.dumps(sidecar, indent=1, sort_keys=True))
    os.replace(json_temporary, directory / f"{name}.json")
    return npz_path


def read_meta(directory: str | Path, name: str) -> dict[str, Any]:
    """The JSON sidecar of `directory/name`; raises naming the file when it is missing."""
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train or copy the {name} parameters first")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def load_arrays(directory: str | Path, name: str) -> dict[str, Any]:
    """The nested dict of arrays saved by `save_arrays`."""
    path = Path(directory) / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train the {name} stage first")
    with np.load(path) as data:
        return unflatten_tree({key: data[key] for key in data.files})


def restore_state(template: Any, arrays: dict[str, Any], source: str) -> Any:
    """`template` (an `nnx.State` of parameters) with its values replaced by `arrays`.

    Raises naming `source` and the first path whose presence or shape differs.
    """
    from flax import nnx

    expected = flatten_tree(jax_shapes(template.to_pure_dict()))
    got = flatten_tree(arrays)
    for key, shape in expected.items():
        if key not in got:
            raise ValueError(f"{source}: missing array {key!r} (the file was saved from a different model)")
        if tuple(got[key].shape) != tuple(shape.shape):
            raise ValueError(f"{source}: array {key!r} has shape {got[key].shape}, the model expects {shape.shape}")
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ValueError(f"{source}: arrays {extra} do not belong to this model")
    state = template
    nnx.replace_by_pure_dict(state, arrays)
    return state


def jax_shapes(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree with each leaf replaced by a zero-size stand-in carrying its shape."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out[key] = jax_shapes(value) if isinstance(value, dict) else np.broadcast_to(np.zeros((), np.float32), value.shape)
    return out


def numpy_init(template: Any, seed: int) -> dict[str, Any]:
    """Fresh parameters for `template` (an `nnx.State`, abstract or real) drawn with numpy.

    Kernels get flax's default LeCun-normal draw (truncated at two standard deviations, std
    `sqrt(1 / fan_in)` with fan_in the product of all but the last axis), biases zeros. Drawing
    on the host avoids compiling an initialiser (tens of seconds for V on a busy 2-core CPU).
    """
    rng = np.random.default_rng(seed)

    def draw(path: str, shape: tuple[int, ...]) -> np.ndarray:
        if path.rsplit("/", 1)[-1] == "bias" or len(shape) < 2:
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:-1]))
        std = np.sqrt(1.0 / fan_in) / 0.87962566103423978
        return (np.clip(rng.standard_normal(shape), -2.0, 2.0) * std).astype(np.float32)

    shapes = flatten_tree(jax_shapes(template.to_pure_dict()))
    return unflatten_tree({path: draw(path, tuple(value.shape)) for path, value in sorted(shapes.items())})


def init_module(factory: Any, seed: int) -> Any:
    """The module `factory()` builds, with parameters from `numpy_init` (no initialiser runs)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, params, rest = nnx.split(nnx.eval_shape(factory), nnx.Param, ...)
    nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, numpy_init(params, seed)))
    if jax.tree.leaves(rest):
        raise ValueError("init_module only handles modules whose state is all nnx.Param")
    return nnx.merge(graphdef, params, rest)
