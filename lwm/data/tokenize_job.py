"""`lwm tokenize`: videos and text into a token store, in two resumable phases.

1. Encode: each manifest line's video is read (frames sampled and resized to the VQ model's
   resolution, decoded on worker threads), VQ-encoded, and written as one LWM-format JSONL line
   (`data.vision_field` holds the flat codes, the other fields are kept). Each output line
   records its manifest line, so a rerun continues after the last one written. A manifest line
   that is not a JSON object, or whose file cannot be read, is listed in the summary and
   skipped, or stops the run, per `data.on_bad_record`.
2. Tokenize: the JSONL goes through the data layer's `tokenize_to_store` (field template,
   vision spans with `<eof>`/`<eov>`, bad-record policy), which resumes by itself.

Directions: with `directions: both` (the default) every video becomes two examples, the
configured template and its mirror (`[vision],caption` trains video→caption and
`[caption],vision` caption→video), so both the video and the caption tokens carry loss;
`directions: fields` uses the configured template alone.

Output paths are checked before any video is read. The VQ tokenizer is passed in (the CLI loads
it), so this module knows no model.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lwm.config import ConfigError
from lwm.config.data import FieldSegment
from lwm.config.tokenize import TokenizeConfig
from lwm.data.integrity import reading
from lwm.data.records import BadRecordError, check_store_path, mirrored_segments, render_template
from lwm.data.video import VideoReadError, read_video

LINE_KEY = "manifest_line"
DIRECTIONS = ("both", "fields")


class VideoTokenizer(Protocol):
    """What the job needs from a VQ tokenizer (`lwm.model.vqgan_convert.load_vq_tokenizer`)."""

    resolution: int
    tokens_per_frame: int
    codebook_size: int

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Codes `[frames, tokens_per_frame]` of uint8 frames `[frames, H, W, 3]`."""
        ...


@dataclasses.dataclass
class TokenizeSummary:
    """What a run did: videos encoded, lines skipped (with reasons), records in the store."""

    encoded: int = 0
    resumed_after_line: int = 0
    bad_files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    store_examples: int = 0
    bad_records: dict[str, Any] = dataclasses.field(default_factory=dict)
    templates: list[str] = dataclasses.field(default_factory=list)

    def describe(self) -> str:
        """A few human-readable lines."""
        lines = [f"encoded {self.encoded} videos"
                 + (f" (resumed after manifest line {self.resumed_after_line})" if self.resumed_after_line else ""),
                 f"token store holds {self.store_examples} examples"
                 + (f" ({len(self.templates)} per video: {', '.join(self.templates)})"
                    if len(self.templates) > 1 else "")]
        if self.bad_files:
            lines.append(f"skipped {len(self.bad_files)} manifest lines:")
            lines += [f"  {bad['path']} (manifest line {bad['line']}): {bad['reason']}" for bad in self.bad_files]
        skipped = self.bad_records.get("counts", {})
        if skipped:
            lines.append(f"skipped records by reason: {skipped}")
        return "\n".join(lines)


def directions_of(config: TokenizeConfig) -> str:
    """The config's `directions` (`both` unless the config says otherwise)."""
    directions = getattr(config, "directions", "both")
    if directions not in DIRECTIONS:
        raise ConfigError(f"directions={directions!r}: use 'both' (the template and its mirror) "
                          f"or 'fields' (the template alone)")
    return directions


def segment_sets_of(config: TokenizeConfig) -> tuple[tuple[FieldSegment, ...], ...]:
    """The templates each video is rendered with: the configured one, and its mirror for `both`."""
    segments = config.data.resolved_segments()
    if directions_of(config) == "fields":
        return (segments,)
    kinds = {segment.kind for segment in segments}
    mirror = mirrored_segments(segments)
    if kinds != {"text", "vision"} or mirror == segments:
        # Nothing to mirror (no caption, or a symmetric template): one direction is all there is.
        return (segments,)
    return (segments, mirror)


def _last_written_line(codes_path: Path) -> int:
    if not codes_path.is_file():
        return 0
    last = 0
    with codes_path.open("rb") as handle:
        for raw in handle:
            try:
                last = int(json.loads(raw)[LINE_KEY])
            except (ValueError, KeyError, TypeError):
                # A line cut short by a crash: everything after the last whole line is redone.
                break
    return last


def _truncate_partial_tail(codes_path: Path) -> None:
    if not codes_path.is_file():
        return
    data = codes_path.read_bytes()
    if data and not data.endswith(b"\n"):
        codes_path.write_bytes(data[: data.rfind(b"\n") + 1])


