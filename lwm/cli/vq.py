"""VQ tokenizer commands: `lwm train-vq`."""

from __future__ import annotations

import argparse

from lwm.cli.common import add_config_command

TRAIN_VQ_DESCRIPTION = """\
Trains the VQGAN video tokenizer on frames sampled from your own videos (mp4, webm, gif, ...,
or folders of png/jpg frames): L1+L2 reconstruction and commitment losses, an EMA codebook with
dead-code restarts, Orbax checkpoints in checkpoint.dir (each with its config.yaml, so the
directory alone reloads the tokenizer: lwm.model.vqgan_convert.load_vq_tokenizer).

examples:
  lwm train-vq --config configs/vq/tiny.yaml --data.paths "[videos/]"
  lwm train-vq --config configs/vq/tiny.yaml --data.paths "[a.mp4, b.webm]" \\
      --train.steps 3000 --checkpoint.dir runs/vq-shapes
"""


def _run_train_vq(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.config.vq import VQTrainRunConfig
    from lwm.data.video import VideoReadError
    from lwm.errors import LwmError
    from lwm.train.vq import load_training_frames, reconstruction_error, train_vq

    config = load_config(VQTrainRunConfig, args.config, overrides)
    try:
        frame_set = load_training_frames(config.data, config.model.resolution)
    except ValueError as error:
        # lwm/train/vq.py reports videos none of which can be read as a plain ValueError.
        if isinstance(error, LwmError):
            raise
        raise VideoReadError(", ".join(config.data.paths), str(error)) from error
    print(f"train-vq: {len(frame_set.frames)} frames from {frame_set.videos} videos"
          + (f" ({len(frame_set.skipped)} skipped)" if frame_set.skipped else ""))
    result = train_vq(config, frames=frame_set.frames)
    from lwm.data.integrity import write_checkpoint_manifests

    # Checkpoints are final once written: record their files so a later load finds truncation.
    write_checkpoint_manifests(result.run_dir)
    frames = frame_set.frames
    sample = frames[:: max(1, len(frames) // 256)]
    error = reconstruction_error(result.model, sample)
    pixels = sample.astype("float32") / 127.5 - 1.0
    baseline = float(((pixels - pixels.mean(axis=0)) ** 2).mean())
    summary = ", ".join(f"{name} {value:.4g}" for name, value in sorted(result.metrics.items()))
    print(f"train-vq: {result.steps} steps; {summary}")
    print(f"train-vq: reconstruction MSE {error:.5f} on {len(sample)} training frames "
          f"(mean-frame baseline {baseline:.5f}); tokenizer saved in {result.run_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `train-vq`."""
    add_config_command(
        subparsers, "train-vq", help="train the VQGAN video tokenizer on your videos",
        description=TRAIN_VQ_DESCRIPTION, run=_run_train_vq, default_config="configs/vq/tiny.yaml",
    )
