"""tux / EasyLM streaming msgpack checkpoints: the format of LWM's released `params` files.

The file has no header and no index. It is a bare concatenation of msgpack records, one per
array, in `flax.traverse_util.flatten_dict` order. A record is a two-element array
`[key_path, value]`: `key_path` a list of strings, `value` a msgpack bin holding
`flax.serialization.to_bytes(array)`, which is either

- an ExtType with code 1 whose payload is the msgpack triple `[shape, dtype name, raw C-order
  little-endian bytes]` (dtype name `float32`, `bfloat16`, ...), or
- for arrays above 2**30 bytes, flax's chunked form: a map `{"__msgpack_chunked_array__": true,
  "shape": {"0": d0, ...}, "chunks": {"0": <ExtType of a flat 1-D slice>, ...}}`.

LWM names what to load with a spec `KIND::PATH` (`StreamingCheckpointer.load_trainstate_checkpoint`):

- `params::F`: a streaming file of the parameters, keys `params/transformer/...`;
- `trainstate::F` / `trainstate_params::F`: a streaming file of a whole train state
  (`params/params/...`, `opt_state/...`, `step`); only the parameters are kept;
- `flax_params::F`: one plain flax msgpack tree of the parameters (no streaming).

`read_lwm_params` yields `(key_path, array)` for every parameter with the key paths relative to
the parameter root (`("transformer", "wte", "embedding")`, ...), one array at a time: the
file is never held whole in memory (the `flax_params` form excepted: it is one object).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from lwm.errors import LwmError

SPEC_KINDS = ("params", "trainstate_params", "trainstate", "flax_params")
CHUNK_BYTES = 2**30  # flax's MAX_CHUNK_SIZE: arrays above it are written chunked
_CHUNK_MARK = "__msgpack_chunked_array__"
_EXT_NDARRAY = 1
_EXT_NPSCALAR = 3
_READ_SIZE = 64 * 2**20
_MAX_RECORD = 2**36


class CheckpointFormatError(LwmError, ValueError):
    """A checkpoint file is truncated, corrupt, or not in the format its spec names."""


def parse_spec(spec: str | Path) -> tuple[str, Path]:
    """Splits LWM's `KIND::PATH` load spec; a bare path means `params::PATH`."""
    text = str(spec)
    if "::" not in text:
        return "params", Path(text)
    kind, path = text.split("::", 1)
    if kind not in SPEC_KINDS:
        raise CheckpointFormatError(
            f"{spec}: unknown load spec kind {kind!r}; use one of "
            + ", ".join(f"{name}::FILE" for name in SPEC_KINDS)
        )
    return kind, Path(path)


# ---------------------------------------------------------------------------------------------
# Array encoding (flax.serialization's msgpack layout)

def _dtype_name(dtype: np.dtype) -> str:
    name = np.dtype(dtype).name
    if name not in ("float32", "bfloat16", "float16", "float64", "int32", "int64", "int8", "uint8",
                    "int16", "uint32", "bool"):
        raise ValueError(f"dtype {name} cannot be written to an LWM checkpoint")
    return name


def _dtype_from_name(name: str | bytes) -> np.dtype:
    if isinstance(name, bytes):
        name = name.decode("ascii")
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _array_ext(array: np.ndarray) -> msgpack.ExtType:
    payload = msgpack.packb(
        (list(array.shape), _dtype_name(array.dtype), np.ascontiguousarray(array).tobytes("C")),
        use_bin_type=True,
    )
    return msgpack.ExtType(_EXT_NDARRAY, payload)


