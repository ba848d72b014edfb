"""JSONL input records → token examples, with bad records reported, never dropped silently.

Three input formats (`data.format`):

- `text`: one text field (`data.text_field`), or LWM's field template / typed segments.
- `vision_text`: LWM's vision+text records: vision fields hold flat lists of VQ codes,
  `data.tokens_per_frame` per frame, which become `<vision>` codes… `<eof>` … codes… `<eov>`
  `</vision>` (the two wrapper tokens are text tokens, the codes and end tokens vision tokens).
- `chat`: `{"messages": [{"role": "user" | "assistant" | "system", "content": ...}]}` rendered
  with the chat template (`lwm/data/chat.py`); loss on assistant answers only.

A bad record (malformed JSON, missing field, ids outside the vocabulary, an empty example, a
vision field that is not whole frames) raises `BadRecordError` naming file, line and reason, or
under `on_bad_record: skip` is counted in a `BadRecordReport` (reason → count, first examples).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lwm.config.data import DataConfig, FieldSegment
from lwm.config.loading import ConfigError
from lwm.data.store import StoreError, TokenExample, TokenStoreWriter
from lwm.errors import LwmError


@runtime_checkable
class TextTokenizer(Protocol):
    """What the data layer needs from a text tokenizer.

    `encode` returns ids without bos/eos (the data layer adds those). Optional attributes:
    `vocab_size` (checks ids; else `data.text_vocab_size` must be set) and `name` (recorded in
    the store's metadata).
    """

    bos_id: int
    eos_id: int
    vision_start_id: int
    vision_end_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""
        ...


class RecordProblem(ValueError):
    """What is wrong with one record; the reader adds the file and line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BadRecordError(LwmError, ValueError):
    """A record that cannot become an example, with its file, line and reason."""

    def __init__(self, path: str | Path, line: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail} [{reason}]")
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail


class BadRecordReport:
    """Counts of skipped records by reason, with the first few `file:line: detail` of each."""

    def __init__(self, max_examples: int = 5) -> None:
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self.records_read = 0

    def add(self, error: BadRecordError) -> None:
        """Counts one skipped record."""
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        shown = self.examples.setdefault(error.reason, [])
        if len(shown) < self.max_examples:
            shown.append(f"{error.path}:{error.line}: {error.detail}")

    @property
    def skipped(self) -> int:
        """Total records skipped."""
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored in the token store's metadata)."""
        return {"records_read": self.records_read, "skipped": self.skipped,
                "counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], max_examples: int = 5) -> BadRecordReport:
        """Inverse of `to_dict` (for resuming an interrupted run)."""
        report = cls(max_examples)
        report.records_read = int(data.get("records_read", 0))
        report.counts = {k: int(v) for k, v in data.get("counts", {}).items()}
        report.examples = {k: list(v) for k, v in data.get("examples", {}).items()}
        return report

    def summary(self) -> str:
        """Human-readable lines: totals, then each reason with its examples."""
        lines = [f"{self.records_read} records read, {self.skipped} skipped"]
        for reason, count in sorted(self.counts.items(), key=lambda item: -item[1]):
            lines.append(f"  {reason}: {count}")
            lines.extend(f"    {example}" for example in self.examples.get(reason, []))
        return "\n".join(lines)


class TokenBuilder:
    """Accumulates (ids, is_vision, loss) pieces of one example."""

    def __init__(self) -> None:
        self._ids: list[np.ndarray] = []
        self._vision: list[np.ndarray] = []
        self._loss: list[np.ndarray] = []
        self.content_tokens = 0

    def add(self, ids: Any, is_vision: Any, loss: bool, *, content: bool = True) -> None:
        """Adds ids (with their vision flags); `content=False` for bos/eos and template text."""
        ids = np.asarray(ids, np.int32).reshape(-1)
        vision = np.broadcast_to(np.asarray(is_vision, bool), ids.shape)
        self._ids.append(ids)
        self._vision.append(vision)
        self._loss.append(np.full(ids.shape, bool(loss)))
        if content:
            self.content_tokens += len(ids)

    def add_text(self, ids: Any, loss: bool, *, content: bool = True) -> None:
        """Adds text ids."""
        self.add(ids, False, loss, content=content)

    def build(self) -> TokenExample:
        """The example; raises `RecordProblem('empty_example')` when no field gave a token."""
        if self.content_tokens == 0:
            raise RecordProblem("empty_example", "the example has no tokens from its fields")
        return TokenExample(np.concatenate(self._ids), np.concatenate(self._vision),
                            np.concatenate(self._loss))


def check_text_ids(ids: Any, vocab_size: int, what: str) -> np.ndarray:
    """Text ids as int32, raising `RecordProblem('token_out_of_range')` outside [0, vocab_size)."""
    array = np.asarray(ids)
    if array.size and array.dtype.kind not in "iu":
        raise RecordProblem("wrong_type", f"{what}: expected integer token ids, got {array.dtype}")
    array = array.astype(np.int64).reshape(-1)
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        raise RecordProblem(
            "token_out_of_range",
            f"{what}: token id {int(array[bad][0])} outside the text vocabulary [0, {vocab_size})",
        )
    return array.astype(np.int32)


def vision_span(
    codes: Any,
    *,
    tokenizer: TextTokenizer,
    tokens_per_frame: int,
    codebook_size: int,
    what: str = "vision",
) -> tuple[np.ndarray, np.ndarray]:
    """`<vision>` + per frame its codes and `<eof>` (the last `<eov>`) + `</vision>`.

    Returns (ids int32, is_vision bool). Codes must be a flat list of ints in
    [0, codebook_size) whose length is a whole, non-zero number of frames.
    """
    if not isinstance(codes, (list, tuple, np.ndarray)):
        raise RecordProblem("wrong_type", f"field {what!r}: expected a flat list of VQ codes, "
                                          f"got {type(codes).__name__}")
    array = np.asarray(codes)
    if array.size == 0:
        raise RecordProblem("empty_vision", f"field {what!r} holds no codes")
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise RecordProblem("wrong_type", f"field {what!r}: expected a flat list of integer VQ "
                                          f"codes, got shape {array.shape} of {array.dtype}")
    if len(array) % tokens_per_frame:
        raise RecordProblem(
            "partial_frame",
            f"field {what!r} holds {len(array)} codes, not a whole number of frames of "
            f"{tokens_per_frame} (data.tokens_per_frame)",
        )
    bad = (array < 0) | (array >= codebook_size)
    if bad.any():
        raise RecordProblem(
            "token_out_of_range",
            f"field {what!r}: VQ code {int(array[bad][0])} outside [0, {codebook_size}) "
            f"(data.codebook_size)",
        )
    frames = array.reshape(-1, tokens_per_frame).astype(np.int32)
    ends = np.full((len(frames), 1), codebook_size, np.int32)  # <eof>
    ends[-1, 0] = codebook_size + 1  # <eov>
    body = np.concatenate([frames, ends], axis=1).reshape(-1)
    ids = np.concatenate([[tokenizer.vision_start_id], body, [tokenizer.vision_end_id]]).astype(np.int32)
    is_vision = np.ones(len(ids), bool)
    is_vision[0] = is_vision[-1] = False
    return ids, is_vision


def resolve_text_vocab_size(config: DataConfig, tokenizer: TextTokenizer) -> int:
    """`data.text_vocab_size`, else the tokenizer's `vocab_size`; raises if neither is known."""
    size = config.text_vocab_size or int(getattr(tokenizer, "vocab_size", 0) or 0)
    if size <= 0:
        raise ConfigError(
            "data.text_vocab_size=0 and the tokenizer has no vocab_size: set data.text_vocab_size "
            "so token ids can be checked"
        )
    return size


def tokenizer_name(tokenizer: TextTokenizer) -> str:
    """What the store records as the tokenizer: its `name`, else its model file, else its type."""
    name = getattr(tokenizer, "name", None) or getattr(tokenizer, "model_file", None)
    return str(name) if name else type(tokenizer).__name__


def _field(record: dict[str, Any], name: str) -> Any:
    if name not in record:
        keys = ", ".join(list(record)[:8])
        raise RecordProblem("missing_field", f"field {name!r} is missing (record has: {keys})")
    return record[name]


class ExampleEncoder:
    """Turns one parsed JSONL record into a `TokenExample` per the data config.

    Raises `RecordProblem` (reason + detail) for a bad record; the caller adds file and line.
    """

    def __init__(self, config: DataConfig, tokenizer: TextTokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.text_vocab_size = resolve_text_vocab_size(config, tokenizer)
        self.segments: tuple[FieldSegment, ...] = config.resolved_segments()
        for name in ("bos_id", "eos_id", "vision_start_id", "vision_end_id"):
            value = getattr(tokenizer, name, None)
            if value is None or not 0 <= int(value) < self.text_vocab_size:
                raise ConfigError(f"tokenizer.{name}={value!r} is not an id in the text "
                                  f"vocabulary [0, {self.text_vocab_size})")

    def __call__(self, record: Any) -> TokenExample:
        if not isinstance(record, dict):
            raise RecordProblem("not_an_object", f"expected a JSON object, got {type(record).__name__}")
        if self.config.format == "chat":
            from lwm.data.chat import encode_chat_record

            return encode_chat_record(record, self.config, self.tokenizer, self.text_vocab_size)
        return self._encode_fields(record)

    def _encode_fields(self, record: dict[str, Any]) -> TokenExample:
        config, tokenizer = self.config, self.tokenizer
        builder = TokenBuilder()
        if config.add_bos:
            builder.add_text([tokenizer.bos_id], False, content=False)
        for segment in self.segments:
            if segment.field == "<|bos|>":
                builder.add_text([tokenizer.bos_id], segment.loss, content=False)
            elif segment.field == "<|eos|>":
                builder.add_text([tokenizer.eos_id], segment.loss, content=False)
            elif segment.kind == "vision":
                ids, is_vision = vision_span(
                    _field(record, segment.field), tokenizer=tokenizer, what=segment.field,
                    tokens_per_frame=config.tokens_per_frame, codebook_size=config.codebook_size)
                builder.add(ids, is_vision, segment.loss)
            else:
                builder.add_text(self._text_ids(record, segment), segment.loss)
        if config.add_eos:
            builder.add_text([tokenizer.eos_id], True, content=False)
        return builder.build()

    def _text_ids(self, record: dict[str, Any], segment: FieldSegment) -> np.ndarray:
        values = [_field(record, name) for name in segment.subfields]
        if len(values) == 1 and isinstance(values[0], list):
            # A pre-tokenized field: a list of text ids.
            return check_text_ids(values[0], self.text_vocab_size, f"field {segment.field!r}")
        for name, value in zip(segment.subfields, values):
            if not isinstance(value, str):
                raise RecordProblem("wrong_type", f"field {name!r}: expected a string, got "
                                                  f"{type(value).__name__}")
        text = self.config.subfield_separator.join(values)
        return check_text_ids(self.tokenizer.encode(text), self.text_vocab_size,
                              f"tokenizer output for field {segment.field!r}")


def read_jsonl_lines(path: str | Path, start_line: int = 1) -> Iterator[tuple[int, Any]]:
    """Yields (line number, parsed value) from line `start_line` on; blank lines are not records.

    A line that is not valid JSON yields a `BadRecordError` in place of the value, so the caller
    decides between raising and skipping.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number < start_line or not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                yield number, BadRecordError(path, number, "malformed_json",
                                             f"not valid JSON: {error.msg} at column {error.colno}")


def iter_examples(
    paths: Sequence[str | Path],
    encoder: ExampleEncoder,
    *,
    on_bad_record: str = "error",
    report: BadRecordReport | None = None,
    start: tuple[int, int] = (0, 1),
) -> Iterator[tuple[int, int, TokenExample]]:
    """Yields (file index, line, example) for every good record of the JSONL files.

    Bad records raise `BadRecordError`, or under `on_bad_record='skip'` go into `report`.
    `start=(file index, line)` resumes inside the file list.
    """
    if on_bad_record not in ("error", "skip"):
        raise ConfigError(f"on_bad_record={on_bad_record!r}: use 'error' or 'skip'")
    report = report if report is not None else BadRecordReport()
    for file_index in range(start[0], len(paths)):
        path = paths[file_index]
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file {path} does not exist (data.paths)")
        first = start[1] if file_index == start[0] else 1
        for line, value in read_jsonl_lines(path, first):
            report.records_read += 1
            try:
                if isinstance(value, BadRecordError):
                    raise value
                try:
                    example = encoder(value)
                except RecordProblem as problem:
                    raise BadRecordError(path, line, problem.reason, problem.detail) from None
            except BadRecordError as error:
                if on_bad_record == "error":
                    raise
                report.add(error)
                continue
            yield file_index, line, example


def tokenize_to_store(
    config: DataConfig,
    tokenizer: TextTokenizer,
    *,
    paths: Sequence[str | Path] | None = None,
    store_path: str | Path | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
    flush_tokens: int | None = None,
) -> BadRecordReport:
    """Tokenizes JSONL files into a token store; resumes an interrupted run.

    With `resume` and an existing store whose recorded inputs match, reading continues after
    the last committed record (the store commits its position with every shard). Returns the
    bad-record report (also stored in the metadata under `bad_records`).
    """
    paths = [str(p) for p in (paths if paths is not None else config.paths)]
    store_path = Path(store_path if store_path is not None else config.store_path)
    if not paths:
        raise ConfigError("data.paths is empty: list the JSONL files to tokenize")
    if not str(store_path) or str(store_path) == ".":
        raise ConfigError("data.store_path is empty: name the directory for the token store")
    encoder = ExampleEncoder(config, tokenizer)
    extra = {"flush_tokens": flush_tokens} if flush_tokens else {}
    start, report = (0, 1), BadRecordReport(config.bad_record_examples)
    if resume and not overwrite and store_path.exists():
        writer = TokenStoreWriter.open(store_path, **extra)
        progress = writer.progress or {}
        if progress.get("paths") != paths:
            raise StoreError(
                f"{store_path} was made from {progress.get('paths')}, not {paths}: pass "
                f"overwrite=True (--overwrite) to rebuild it"
            )
        if progress.get("complete"):
            return BadRecordReport.from_dict(writer.metadata.get("bad_records", {}),
                                             config.bad_record_examples)
        start = (progress["file_index"], progress["line"])
        report = BadRecordReport.from_dict(progress.get("bad_records", {}), config.bad_record_examples)
    else:
        writer = TokenStoreWriter.create(
            store_path, tokenizer_name=tokenizer_name(tokenizer),
            text_vocab_size=encoder.text_vocab_size,
            vision_vocab_size=config.vision_vocab_size if config.format != "text" else 0,
            metadata={"format": config.format, "codebook_size": config.codebook_size,
                      "tokens_per_frame": config.tokens_per_frame},
            overwrite=overwrite, **extra)
    position = {"file_index": start[0], "line": start[1]}

    def progress_now() -> dict[str, Any]:
        return {"paths": paths, **position, "complete": False, "bad_records": report.to_dict()}

    writer.set_progress(progress_now)
    from tqdm import tqdm

    bar = tqdm(desc="tokenizing", unit=" records", disable=not show_progress)
    for file_index, line, example in iter_examples(paths, encoder, on_bad_record=config.on_bad_record,
                                                   report=report, start=start):
        position.update(file_index=file_index, line=line + 1)
        writer.append(example)
        bar.update(1)
    bar.close()
    writer.set_progress({"paths": paths, "file_index": len(paths), "line": 1, "complete": True})
    writer.update_metadata(bad_records=report.to_dict())
    writer.close()
    return report
