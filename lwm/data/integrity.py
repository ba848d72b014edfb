"""Checks that data on disk is whole: token-store chunks, model directories, VQ checkpoints.

Two kinds of record, both written when the data is written and checked when it is opened:

- Token-store arrays (zarr3 through tensorstore): `store.json` carries, per array, the number
  of chunks that hold committed elements and a CRC-32 of each chunk's committed elements (the
  logical values, little-endian, so an uncommitted tail written into the last chunk by a crashed
  writer does not change it). Opening checks that every chunk file is there with its expected
  size (cheap: one `stat` per chunk); `verify_array_checksums` reads everything and compares.
  Presence is checked explicitly because tensorstore reads a missing chunk as the fill value:
  a deleted shard would otherwise train as zeros.
- Any other directory of files (a model directory, an Orbax checkpoint): a file manifest,
  `lwm-files.json`, lists every file's size and CRC-32. `check_file_manifest` compares sizes
  (and, with `checksums=True`, contents) and raises `IntegrityError` naming the directory and
  file.

Every failure is an `IntegrityError` (a `StoreError` for stores) with a one-line message naming
the path, the array or file, the chunk, and what to do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lwm.errors import LwmError

CHECKSUM_ALGORITHM = "crc32"
INTEGRITY_VERSION = 1
FILE_MANIFEST = "lwm-files.json"
_READ_BLOCK = 1 << 24


class IntegrityError(LwmError, RuntimeError):
    """Data on disk is missing, truncated or altered since it was written."""


def crc32_of_values(values: np.ndarray) -> int:
    """CRC-32 of an array's values as little-endian bytes (independent of the on-disk codec)."""
    array = np.ascontiguousarray(values)
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and not np.little_endian):
        array = array.astype(array.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(array).cast("B")) & 0xFFFFFFFF


def crc32_of_file(path: str | Path) -> int:
    """CRC-32 of a file's bytes, read in blocks."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# Token-store arrays.


class ArrayLayout:
    """Where a 1-D zarr3 array's chunks live and how big each chunk file is.

    Read from the array's `zarr.json`. `chunk_file_bytes` is the exact size of every chunk file
    when the codecs make it fixed (`bytes`, optionally followed by `crc32c`), else None.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        metadata_file = directory / "zarr.json"
        try:
            metadata = json.loads(metadata_file.read_text())
        except FileNotFoundError:
            raise IntegrityError(f"{metadata_file} is missing: the store is damaged; "
                                 f"re-tokenize the data") from None
        except json.JSONDecodeError as error:
            raise IntegrityError(f"{metadata_file}: not valid JSON ({error.msg}): the store is "
                                 f"damaged; re-tokenize the data") from None
        self.chunk_elements = int(metadata["chunk_grid"]["configuration"]["chunk_shape"][0])
        encoding = metadata.get("chunk_key_encoding", {"name": "default"})
        self._default_keys = encoding.get("name", "default") == "default"
        self._separator = encoding.get("configuration", {}).get(
            "separator", "/" if self._default_keys else ".")
        itemsize = np.dtype(metadata["data_type"]).itemsize
        names = [codec["name"] for codec in metadata.get("codecs", [])]
        self.chunk_file_bytes: int | None = None
        if names and names[0] == "bytes" and set(names[1:]) <= {"crc32c"}:
            self.chunk_file_bytes = self.chunk_elements * itemsize + 4 * names.count("crc32c")

    def chunk_path(self, index: int) -> Path:
        """The file of chunk `index`."""
        key = f"c{self._separator}{index}" if self._default_keys else str(index)
        return self.directory / key

    def chunk_count(self, length: int) -> int:
        """Chunks that hold elements `[0, length)`."""
        return math.ceil(length / self.chunk_elements)


