"""Copying named arrays into a (possibly abstract) NNX VQGAN, checking names and shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lwm.model.formats.safe_files import WeightMappingError


def iter_variables(model: nnx.Module) -> Iterator[tuple[tuple, nnx.Variable]]:
    """`(path, variable)` for every variable of `model`."""
    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.Variable):
            yield path, value


def variable_names(model: nnx.Module) -> dict[str, nnx.Variable]:
    """`{dotted name: variable}` of `model`."""
    return {".".join(str(part) for part in path): variable for path, variable in iter_variables(model)}


def assign_weights(model: nnx.Module, weights: Mapping[str, np.ndarray], source: str, *,
                   display: Callable[[str], str] | None = None) -> nnx.Module:
    """Copies `{our dotted name: array}` into the model (which may be abstract, as from
    `abstract_vqgan`), checking that every variable is given exactly once with its shape;
    raises `WeightMappingError` naming `source` and what is missing, extra or misshapen.
    `display` turns our names into the file's names for the messages."""
    show = display or (lambda name: name)
    variables = variable_names(model)
    missing = sorted(show(name) for name in set(variables) - set(weights))
    extra = sorted(show(name) for name in set(weights) - set(variables))
    if missing or extra:
        raise WeightMappingError(
            f"{source}: weights do not match the model built from its config; "
            f"missing {missing[:8]}{' ...' if len(missing) > 8 else ''}, "
            f"unexpected {extra[:8]}{' ...' if len(extra) > 8 else ''}"
        )
    for name, variable in variables.items():
        array = np.asarray(weights[name])
        if array.shape != variable.shape:
            raise WeightMappingError(
                f"{source}: {show(name)} has shape {array.shape}, the model expects {variable.shape}"
            )
        variable.set_value(jnp.asarray(array, dtype=variable.dtype))
    return model
