"""The token store: tokenized examples on disk as tensorstore zarr3 arrays.

Layout of a store directory:

- `tokens/` int32 `[num_tokens]`: every example's token ids, one after another. Text ids are in
  the text vocabulary, vision ids in the vision vocabulary; `is_vision` tells them apart.
- `is_vision/` uint8 `[num_tokens]`: 1 where the token is a vision token.
- `loss_mask/` uint8 `[num_tokens]`: 1 where the token, as a prediction target, carries loss.
- `offsets/` int64 `[num_examples + 1]`: example `i` is `tokens[offsets[i]:offsets[i + 1]]`.
- `store.json`: metadata (format version, tokenizer, vocabulary sizes, anything the writer
  adds), the committed counts `num_examples` and `num_tokens`, and `integrity`: per array the
  number of chunks holding committed elements and a CRC-32 of each (`lwm/data/integrity.py`).

Integrity: opening a store checks that every committed chunk file is there with its size (a
missing chunk would otherwise read as zeros), `TokenStore.verify()` (`lwm inspect-store
--verify`) reads everything and compares the checksums. Stores written before checksums were
recorded open with a one-line warning that they cannot be verified; `rehash_store` (`lwm
inspect-store --rehash`) adds checksums of their present contents.

Crash safety: a writer appends a shard by growing the arrays and writing the new range, and only
then replaces `store.json` atomically (write a temporary file, fsync, rename). Readers trust only
the counts in `store.json`, so a shard whose arrays were written but not committed is never read;
a writer reopening the store cuts the arrays back to the committed counts and carries on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorstore as ts

from lwm.data import integrity
from lwm.errors import LwmError

FORMAT_VERSION = 1
METADATA_FILE = "store.json"
TOKEN_ARRAYS = {"tokens": "int32", "is_vision": "uint8", "loss_mask": "uint8"}
ALL_ARRAYS = (*TOKEN_ARRAYS, "offsets")
DEFAULT_CHUNK_TOKENS = 1 << 18
DEFAULT_FLUSH_TOKENS = 1 << 22
_UNSET = object()


class StoreError(LwmError, RuntimeError):
    """A token store is missing, of another format version, or inconsistent on disk."""


@dataclasses.dataclass(frozen=True)
class TokenExample:
    """One tokenized example: parallel arrays of equal length.

    `loss_mask[i]` says whether token `i` is a prediction target that carries loss (so the
    first token of an example never counts: nothing predicts it).
    """

    tokens: np.ndarray
    is_vision: np.ndarray
    loss_mask: np.ndarray

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.is_vision) == len(self.loss_mask)):
            raise ValueError(
                f"TokenExample arrays differ in length: tokens {len(self.tokens)}, is_vision "
                f"{len(self.is_vision)}, loss_mask {len(self.loss_mask)}"
            )

    @classmethod
    def make(cls, tokens: Any, is_vision: Any = None, loss_mask: Any = None) -> TokenExample:
        """Builds an example from array-likes; `is_vision` defaults to all text, `loss_mask` to all 1."""
        tokens = np.asarray(tokens, dtype=np.int32).reshape(-1)
        vision = np.zeros(len(tokens), bool) if is_vision is None else np.asarray(is_vision, bool)
        loss = np.ones(len(tokens), bool) if loss_mask is None else np.asarray(loss_mask, bool)
        return cls(tokens, vision.reshape(-1), loss.reshape(-1))

    def __len__(self) -> int:
        return len(self.tokens)


def _array_spec(path: Path, dtype: str | None = None, chunk: int | None = None) -> dict[str, Any]:
    # Every chunk is written even when it holds only the fill value, so that a missing chunk
    # file always means damage; plain little-endian bytes plus zarr's crc32c give chunk files of
    # one known size (checked at open) that tensorstore verifies on every read. (Without codecs
    # tensorstore shards each chunk into one-element inner chunks, 16 index bytes per token.)
    spec: dict[str, Any] = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
                            "store_data_equal_to_fill_value": True}
    if dtype is not None:
        bytes_codec: dict[str, Any] = {"name": "bytes"}
        if np.dtype(dtype).itemsize > 1:
            bytes_codec["configuration"] = {"endian": "little"}
        spec["metadata"] = {
            "shape": [0],
            "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [chunk]}},
            "codecs": [bytes_codec, {"name": "crc32c"}],
        }
    return spec


def _committed_lengths(metadata: Mapping[str, Any]) -> dict[str, int]:
    tokens = int(metadata["num_tokens"])
    return {"tokens": tokens, "is_vision": tokens, "loss_mask": tokens,
            "offsets": int(metadata["num_examples"]) + 1}


def _reader(array: Any) -> Any:
    return lambda start, stop: array[start:stop].read().result()


_warned_unverifiable: set[str] = set()


def _check_presence(path: Path, metadata: Mapping[str, Any]) -> None:
    """Every committed chunk of every array is on disk with its size; warns for legacy stores."""
    record = metadata.get("integrity")
    if record is None:
        if str(path) not in _warned_unverifiable:
            _warned_unverifiable.add(str(path))
            print(f"lwm: warning: token store {path} records no chunk checksums (written before "
                  f"they were kept), so missing or damaged chunks cannot be detected; run `lwm "
                  f"inspect-store --rehash {path}` to add them", file=sys.stderr)
        return
    for name, length in _committed_lengths(metadata).items():
        if name not in record.get("arrays", {}):
            raise StoreError(f"{path}/{METADATA_FILE}: integrity records no array {name!r}: the "
                             f"store is damaged; re-tokenize")
        integrity.check_array_presence(path, name, _layout(path, name), length,
                                       record["arrays"][name], StoreError)


def _layout(path: Path, name: str) -> integrity.ArrayLayout:
    try:
        return integrity.ArrayLayout(path / name)
    except integrity.IntegrityError as error:
        raise StoreError(str(error)) from None


def _open_array(path: Path, name: str) -> Any:
    try:
        return ts.open(_array_spec(path / name), open=True).result()
    except ValueError as error:
        raise StoreError(f"{path}: array {name!r} cannot be opened "
                         f"({integrity._first_line(error)}): the store is damaged; "
                         f"re-tokenize") from None


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    """Writes JSON so that a reader sees either the old or the new file, never a torn one."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def read_store_metadata(path: str | Path) -> dict[str, Any]:
    """The committed `store.json` of the store at `path`; raises `StoreError` if absent or foreign."""
    file = Path(path) / METADATA_FILE
    if Path(path).is_file():
        raise StoreError(f"{path} is a file, not a token store directory")
    if not file.is_file():
        raise StoreError(f"{path} is not a token store: {METADATA_FILE} is missing")
    try:
        metadata = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{file}: not valid JSON ({error}); the store is damaged") from None
    if not isinstance(metadata, dict):
        raise StoreError(f"{file}: expected a JSON object; the store is damaged")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"{file}: format_version {version!r}, this code reads version {FORMAT_VERSION}; "
            f"re-tokenize the data"
        )
    return metadata


