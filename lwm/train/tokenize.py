"""`lwm tokenize`: videos and text into a token store, in two resumable phases.

1. Encode: each manifest line's video is read (frames sampled and resized to the VQ model's
   resolution, decoded on worker threads), VQ-encoded, and written as one LWM-format JSONL line
   (`data.vision_field` holds the flat codes, the other fields are kept). Each output line
   records its manifest line, so a rerun continues after the last one written. A file that
   cannot be read is listed in the summary and skipped, or stops the run, per
   `data.on_bad_record`.
2. Tokenize: the JSONL goes through the data layer's `tokenize_to_store` (field template,
   vision spans with `<eof>`/`<eov>`, bad-record policy), which resumes by itself.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.tokenize import TokenizeConfig
from lwm.data.video import VideoReadError, read_video

LINE_KEY = "manifest_line"


@dataclasses.dataclass
class TokenizeSummary:
    """What a run did: videos encoded, files skipped (with reasons), records in the store."""

    encoded: int = 0
    resumed_after_line: int = 0
    bad_files: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    store_examples: int = 0
    bad_records: dict[str, Any] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """A few human-readable lines."""
        lines = [f"encoded {self.encoded} videos"
                 + (f" (resumed after manifest line {self.resumed_after_line})" if self.resumed_after_line else ""),
                 f"token store holds {self.store_examples} examples"]
        if self.bad_files:
            lines.append(f"skipped {len(self.bad_files)} unreadable files:")
            lines += [f"  {bad['path']} (manifest line {bad['line']}): {bad['reason']}" for bad in self.bad_files]
        skipped = self.bad_records.get("counts", {})
        if skipped:
            lines.append(f"skipped records by reason: {skipped}")
        return "\n".join(lines)


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


def _manifest_records(manifest: Path, after_line: int) -> list[tuple[int, dict[str, Any]]]:
    records = []
    with manifest.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if number <= after_line or not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{manifest}:{number}: not valid JSON: {error.msg}") from error
            if not isinstance(record, dict):
                raise ValueError(f"{manifest}:{number}: expected a JSON object")
            records.append((number, record))
    return records


def encode_manifest(config: TokenizeConfig, tokenizer: Any) -> TokenizeSummary:
    """Phase 1: videos to an LWM-format JSONL of VQ codes (resumable)."""
    manifest = Path(config.manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} does not exist")
    codes_path = Path(config.resolved_codes_path)
    codes_path.parent.mkdir(parents=True, exist_ok=True)
    if config.overwrite and codes_path.exists():
        codes_path.unlink()
    _truncate_partial_tail(codes_path)
    after = _last_written_line(codes_path)
    summary = TokenizeSummary(resumed_after_line=after)
    records = _manifest_records(manifest, after)
    bad_log = codes_path.with_suffix(".bad.jsonl")

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
                with bad_log.open("a") as handle:
                    handle.write(json.dumps(bad) + "\n")
                continue
            codes = tokenizer.encode(frames)
            output = {key: value for key, value in record.items() if key != config.video_field}
            output[config.data.vision_field] = codes.reshape(-1).tolist()
            output[LINE_KEY] = number
            out.write(json.dumps(output) + "\n")
            out.flush()
            summary.encoded += 1
    return summary


def _capture(function):
    def run(item):
        try:
            return function(item), None
        except VideoReadError as error:
            return None, error

    return run


def tokenize_videos(config: TokenizeConfig) -> TokenizeSummary:
    """Both phases: manifest → VQ-code JSONL → token store. Returns what was done."""
    from lwm.data.records import tokenize_to_store
    from lwm.data.store import TokenStore
    from lwm.data.text_tokenizer import load_text_tokenizer
    from lwm.model.vqgan_convert import load_vq_tokenizer

    vq = load_vq_tokenizer(config.vq_tokenizer, batch_size=config.vq_batch_size)
    if vq.tokens_per_frame != config.data.tokens_per_frame or vq.codebook_size > config.data.codebook_size:
        from lwm.config import ConfigError

        raise ConfigError(
            f"the VQ tokenizer gives {vq.tokens_per_frame} codes per frame from a codebook of "
            f"{vq.codebook_size}, but data.tokens_per_frame={config.data.tokens_per_frame} and "
            f"data.codebook_size={config.data.codebook_size}: set them to match"
        )
    summary = encode_manifest(config, vq)
    text_tokenizer = load_text_tokenizer(config.data.tokenizer or None)
    report = tokenize_to_store(
        config.data, text_tokenizer, paths=[config.resolved_codes_path],
        store_path=config.data.store_path, overwrite=config.overwrite,
        show_progress=config.progress_bar,
    )
    summary.bad_records = report.to_dict()
    summary.store_examples = len(TokenStore(config.data.store_path))
    return summary