def encode_array(array: Any, chunk_bytes: int = CHUNK_BYTES) -> bytes:
    """`flax.serialization.to_bytes(array)`: the value of one streaming record.

    Arrays above `chunk_bytes` bytes are written in flax's chunked form with flat slices of
    `chunk_bytes // itemsize` elements (flax uses 2**30; tests pass less).
    """
    array = np.asarray(array)
    if array.size * array.dtype.itemsize > chunk_bytes:
        step = max(1, chunk_bytes // array.dtype.itemsize)
        flat = array.reshape(-1)
        tree = {
            _CHUNK_MARK: True,
            "shape": {str(i): int(d) for i, d in enumerate(array.shape)},
            "chunks": {str(n): _array_ext(flat[start:start + step])
                       for n, start in enumerate(range(0, flat.size, step))},
        }
        return msgpack.packb(tree, use_bin_type=True)
    return msgpack.packb(_array_ext(array), use_bin_type=True)


def _ext_hook(code: int, data: bytes) -> Any:
    if code in (_EXT_NDARRAY, _EXT_NPSCALAR):
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        array = np.frombuffer(buffer, dtype=_dtype_from_name(dtype_name)).reshape(shape)
        return array if code == _EXT_NDARRAY else array[()]
    return msgpack.ExtType(code, data)


def _unchunk(tree: dict, where: str) -> np.ndarray:
    try:
        shape = tuple(int(tree["shape"][str(i)]) for i in range(len(tree["shape"])))
        chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
        flat = np.concatenate([np.asarray(chunk).reshape(-1) for chunk in chunks])
        return flat.reshape(shape)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointFormatError(f"{where}: a malformed chunked array ({error})") from None


def _restore_arrays(tree: Any, where: str) -> Any:
    """Replaces flax's chunked-array maps in a decoded tree by arrays."""
    if isinstance(tree, dict):
        if tree.get(_CHUNK_MARK):
            return _unchunk(tree, where)
        return {key: _restore_arrays(value, f"{where}/{key}") for key, value in tree.items()}
    return tree


def decode_array(value: Any, where: str) -> np.ndarray:
    """The array a streaming record's value holds (`flax.serialization.from_bytes(None, value)`)."""
    if not isinstance(value, bytes):
        raise CheckpointFormatError(f"{where}: the record holds a {type(value).__name__}, not array bytes")
    try:
        decoded = msgpack.unpackb(value, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as error:  # msgpack raises several types for corrupt data
        raise CheckpointFormatError(f"{where}: corrupt array bytes ({error})") from None
    decoded = _restore_arrays(decoded, where)
    if isinstance(decoded, (np.ndarray, np.generic)):
        return np.asarray(decoded)
    if isinstance(decoded, (int, float)) and not isinstance(decoded, bool):
        return np.asarray(decoded)
    raise CheckpointFormatError(f"{where}: the record holds a {type(decoded).__name__}, not an array")


# ---------------------------------------------------------------------------------------------
# Reading

def _progress(total: int, description: str):
    import jax
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=description,
                disable=jax.process_index() != 0, leave=False)


def iter_streaming_records(path: str | Path, *, progress: bool = True,
                           keep: Any = None) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """`(key_path, array)` for each record of a streaming file, read one record at a time.

    `keep(key_path) -> bool`, when given, skips the other records without decoding them (the
    optimizer state of a train state). Raises `CheckpointFormatError` naming the file and the
    last key read when the file is truncated or a record is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    last = "(start of file)"
    with open(path, "rb") as handle, _progress(size if progress else 0, f"read {path.name}") as bar:
        # A scanned 7B float32 file has records of ~5.8 GB; msgpack's 0 ("unlimited") means 4 GiB.
        unpacker = msgpack.Unpacker(handle, read_size=_READ_SIZE, max_buffer_size=_MAX_RECORD, raw=False,
                                    strict_map_key=False)
        done = 0
        while True:
            try:
                record = unpacker.unpack()
            except msgpack.OutOfData:
                break
            except Exception as error:
                raise CheckpointFormatError(
                    f"{path}: corrupt record after key {last} at byte {done} ({error}); "
                    f"not a tux/EasyLM streaming checkpoint?"
                ) from None
            position = unpacker.tell()
            if progress:
                bar.update(position - done)
            done = position
            if not (isinstance(record, (list, tuple)) and len(record) == 2
                    and isinstance(record[0], (list, tuple))
                    and all(isinstance(part, str) for part in record[0])):
                raise CheckpointFormatError(
                    f"{path}: the record after key {last} is not [key path, array bytes]; "
                    f"not a tux/EasyLM streaming checkpoint (for one flax msgpack tree use "
                    f"flax_params::{path})"
                )
            key = tuple(record[0])
            last = "/".join(key)
            if keep is not None and not keep(key):
                continue
            yield key, decode_array(record[1], f"{path}: {last}")
        if done != size:
            raise CheckpointFormatError(
                f"{path}: truncated after key {last} ({done} of {size} bytes form whole records); "
                f"copy the file again"
            )


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, prefix + (str(key),))
    else:
        yield prefix, tree


def read_flax_msgpack(path: str | Path) -> dict[str, Any]:
    """One plain flax msgpack tree (`flax.serialization.to_bytes(tree)`), arrays restored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except msgpack.ExtraData:
        raise CheckpointFormatError(
            f"{path}: holds several msgpack objects: a streaming checkpoint, load it as params::{path}"
        ) from None
    except Exception as error:
        raise CheckpointFormatError(f"{path}: not a flax msgpack file ({error})") from None
    if not isinstance(tree, dict):
        raise CheckpointFormatError(f"{path}: the msgpack object is a {type(tree).__name__}, not a tree")
    return _restore_arrays(tree, str(path))


def read_lwm_params(spec: str | Path, *, progress: bool = True) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """`(key_path, array)` of every parameter named by an LWM load spec, keys relative to the
    parameter root (they start with `transformer`, `lm_head`, `vision_head`).

    The `params` wrapper flax puts around a module's parameters is removed wherever it is; for
    the two train-state kinds only the `params` subtree is read.
    """
    kind, path = parse_spec(spec)
    if kind == "flax_params":
        items: Iterable[tuple[tuple[str, ...], Any]] = _flatten(read_flax_msgpack(path))
        skip = 0
    elif kind == "params":
        items = iter_streaming_records(path, progress=progress)
        skip = 0
    else:
        items = iter_streaming_records(path, progress=progress, keep=lambda key: key[:1] == ("params",))
        skip = 1
    for key, value in items:
        key = key[skip:]
        if key[:1] == ("params",):
            key = key[1:]
        if not key:
            raise CheckpointFormatError(f"{path}: a record has an empty key path")
        yield key, np.asarray(value)


# ---------------------------------------------------------------------------------------------
# Writing

def write_streaming(path: str | Path, items: Iterable[tuple[tuple[str, ...], Any]], *,
                    chunk_bytes: int = CHUNK_BYTES, progress_total: int | None = None) -> Path:
    """Writes `(key_path, array)` records as tux's `StreamingCheckpointer.save_checkpoint` does.

    The file is written to `PATH.partial` and renamed when complete, so a crash never leaves a
    file that looks whole. Returns the path.
    """
    import jax
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    packer = msgpack.Packer(use_bin_type=True)
    try:
        with open(partial, "wb") as handle, tqdm(total=progress_total, desc=f"write {path.name}",
                                                 disable=jax.process_index() != 0, leave=False) as bar:
            for key, array in items:
                _write_record(handle, packer, key, array, chunk_bytes)
                bar.update(1)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return path


def _write_record(handle: BinaryIO, packer: msgpack.Packer, key: tuple[str, ...], array: Any,
                  chunk_bytes: int) -> None:
    value = encode_array(array, chunk_bytes)
    if len(value) >= 2**32:
        # msgpack's largest bin is 4 GiB - 1: tux could not write (nor read) such a record either.
        raise CheckpointFormatError(
            f"{'/'.join(key)} takes {len(value) / 2**30:.1f} GiB, more than one msgpack record holds; "
            f"write it with --dtype bfloat16 or --no-scan-layers"
        )
    handle.write(packer.pack([list(key), value]))