class TokenStoreWriter:
    """Appends examples to a token store, committing each flushed shard atomically.

    Create a new store with `TokenStoreWriter.create(...)`, or reopen one (after a crash, or to
    add data) with `TokenStoreWriter.open(path)`. Examples are buffered and written when the
    buffer holds `flush_tokens` tokens, on `flush()` and on `close()`. `set_progress(...)` stores
    a small JSON-able dict with the next commit, so an interrupted job knows where to resume.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], *, flush_tokens: int) -> None:
        self.path = path
        self._metadata = metadata
        self._flush_tokens = flush_tokens
        self._arrays = {name: _open_array(path, name) for name in TOKEN_ARRAYS}
        self._offsets = _open_array(path, "offsets")
        _check_presence(path, metadata)
        self._buffer: list[TokenExample] = []
        self._buffered_tokens = 0
        self._shard: dict[str, int] = {}
        self._dirty = False
        self._pending_progress: Any = _UNSET
        self._truncate_to_committed()

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        tokenizer_name: str,
        text_vocab_size: int,
        vision_vocab_size: int = 0,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        flush_tokens: int = DEFAULT_FLUSH_TOKENS,
    ) -> TokenStoreWriter:
        """Creates an empty store at `path` (refusing an existing one unless `overwrite`)."""
        path = Path(path)
        if path.is_file():
            raise StoreError(f"{path} is a file: name a new directory for the token store")
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty directory (made for the store) holds nothing to lose
        if path.exists():
            if not overwrite:
                raise StoreError(
                    f"{path} already exists: pass overwrite=True to replace it, or "
                    f"TokenStoreWriter.open to append to it"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for name, dtype in TOKEN_ARRAYS.items():
            ts.open(_array_spec(path / name, dtype, chunk_tokens), create=True).result()
        offsets = ts.open(_array_spec(path / "offsets", "int64", max(1, chunk_tokens // 8)),
                          create=True).result()
        offsets = offsets.resize(exclusive_max=[1], expand_only=True).result()
        offsets[0:1].write(np.zeros(1, np.int64)).result()
        full = dict(metadata or {})
        full.update(
            format_version=FORMAT_VERSION,
            tokenizer=tokenizer_name,
            text_vocab_size=int(text_vocab_size),
            vision_vocab_size=int(vision_vocab_size),
            num_examples=0,
            num_tokens=0,
            num_vision_tokens=0,
            num_loss_tokens=0,
            progress=None,
            integrity={"version": integrity.INTEGRITY_VERSION,
                       "algorithm": integrity.CHECKSUM_ALGORITHM,
                       "arrays": {name: {"chunks": 0, "crc32": []} for name in TOKEN_ARRAYS}},
        )
        full["integrity"]["arrays"]["offsets"] = {
            "chunks": 1, "crc32": [integrity.crc32_of_values(np.zeros(1, np.int64))]}
        _write_json_atomically(path / METADATA_FILE, full)
        return cls(path, full, flush_tokens=flush_tokens)

    @classmethod
    def open(cls, path: str | Path, *, flush_tokens: int = DEFAULT_FLUSH_TOKENS) -> TokenStoreWriter:
        """Reopens a store for appending, discarding any uncommitted (half-written) tail."""
        path = Path(path)
        return cls(path, read_store_metadata(path), flush_tokens=flush_tokens)

    def _truncate_to_committed(self) -> None:
        tokens, examples = self.num_tokens, self.num_examples
        for name, array in self._arrays.items():
            if array.shape[0] < tokens:
                raise StoreError(f"{self.path}/{name} holds {array.shape[0]} tokens, fewer than "
                                 f"the committed {tokens}: the store is damaged")
            if array.shape[0] > tokens:
                self._arrays[name] = array.resize(exclusive_max=[tokens], shrink_only=True).result()
        if self._offsets.shape[0] < examples + 1:
            raise StoreError(f"{self.path}/offsets holds {self._offsets.shape[0]} entries, fewer "
                             f"than the committed {examples + 1}: the store is damaged")
        if self._offsets.shape[0] > examples + 1:
            self._offsets = self._offsets.resize(exclusive_max=[examples + 1], shrink_only=True).result()

    @property
    def num_examples(self) -> int:
        """Committed examples (buffered ones are not counted until flushed)."""
        return int(self._metadata["num_examples"])

    @property
    def num_tokens(self) -> int:
        """Committed tokens."""
        return int(self._metadata["num_tokens"])

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the committed metadata."""
        return dict(self._metadata)

    @property
    def progress(self) -> Any:
        """The progress dict committed with the last shard (None if never set)."""
        return self._metadata.get("progress")

    def append(self, example: TokenExample) -> None:
        """Buffers one example; writes a shard when the buffer is full. Empty examples are refused."""
        if len(example) == 0:
            raise ValueError("TokenStoreWriter.append: an example must hold at least one token")
        self._buffer.append(example)
        self._buffered_tokens += len(example)
        if self._buffered_tokens >= self._flush_tokens:
            self.flush()

    def append_all(self, examples: Sequence[TokenExample]) -> None:
        """Buffers several examples as one unit: a shard never holds only some of them.

        For producers that make several examples from one input record and commit their
        position after the record (a resumed run then neither loses nor repeats any of them).
        """
        for example in examples:
            if len(example) == 0:
                raise ValueError("TokenStoreWriter.append: an example must hold at least one token")
        self._buffer.extend(examples)
        self._buffered_tokens += sum(len(example) for example in examples)
        if self._buffered_tokens >= self._flush_tokens:
            self.flush()

    def set_progress(self, progress: Any) -> None:
        """Records where the producer is (e.g. file and line); committed with each later shard.

        `progress` is a JSON-able value, or a zero-argument callable returning one, which is
        called at every commit (so it can report the position after the last buffered example).
        """
        self._pending_progress = progress
        self._dirty = True

    def update_metadata(self, **entries: Any) -> None:
        """Adds JSON-able entries to the metadata; committed with the next flush."""
        reserved = {"format_version", "num_examples", "num_tokens", "progress", "integrity"}
        if reserved & entries.keys():
            raise ValueError(f"update_metadata cannot set {sorted(reserved & entries.keys())}")
        self._metadata.update(entries)
        self._dirty = True

    def flush(self) -> None:
        """Writes the buffered examples as one shard, then commits the new counts atomically."""
        if not self._buffer and not self._dirty:
            return
        self._write_shard()
        self._commit()

    def _write_shard(self) -> None:
        """Grows the arrays and writes the buffered examples past the committed end (no commit)."""
        if not self._buffer:
            return
        start_token, start_example = self.num_tokens, self.num_examples
        lengths = np.array([len(example) for example in self._buffer], np.int64)
        end_token = start_token + int(lengths.sum())
        columns = {
            "tokens": np.concatenate([e.tokens for e in self._buffer]).astype(np.int32),
            "is_vision": np.concatenate([e.is_vision for e in self._buffer]).astype(np.uint8),
            "loss_mask": np.concatenate([e.loss_mask for e in self._buffer]).astype(np.uint8),
        }
        writes = []
        for name, values in columns.items():
            array = self._arrays[name].resize(exclusive_max=[end_token], expand_only=True).result()
            self._arrays[name] = array
            writes.append(array[start_token:end_token].write(values))
        end_example = start_example + len(self._buffer)
        offsets = self._offsets.resize(exclusive_max=[end_example + 1], expand_only=True).result()
        self._offsets = offsets
        writes.append(offsets[start_example + 1:end_example + 1].write(start_token + np.cumsum(lengths)))
        for write in writes:
            write.result()
        checksums = self._updated_checksums(
            {"tokens": (start_token, end_token), "is_vision": (start_token, end_token),
             "loss_mask": (start_token, end_token),
             "offsets": (start_example + 1, end_example + 1)})
        self._shard = {
            "num_examples": end_example,
            "num_tokens": end_token,
            "num_vision_tokens": int(self._metadata["num_vision_tokens"]) + int(columns["is_vision"].sum()),
            "num_loss_tokens": int(self._metadata["num_loss_tokens"]) + int(columns["loss_mask"].sum()),
        }
        if checksums is not None:
            self._shard["integrity"] = checksums

    def _updated_checksums(self, written: Mapping[str, tuple[int, int]]) -> dict[str, Any] | None:
        """The integrity record after writing `[start, end)` of each array (None: legacy store).

        Only the chunks the write touched are read back and hashed; the others keep their
        recorded checksums.
        """
        record = self._metadata.get("integrity")
        if record is None:
            return None
        arrays = {}
        for name, (start, end) in written.items():
            array = self._offsets if name == "offsets" else self._arrays[name]
            chunk = _layout(self.path, name).chunk_elements
            first = start // chunk
            crcs = list(record["arrays"][name]["crc32"][:first])
            crcs += integrity.array_checksums(_reader(array), end, chunk, first)
            arrays[name] = {"chunks": len(crcs), "crc32": crcs}
            absent = [i for i in record["arrays"][name].get("absent", ()) if i < first]
            if absent:
                arrays[name]["absent"] = absent
        return {**record, "arrays": arrays}

    def _commit(self) -> None:
        """Publishes the written shard: only now do readers (and a reopening writer) see it."""
        metadata = dict(self._metadata)
        metadata.update(self._shard)
        if self._pending_progress is not _UNSET:
            progress = self._pending_progress
            metadata["progress"] = progress() if callable(progress) else progress
        _write_json_atomically(self.path / METADATA_FILE, metadata)
        self._metadata = metadata
        self._buffer, self._buffered_tokens = [], 0
        self._dirty = False
        self._shard = {}
        if not callable(self._pending_progress):
            self._pending_progress = _UNSET

    def close(self) -> None:
        """Flushes what is buffered."""
        self.flush()

    def __enter__(self) -> TokenStoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        # On an exception the buffered examples are not committed: the store stays at its last
        # consistent state and a rerun resumes from the committed progress.
        if exc_type is None:
            self.close()