def array_checksums(read: Callable[[int, int], np.ndarray], length: int, chunk_elements: int,
                    first_chunk: int = 0) -> list[int]:
    """CRC-32 of the committed elements of each chunk from `first_chunk` on.

    `read(start, stop)` returns the array's values in `[start, stop)`.
    """
    checksums = []
    for chunk in range(first_chunk, math.ceil(length / chunk_elements)):
        start = chunk * chunk_elements
        checksums.append(crc32_of_values(read(start, min(start + chunk_elements, length))))
    return checksums


def check_array_presence(store: Path, name: str, layout: ArrayLayout, length: int,
                         record: Mapping[str, Any],
                         error: type[Exception] = IntegrityError) -> None:
    """Every chunk holding committed elements exists with its expected size, else `error`."""
    expected = layout.chunk_count(length)
    recorded = int(record.get("chunks", -1))
    if recorded != expected:
        raise error(f"{store}: array {name!r} commits {length} elements in {expected} chunks "
                         f"but store.json records {recorded}: the store is damaged; re-tokenize")
    # Chunks recorded as absent were never written (all fill value, elided by a writer that
    # predates storing such chunks); every other committed chunk must be on disk.
    absent = set(record.get("absent", ()))
    for chunk in range(expected):
        if chunk in absent:
            continue
        path = layout.chunk_path(chunk)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise error(f"{store}: array {name!r} chunk {chunk} ({path}) is missing: the "
                             f"store is damaged; re-tokenize or restore it from a copy") from None
        if layout.chunk_file_bytes is not None and size != layout.chunk_file_bytes:
            raise error(f"{store}: array {name!r} chunk {chunk} ({path}) holds {size} bytes, "
                             f"expected {layout.chunk_file_bytes} (truncated or altered): the "
                             f"store is damaged; re-tokenize or restore it from a copy")


def verify_array_checksums(store: Path, name: str, read: Callable[[int, int], np.ndarray],
                           length: int, layout: ArrayLayout, record: Mapping[str, Any],
                           error: type[Exception] = IntegrityError,
                           on_chunk: Callable[[], None] | None = None) -> int:
    """Reads every committed chunk and compares its CRC-32 with `record`; returns chunks checked.

    `on_chunk` is called after each chunk (a progress bar).
    """
    recorded = list(record.get("crc32", []))
    for chunk in range(layout.chunk_count(length)):
        start = chunk * layout.chunk_elements
        stop = min(start + layout.chunk_elements, length)
        where = f"{store}: array {name!r} chunk {chunk} ({layout.chunk_path(chunk)})"
        try:
            actual = crc32_of_values(read(start, stop))
        except ValueError as problem:  # tensorstore: unreadable or failing its own crc32c
            raise error(f"{where} cannot be read ({_first_line(problem)}): the store is "
                             f"damaged; re-tokenize or restore it from a copy") from None
        if chunk >= len(recorded):
            raise error(f"{where} has no checksum in store.json: the store is damaged")
        if actual != recorded[chunk]:
            raise error(f"{where} fails its checksum (crc32 {actual:08x}, store.json "
                             f"records {recorded[chunk]:08x}): the store is damaged; re-tokenize "
                             f"or restore it from a copy")
        if on_chunk is not None:
            on_chunk()
    return layout.chunk_count(length)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Directories of files: model directories, Orbax checkpoints.