def _manifest_records(manifest: Path, after_line: int, on_bad_record: str,
                      bad: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """The manifest's records after `after_line`; bad lines raise or go into `bad`."""
    records = []
    with manifest.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= after_line or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                problem = BadRecordError(manifest, number, "malformed_json",
                                         f"not valid JSON: {error.msg} at column {error.colno}")
            else:
                if isinstance(record, dict):
                    records.append((number, record))
                    continue
                problem = BadRecordError(manifest, number, "not_an_object",
                                         f"expected a JSON object, got {type(record).__name__}")
            if on_bad_record == "error":
                raise problem
            bad.append({"line": number, "path": str(manifest), "reason": problem.detail})
    return records


def check_outputs(config: TokenizeConfig) -> None:
    """Refuses, before any work, outputs that cannot be written (raises `LwmError`s)."""
    manifest = Path(config.manifest)
    if manifest.is_dir():
        raise ConfigError(f"manifest {manifest} is a directory: name the JSONL file of videos")
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    store_path = Path(config.data.store_path)
    check_store_path(store_path, overwrite=config.overwrite)
    codes_path = Path(config.resolved_codes_path)
    if codes_path.is_dir():
        raise ConfigError(f"codes_path {codes_path} is a directory: name a file for the VQ codes")
    if codes_path.resolve() == manifest.resolve():
        raise ConfigError(f"codes_path {codes_path} is the manifest itself: name another file")
    ancestor = codes_path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    writable = os.access(codes_path, os.W_OK) if codes_path.exists() else os.access(ancestor, os.W_OK | os.X_OK)
    if not ancestor.is_dir() or not writable:
        raise ConfigError(f"codes_path {codes_path}: cannot write there (permission denied or "
                          f"not a directory)")


def encode_manifest(config: TokenizeConfig, tokenizer: VideoTokenizer) -> TokenizeSummary:
    """Phase 1: videos to an LWM-format JSONL of VQ codes (resumable)."""
    check_outputs(config)
    manifest = Path(config.manifest)
    codes_path = Path(config.resolved_codes_path)
    codes_path.parent.mkdir(parents=True, exist_ok=True)
    if config.overwrite and codes_path.exists():
        codes_path.unlink()
    _truncate_partial_tail(codes_path)
    after = _last_written_line(codes_path)
    summary = TokenizeSummary(resumed_after_line=after)
    bad_log = codes_path.with_suffix(".bad.jsonl")
    records = _manifest_records(manifest, after, config.data.on_bad_record, summary.bad_files)
    for bad in summary.bad_files:
        _log_bad(bad_log, bad)

    def load(item: tuple[int, dict[str, Any]]) -> np.ndarray:
        number, record = item
        if config.video_field not in record:
            raise VideoReadError(f"{manifest}:{number}", f"no field {config.video_field!r}")
        path = Path(record[config.video_field])
        if not path.is_absolute():
            path = manifest.parent / path
        return read_video(path, num_frames=config.num_frames or None, fps=config.fps or None,
                          size=tokenizer.resolution)

    from tqdm import tqdm

    with concurrent.futures.ThreadPoolExecutor(config.workers) as pool, codes_path.open("a") as out:
        frames_in_order = pool.map(_capture(load), records)
        for (number, record), (frames, error) in tqdm(
            zip(records, frames_in_order), total=len(records), desc="encoding videos",
            unit=" videos", disable=not config.progress_bar,
        ):
            if error is not None:
                bad = {"line": number, "path": str(record.get(config.video_field)), "reason": str(error)}
                if config.data.on_bad_record == "error":
                    raise error
                summary.bad_files.append(bad)
                _log_bad(bad_log, bad)
                continue
            codes = tokenizer.encode(frames)
            output = {key: value for key, value in record.items() if key != config.video_field}
            output[config.data.vision_field] = codes.reshape(-1).tolist()
            output[LINE_KEY] = number
            out.write(json.dumps(output) + "\n")
            out.flush()
            summary.encoded += 1
    return summary


def _log_bad(bad_log: Path, bad: dict[str, Any]) -> None:
    with bad_log.open("a") as handle:
        handle.write(json.dumps(bad) + "\n")


def _capture(function):
    def run(item):
        try:
            return function(item), None
        except VideoReadError as error:
            return None, error

    return run


def check_tokenizer_fits(config: TokenizeConfig, vq: VideoTokenizer) -> None:
    """The VQ tokenizer's codes must be what `data` says the vision fields hold."""
    if vq.tokens_per_frame != config.data.tokens_per_frame or vq.codebook_size > config.data.codebook_size:
        raise ConfigError(
            f"the VQ tokenizer {config.vq_tokenizer} gives {vq.tokens_per_frame} codes per frame "
            f"from a codebook of {vq.codebook_size}, but data.tokens_per_frame="
            f"{config.data.tokens_per_frame} and data.codebook_size={config.data.codebook_size}: "
            f"set them to match"
        )


def tokenize_videos(config: TokenizeConfig, vq: VideoTokenizer,
                    text_tokenizer: Any | None = None) -> TokenizeSummary:
    """Both phases: manifest → VQ-code JSONL → token store. Returns what was done.

    `vq` encodes frames (load it with `lwm.model.vqgan_convert.load_vq_tokenizer`);
    `text_tokenizer` defaults to `data.tokenizer`.
    """
    from lwm.data.records import tokenize_to_store
    from lwm.data.store import TokenStore
    from lwm.data.text_tokenizer import load_text_tokenizer

    check_outputs(config)
    check_tokenizer_fits(config, vq)
    segment_sets = segment_sets_of(config)
    if text_tokenizer is None:
        with reading(config.data.tokenizer or "(the default)", "text tokenizer"):
            text_tokenizer = load_text_tokenizer(config.data.tokenizer or None)
    summary = encode_manifest(config, vq)
    report = tokenize_to_store(
        config.data, text_tokenizer, paths=[config.resolved_codes_path],
        store_path=config.data.store_path, overwrite=config.overwrite,
        show_progress=config.progress_bar, segment_sets=segment_sets,
    )
    summary.bad_records = report.to_dict()
    summary.store_examples = len(TokenStore(config.data.store_path))
    summary.templates = [render_template(segments) for segments in segment_sets]
    return summary


__all__: Sequence[str] = ("TokenizeSummary", "check_outputs", "encode_manifest", "segment_sets_of",
                          "tokenize_videos")
