"""`lwm tokenize`: a manifest of videos and text into a token store."""

from __future__ import annotations

import argparse

from lwm.cli.common import add_config_command

DESCRIPTION = """\
Tokenize videos and their text into a token store for training. The manifest is JSONL: one
object per line with a video path (a file PyAV reads: mp4, webm, gif, ...; or a folder of
images) in `video_field` plus text fields. Frames are sampled, VQ-encoded with `vq_tokenizer`
(a `lwm train-vq` run, a diffusers VQModel folder, or LWM's vqgan file), written as LWM-format
JSONL to `codes_path`, then tokenized by the `data` section's field template: with the preset
each video gives two examples, `[vision],caption` (video to caption) and its mirror
`[caption],vision` (caption to video), so both carry loss. Interrupted runs resume; bad
manifest lines and unreadable files are listed and skipped when data.on_bad_record is skip.
Output paths are checked before any video is read.

examples:
  lwm tokenize --config configs/data/tokenize_videos.yaml
  lwm tokenize --config configs/data/tokenize_videos.yaml --manifest clips.jsonl \\
      --vq_tokenizer runs/vq --data.store_path data/clips-store --num_frames 16
"""


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import ConfigError, load_config
    from lwm.config.tokenize import TokenizeConfig
    from lwm.data.tokenize_job import check_outputs, tokenize_videos

    if args.config is None and not overrides:
        raise ConfigError("lwm tokenize needs --config PATH or the fields as overrides")
    config = load_config(TokenizeConfig, args.config, overrides)
    # Outputs and the text tokenizer before the VQ model (the slow load): wrong paths fail at once.
    check_outputs(config)
    from lwm.data.integrity import check_checkpoint_directory, reading
    from lwm.data.text_tokenizer import load_text_tokenizer
    from lwm.model.vq_tokenizer import load_vq_tokenizer

    with reading(config.data.tokenizer or "(the default)", "text tokenizer (data.tokenizer)"):
        text_tokenizer = load_text_tokenizer(config.data.tokenizer or None)
    check_checkpoint_directory(config.vq_tokenizer, "VQ tokenizer")
    with reading(config.vq_tokenizer, "VQ tokenizer"):
        vq = load_vq_tokenizer(config.vq_tokenizer, batch_size=config.vq_batch_size)
    print(tokenize_videos(config, vq, text_tokenizer).describe())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm tokenize`."""
    add_config_command(subparsers, "tokenize", help="videos + text into a token store",
                       description=DESCRIPTION, run=_run)