def write_file_manifest(directory: str | Path, *, exclude: tuple[str, ...] = ()) -> Path:
    """Records every file under `directory` (size and CRC-32) in `directory/lwm-files.json`.

    Call it after the directory is completely written; the manifest is written atomically, so
    a directory without one was interrupted before it was finished (or predates manifests).
    """
    directory = Path(directory)
    files = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if not path.is_file() or relative == FILE_MANIFEST or relative in exclude:
            continue
        files[relative] = {"bytes": path.stat().st_size, "crc32": crc32_of_file(path)}
    manifest = directory / FILE_MANIFEST
    temporary = manifest.with_name(manifest.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump({"version": INTEGRITY_VERSION, "algorithm": CHECKSUM_ALGORITHM, "files": files},
                  handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, manifest)
    return manifest


def check_file_manifest(directory: str | Path, *, what: str = "directory",
                        checksums: bool = False, required: bool = False) -> bool:
    """Checks `directory` against its `lwm-files.json`: every file present with its size.

    With `checksums`, every file's CRC-32 is compared too. Returns False (nothing checked) when
    the directory has no manifest, unless `required`, which raises. Raises `IntegrityError`
    naming the directory (`what` says what it is: "model directory", "VQ checkpoint") and file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise IntegrityError(f"{what} {directory} does not exist or is not a directory")
    manifest = directory / FILE_MANIFEST
    if not manifest.is_file():
        if required:
            raise IntegrityError(f"{what} {directory} has no {FILE_MANIFEST}: it was not finished "
                                 f"being written; write it again")
        return False
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise IntegrityError(f"{manifest}: unreadable file manifest ({error}); write the "
                             f"{what} again") from None
    for relative, entry in files.items():
        path = directory / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"{what} {directory}: file {relative} is missing: the {what} "
                                 f"is incomplete; restore or rewrite it") from None
        if size != int(entry["bytes"]):
            raise IntegrityError(f"{what} {directory}: file {relative} holds {size} bytes, "
                                 f"expected {entry['bytes']} (truncated or altered); restore or "
                                 f"rewrite it")
        if checksums and crc32_of_file(path) != int(entry["crc32"]):
            raise IntegrityError(f"{what} {directory}: file {relative} fails its checksum "
                                 f"(altered since written); restore or rewrite it")
    return True


def remove_file_manifest(directory: str | Path) -> None:
    """Drops a directory's manifest before its files change (a rerun adding checkpoints), so an
    interrupted rewrite leaves no stale manifest behind; `write_file_manifest` again at the end."""
    with contextlib.suppress(FileNotFoundError):
        (Path(directory) / FILE_MANIFEST).unlink()


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turns a failure while reading `path` (Orbax, tensorstore, msgpack, ...) into one line.

    Checkpoint libraries report a truncated or altered file with errors that name neither the
    file nor the cause (`Event loop is closed`, a tensorstore digest message 200 lines deep);
    inside this block any exception becomes an `IntegrityError` naming `what` and `path` with
    the first line of the innermost cause. Use it around one load call only, so that it wraps
    nothing but reading. `LwmError`s pass through unchanged; the original error stays the
    cause (shown with `--debug`).
    """
    try:
        yield
    except (LwmError, FileNotFoundError):
        raise  # already one line naming the file
    except Exception as error:  # noqa: BLE001 - whatever the reader raised, the file is at fault
        root = error
        while root.__cause__ is not None:  # Orbax wraps tensorstore's precise message
            root = root.__cause__
        detail = _first_line(root)
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise IntegrityError(f"{what} {path} cannot be read ({type(root).__name__}: {detail}): it "
                             f"is incomplete or damaged; restore it or write it again") from error


def write_checkpoint_manifests(run_dir: str | Path, pattern: str = "step_*") -> list[Path]:
    """Gives every finished checkpoint directory under `run_dir` (matching `pattern`) that has
    none a file manifest; a checkpoint is never changed after it is written, so one suffices."""
    written = []
    for child in sorted(Path(run_dir).glob(pattern)):
        if child.is_dir() and not (child / FILE_MANIFEST).is_file():
            written.append(write_file_manifest(child))
    return written


def check_checkpoint_directory(path: str | Path, what: str, pattern: str = "step_*") -> int:
    """Checks the manifests of `path` and of its checkpoint subdirectories (sizes only: cheap).

    Returns how many manifests were checked (0: none to check, e.g. written before manifests).
    """
    path = Path(path)
    checked = int(check_file_manifest(path, what=what)) if path.is_dir() else 0
    for child in sorted(path.glob(pattern)) if path.is_dir() else ():
        if child.is_dir():
            checked += int(check_file_manifest(child, what=what))
    return checked
