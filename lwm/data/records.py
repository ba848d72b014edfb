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

One record can give several examples: `tokenize_to_store(..., segment_sets=...)` renders each
record once per field template (e.g. a captioned video as `[caption],vision` for
caption→video and `[vision],caption` for video→caption, see `mirrored_segments`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.data import DataConfig, FieldSegment, parse_field_template
from lwm.config.loading import ConfigError
from lwm.data.chat import encode_chat_record
from lwm.data.store import StoreError, TokenExample, TokenStoreWriter
from lwm.data.tokens import RecordProblem, TokenBuilder, TokenizerLike, check_text_ids, vision_span
from lwm.errors import LwmError


class BadRecordError(LwmError, ValueError):
    """A record that cannot become an example, with its file, line and reason."""

    def __init__(self, path: str | Path, line: int, reason: str, detail: str) -> None:
        super().__init__(f"{path}:{line}: {detail} [{reason}]")
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail

    def __reduce__(self):
        # Picklable with its fields, so an error raised in a data worker process reaches the
        # main process (and the CLI's one line) intact.
        return (type(self), (self.path, self.line, self.reason, self.detail))


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


def resolve_text_vocab_size(config: DataConfig, tokenizer: TokenizerLike) -> int:
    """`data.text_vocab_size`, else the tokenizer's `vocab_size`; raises if neither is known."""
    size = config.text_vocab_size or int(getattr(tokenizer, "vocab_size", 0) or 0)
    if size <= 0:
        raise ConfigError(
            "data.text_vocab_size=0 and the tokenizer has no vocab_size: set data.text_vocab_size "
            "so token ids can be checked"
        )
    return size


def tokenizer_name(tokenizer: TokenizerLike) -> str:
    """What the store records as the tokenizer: its `name`, else its model file, else its type."""
    name = getattr(tokenizer, "name", None) or getattr(tokenizer, "model_file", None)
    return str(name) if name else type(tokenizer).__name__


def _field(record: dict[str, Any], name: str) -> Any:
    if name not in record:
        keys = ", ".join(list(record)[:8])
        raise RecordProblem("missing_field", f"field {name!r} is missing (record has: {keys})")
    return record[name]


def mirrored_segments(segments: Sequence[FieldSegment]) -> tuple[FieldSegment, ...]:
    """The template read backwards with the loss pattern kept by position.

    `[vision],caption` (video→caption: the video is given, the caption is learned) becomes
    `[caption],vision` (caption→video), and the other way round.
    """
    losses = [segment.loss for segment in segments]
    return tuple(FieldSegment(field=segment.field, loss=loss, kind=segment.kind)
                 for segment, loss in zip(reversed(segments), losses))


def render_template(segments: Sequence[FieldSegment]) -> str:
    """LWM's template string of typed segments (`[vision],caption`)."""
    return ",".join(segment.field if segment.loss else f"[{segment.field}]" for segment in segments)


def segments_of(template: str, config: DataConfig) -> tuple[FieldSegment, ...]:
    """Typed segments of a field template string, with the config's vision field."""
    return parse_field_template(template, config.vision_field)


class ExampleEncoder:
    """Turns one parsed JSONL record into `TokenExample`s per the data config.

    `segment_sets` renders each record once per template (default: the config's one template);
    `encode_all` returns them all, calling the encoder returns the first. Raises
    `RecordProblem` (reason + detail) for a bad record; the caller adds file and line.
    """

    def __init__(self, config: DataConfig, tokenizer: TokenizerLike,
                 segment_sets: Sequence[Sequence[FieldSegment]] | None = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.text_vocab_size = resolve_text_vocab_size(config, tokenizer)
        self.segment_sets = tuple(tuple(segments) for segments in
                                  (segment_sets or (config.resolved_segments(),)))
        if config.format == "chat" and len(self.segment_sets) > 1:
            raise ConfigError("several field templates apply to field records, not data.format=chat")
        self.segments: tuple[FieldSegment, ...] = self.segment_sets[0]
        for name in ("bos_id", "eos_id", "vision_start_id", "vision_end_id"):
            value = getattr(tokenizer, name, None)
            if value is None or not 0 <= int(value) < self.text_vocab_size:
                raise ConfigError(f"tokenizer.{name}={value!r} is not an id in the text "
                                  f"vocabulary [0, {self.text_vocab_size})")

    def __call__(self, record: Any) -> TokenExample:
        return self.encode_all(record)[0]

    def encode_all(self, record: Any) -> list[TokenExample]:
        """One example per template; a problem with any of them makes the whole record bad."""
        if not isinstance(record, dict):
            raise RecordProblem("not_an_object", f"expected a JSON object, got {type(record).__name__}")
        if self.config.format == "chat":
            return [encode_chat_record(record, self.config, self.tokenizer, self.text_vocab_size)]
        return [self._encode_fields(record, segments) for segments in self.segment_sets]

    def _encode_fields(self, record: dict[str, Any], segments: Sequence[FieldSegment]) -> TokenExample:
        config, tokenizer = self.config, self.tokenizer
        builder = TokenBuilder()
        if config.add_bos:
            builder.add_text([tokenizer.bos_id], False, content=False)
        for segment in segments:
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
    `start=(file index, line)` resumes inside the file list. A record rendered with several
    templates yields one item per example, all with its line.
    """
    for file_index, line, examples in iter_record_examples(
            paths, encoder, on_bad_record=on_bad_record, report=report, start=start):
        for example in examples:
            yield file_index, line, example


def iter_record_examples(
    paths: Sequence[str | Path],
    encoder: ExampleEncoder,
    *,
    on_bad_record: str = "error",
    report: BadRecordReport | None = None,
    start: tuple[int, int] = (0, 1),
) -> Iterator[tuple[int, int, list[TokenExample]]]:
    """Like `iter_examples`, with each good record's examples together in one list."""
    if on_bad_record not in ("error", "skip"):
        raise ConfigError(f"on_bad_record={on_bad_record!r}: use 'error' or 'skip'")
    report = report if report is not None else BadRecordReport()
    for file_index in range(start[0], len(paths)):
        path = paths[file_index]
        if Path(path).is_dir():
            raise ConfigError(f"data file {path} is a directory (data.paths): list JSONL files")
        if not Path(path).is_file():
            raise FileNotFoundError(f"data file {path} does not exist (data.paths)")
        first = start[1] if file_index == start[0] else 1
        for line, value in read_jsonl_lines(path, first):
            report.records_read += 1
            try:
                if isinstance(value, BadRecordError):
                    raise value
                try:
                    examples = encoder.encode_all(value)
                except RecordProblem as problem:
                    raise BadRecordError(path, line, problem.reason, problem.detail) from None
            except BadRecordError as error:
                if on_bad_record == "error":
                    raise
                report.add(error)
                continue
            yield file_index, line, examples


def tokenize_to_store(
    config: DataConfig,
    tokenizer: TokenizerLike,
    *,
    paths: Sequence[str | Path] | None = None,
    store_path: str | Path | None = None,
    resume: bool = True,
    overwrite: bool = False,
    show_progress: bool = True,
    flush_tokens: int | None = None,
    segment_sets: Sequence[Sequence[FieldSegment]] | None = None,
) -> BadRecordReport:
    """Tokenizes JSONL files into a token store; resumes an interrupted run.

    With `resume` and an existing store whose recorded inputs match, reading continues after
    the last committed record (the store commits its position with every shard). Returns the
    bad-record report (also stored in the metadata under `bad_records`). `segment_sets` makes
    one example per template from each record (their templates are kept in the metadata).
    """
    paths = [str(p) for p in (paths if paths is not None else config.paths)]
    store_path = Path(store_path if store_path is not None else config.store_path)
    if not paths:
        raise ConfigError("data.paths is empty: list the JSONL files to tokenize")
    if not str(store_path) or str(store_path) == ".":
        raise ConfigError("data.store_path is empty: name the directory for the token store")
    encoder = ExampleEncoder(config, tokenizer, segment_sets)
    templates = [render_template(segments) for segments in encoder.segment_sets]
    vocabulary = {"text_vocab_size": encoder.text_vocab_size,
                  "vision_vocab_size": config.vision_vocab_size if config.format != "text" else 0,
                  "codebook_size": config.codebook_size, "tokens_per_frame": config.tokens_per_frame}
    extra = {"flush_tokens": flush_tokens} if flush_tokens else {}
    start, report = (0, 1), BadRecordReport(config.bad_record_examples)
    check_store_path(store_path, overwrite=overwrite)
    if resume and not overwrite and store_path.is_dir() and any(store_path.iterdir()):
        writer = TokenStoreWriter.open(store_path, **extra)
        check_same_vocabulary(store_path, writer.metadata, vocabulary, config.format)
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
            text_vocab_size=vocabulary["text_vocab_size"],
            vision_vocab_size=vocabulary["vision_vocab_size"],
            metadata={"format": config.format, "codebook_size": config.codebook_size,
                      "tokens_per_frame": config.tokens_per_frame, "templates": templates},
            overwrite=overwrite, **extra)
    position = {"file_index": start[0], "line": start[1]}

    def progress_now() -> dict[str, Any]:
        return {"paths": paths, **position, "complete": False, "bad_records": report.to_dict()}

    writer.set_progress(progress_now)
    from tqdm import tqdm

    bar = tqdm(desc="tokenizing", unit=" records", disable=not show_progress)
    for file_index, line, examples in iter_record_examples(
            paths, encoder, on_bad_record=config.on_bad_record, report=report, start=start):
        position.update(file_index=file_index, line=line + 1)
        writer.append_all(examples)
        bar.update(1)
    bar.close()
    writer.set_progress({"paths": paths, "file_index": len(paths), "line": 1, "complete": True})
    writer.update_metadata(bad_records=report.to_dict())
    writer.close()
    return report


def check_store_path(store_path: Path, *, overwrite: bool) -> None:
    """Refuses, before any work, a store path that cannot become a token store.

    A file (even with overwrite: only a store directory is ever replaced), a directory that
    holds something other than a store, or a place where nothing can be written.
    """
    if store_path.is_file():
        raise StoreError(f"data.store_path {store_path} is an existing file: name a directory "
                         f"for the token store")
    if store_path.is_dir() and any(store_path.iterdir()) and not (store_path / "store.json").is_file():
        raise StoreError(f"data.store_path {store_path} is a directory that is not a token store "
                         f"(no store.json): name a new or empty directory")
    ancestor = store_path if store_path.exists() else store_path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise StoreError(f"data.store_path {store_path}: cannot write in {ancestor} "
                         f"(permission denied or not a directory)")


def check_same_vocabulary(store_path: Path, metadata: dict[str, Any], vocabulary: dict[str, int],
                          data_format: str) -> None:
    """An existing store being added to must hold ids of the same vocabularies as the config."""
    checks = ["text_vocab_size"] + (["codebook_size", "tokens_per_frame"] if data_format != "text" else [])
    for name in checks:
        stored = metadata.get(name)
        if stored is not None and int(stored) != int(vocabulary[name]):
            raise StoreError(
                f"{store_path} holds {name}={stored} but this run gives {vocabulary[name]} "
                f"(data.{name} / the tokenizer): use the store's, or rebuild it with --overwrite true"
            )