class TokenStore:
    """Random-access reader of a committed token store.

    `store[i]` is a `TokenExample`; `read_many(indices)` issues all reads at once and then
    collects them (several times faster than one by one). The example offsets are held in
    memory (8 bytes per example). Only the committed counts of `store.json` are trusted.
    Picklable (reopens on unpickling), so grain worker processes can read from it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.metadata = read_store_metadata(self.path)
        self.num_examples = int(self.metadata["num_examples"])
        self.num_tokens = int(self.metadata["num_tokens"])
        self._arrays = {}
        for name in TOKEN_ARRAYS:
            array = _open_array(self.path, name)
            if array.shape[0] < self.num_tokens:
                raise StoreError(f"{self.path}/{name} holds {array.shape[0]} tokens but "
                                 f"{METADATA_FILE} commits {self.num_tokens}: the store is damaged")
            self._arrays[name] = array
        offsets = _open_array(self.path, "offsets")
        if offsets.shape[0] < self.num_examples + 1:
            raise StoreError(f"{self.path}/offsets holds {offsets.shape[0]} entries but "
                             f"{METADATA_FILE} commits {self.num_examples} examples: damaged store")
        _check_presence(self.path, self.metadata)
        self._offsets_array = offsets
        try:
            self.offsets = offsets[: self.num_examples + 1].read().result().astype(np.int64)
        except ValueError as error:
            raise StoreError(f"{self.path}: array 'offsets' cannot be read "
                             f"({integrity._first_line(error)}): the store is damaged; run `lwm "
                             f"inspect-store --verify {self.path}` to find the chunk") from None
        if self.offsets[-1] != self.num_tokens or np.any(np.diff(self.offsets) <= 0):
            raise StoreError(f"{self.path}/offsets disagree with {METADATA_FILE} "
                             f"(num_tokens {self.num_tokens}): the store is damaged")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def __len__(self) -> int:
        return self.num_examples

    @property
    def lengths(self) -> np.ndarray:
        """Token count of every example, int64 `[num_examples]`."""
        return np.diff(self.offsets)

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += self.num_examples
        if not 0 <= index < self.num_examples:
            raise IndexError(f"example {index} out of range: {self.path} holds {self.num_examples}")
        return index

    def __getitem__(self, index: int) -> TokenExample:
        return self.read_many([index])[0]

    def read_many(self, indices: Sequence[int] | np.ndarray) -> list[TokenExample]:
        """Reads several examples concurrently, in the order given."""
        checked = [self._check_index(index) for index in np.asarray(indices).reshape(-1)]
        futures = []
        for index in checked:
            start, end = int(self.offsets[index]), int(self.offsets[index + 1])
            futures.append([self._arrays[name][start:end].read() for name in TOKEN_ARRAYS])
        examples = []
        try:
            for tokens, vision, loss in futures:
                examples.append(TokenExample(
                    tokens.result().astype(np.int32, copy=False),
                    vision.result().astype(bool),
                    loss.result().astype(bool),
                ))
        except ValueError as error:  # tensorstore: a chunk failing its crc32c, unreadable
            raise StoreError(f"{self.path}: reading examples failed ({integrity._first_line(error)})"
                             f": the store is damaged; run `lwm inspect-store --verify "
                             f"{self.path}` to find the chunk") from None
        return examples

    def verify(self, show_progress: bool = False) -> dict[str, int]:
        """Reads every committed chunk and checks its CRC-32; returns chunks checked per array.

        Raises `StoreError` naming the store, array and chunk of the first mismatch, or saying
        that the store records no checksums (see `rehash_store`).
        """
        record = self.metadata.get("integrity")
        if record is None:
            raise StoreError(f"{self.path} records no chunk checksums (written before they were "
                             f"kept): run `lwm inspect-store --rehash {self.path}` to add them")
        from tqdm import tqdm

        arrays = {**self._arrays, "offsets": self._offsets_array}
        checked = {}
        total = sum(int(entry["chunks"]) for entry in record["arrays"].values())
        with tqdm(total=total, desc="verifying", unit=" chunks", disable=not show_progress,
                  leave=False) as bar:
            for name, length in _committed_lengths(self.metadata).items():
                checked[name] = integrity.verify_array_checksums(
                    self.path, name, _reader(arrays[name]), length, _layout(self.path, name),
                    record["arrays"][name], StoreError, on_chunk=bar.update)
        return checked

    def __iter__(self) -> Iterator[TokenExample]:
        for start in range(0, self.num_examples, 256):
            yield from self.read_many(range(start, min(start + 256, self.num_examples)))

    def summary(self) -> dict[str, Any]:
        """Counts and length statistics, for `lwm inspect-store` and logs."""
        lengths = self.lengths
        info = {key: value for key, value in self.metadata.items()
                if key not in ("progress", "integrity")}
        record = self.metadata.get("integrity")
        info["checksummed_chunks"] = (sum(int(a["chunks"]) for a in record["arrays"].values())
                                      if record else "none (written before checksums; --rehash)")
        if len(lengths):
            info["length_min"] = int(lengths.min())
            info["length_mean"] = float(lengths.mean())
            info["length_max"] = int(lengths.max())
            for q in (50, 90, 99):
                info[f"length_p{q}"] = int(np.percentile(lengths, q))
        return info


def rehash_store(path: str | Path) -> dict[str, int]:
    """Records checksums of a store's present contents in its `store.json`; returns chunk counts.

    For stores written before checksums were kept. It trusts what is on disk now, so it cannot
    find damage done before it ran. Chunk files absent now are recorded as absent (such writers
    skipped chunks holding only the fill value), so later opens require exactly the others.
    """
    path = Path(path)
    metadata = read_store_metadata(path)
    arrays = {}
    for name, length in _committed_lengths(metadata).items():
        array = _open_array(path, name)
        if array.shape[0] < length:
            raise StoreError(f"{path}/{name} holds {array.shape[0]} elements, fewer than the "
                             f"committed {length}: the store is damaged")
        layout = _layout(path, name)
        crcs = integrity.array_checksums(_reader(array), length, layout.chunk_elements)
        record: dict[str, Any] = {"chunks": len(crcs), "crc32": crcs}
        absent = [i for i in range(len(crcs)) if not layout.chunk_path(i).exists()]
        if absent:
            record["absent"] = absent
        arrays[name] = record
    metadata["integrity"] = {"version": integrity.INTEGRITY_VERSION,
                             "algorithm": integrity.CHECKSUM_ALGORITHM, "arrays": arrays}
    _write_json_atomically(path / METADATA_FILE, metadata)
    _warned_unverifiable.discard(str(path))
    return {name: record["chunks"] for name, record in arrays.items()}
