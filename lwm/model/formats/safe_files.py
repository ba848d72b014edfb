"""Reading parameter files without executing code: flax msgpack trees and restricted pickles.

Pickles go through `SafeUnpickler`, which allows exactly the globals numpy (and jax, whose
arrays pickle through `jax._src.array._reconstruct_array`) need to rebuild arrays, plus flax's
`FrozenDict` (a parameter tree from an older flax `init`), and refuses every other one, so a
pickle cannot run code. jax arrays come back as numpy arrays and FrozenDicts as dicts: those
globals are replaced by functions that only rebuild the numpy value or the dict.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lwm.errors import LwmError
from lwm.model.formats.lwm_streaming import read_flax_msgpack


class UnsafeFileError(LwmError, pickle.UnpicklingError):
    """A parameter file asked to load something other than plain arrays and dicts."""


class WeightMappingError(LwmError, ValueError):
    """A weight file's names or shapes do not fit the model built from its config."""


_NUMPY_RECONSTRUCT = frozenset({("numpy.core.multiarray", "_reconstruct"),
                                ("numpy._core.multiarray", "_reconstruct")})
_ALLOWED_PICKLE_GLOBALS = _NUMPY_RECONSTRUCT | frozenset({
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
    ("_codecs", "encode"),
})
_JAX_RECONSTRUCT = ("jax._src.array", "_reconstruct_array")


def _rebuild_jax_array(fun: Any, args: Any, arr_state: Any, aval_state: Any) -> np.ndarray:
    """What `jax._src.array._reconstruct_array` does, minus the device transfer: the numpy value."""
    if not (getattr(fun, "__name__", None) == "_reconstruct" and
            getattr(fun, "__module__", "").startswith("numpy")):
        raise UnsafeFileError("a jax array in the pickle is rebuilt by something other than numpy")
    value = fun(*args)
    value.__setstate__(arr_state)
    return value


_FROZEN_DICT = ("flax.core.frozen_dict", "FrozenDict")


def _plain_dict(mapping: Any = None) -> dict:
    """What unpickling a flax `FrozenDict` needs (`FrozenDict(dict)`), as a plain dict."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise UnsafeFileError(f"a FrozenDict in the pickle is built from a {type(mapping).__name__}, not a dict")
    return dict(mapping)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy (and jax) arrays, dicts, lists and scalars, and refuses
    every other global, so a pickle cannot run code (no `os.system`, no arbitrary constructors)."""

    def find_class(self, module: str, name: str) -> Any:
        """Returns the global only when it is on the array allow list."""
        if (module, name) == _JAX_RECONSTRUCT:
            return _rebuild_jax_array
        if (module, name) == _FROZEN_DICT:  # flax parameter trees pickled as FrozenDicts
            return _plain_dict
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeFileError(
            f"refusing to load global {module}.{name}: only numpy/jax arrays and plain containers "
            f"are allowed in a parameter file"
        )

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids (torch's storage references, for example) are refused."""
        raise UnsafeFileError(f"refusing persistent id {pid!r}: not a plain array file")


def check_plain_tree(tree: Any, path: str, where: str) -> Any:
    """Converts a loaded tree to nested dicts of numeric numpy arrays, refusing anything else."""
    if isinstance(tree, Mapping):
        return {str(key): check_plain_tree(value, f"{path}{key}.", where) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(index): check_plain_tree(value, f"{path}{index}.", where)
                for index, value in enumerate(tree)}
    if isinstance(tree, (np.ndarray, np.generic, int, float)) and not isinstance(tree, bool):
        array = np.asarray(tree)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number)
                                         or array.dtype.name == "bfloat16"):
            raise UnsafeFileError(f"{where}: {path.rstrip('.')} has dtype {array.dtype}, not numeric")
        return array
    raise UnsafeFileError(
        f"{where}: {path.rstrip('.') or 'the top level'} is a {type(tree).__name__}; "
        f"expected nested dicts of arrays"
    )


class ParamFileError(LwmError, ValueError):
    """A parameter file is neither a readable pickle nor a flax msgpack tree."""


def load_param_file(path: str | Path) -> dict[str, Any]:
    """Reads a nested dict of arrays from a flax msgpack file or a pickle, without running code.

    The format is recognised from the first byte (pickles start with 0x80). Raises
    `UnsafeFileError` for pickles that reference anything but arrays, and `ParamFileError`
    naming the file when it is neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise ParamFileError(f"{path}: no such parameter file")
    data = path.read_bytes()
    if data[:1] == b"\x80":
        try:
            tree = SafeUnpickler(io.BytesIO(data)).load()
        except UnsafeFileError as error:
            raise UnsafeFileError(f"{path}: {error}") from None
        except Exception as error:  # truncated or corrupt pickles raise many types
            raise ParamFileError(f"{path}: not a readable pickle: {error}") from None
    else:
        try:
            tree = read_flax_msgpack(path)
        except LwmError as error:
            raise ParamFileError(f"neither a pickle nor a flax msgpack file: {error}") from None
    return check_plain_tree(tree, "", str(path))


def flatten_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts to `{"a.b.c": array}`."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, name + "."))
        else:
            flat[name] = np.asarray(value)
    return flat
