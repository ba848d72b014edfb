"""How local are the VQ tokenizer's codes? A code that changes between frames although the
pixels it covers, and their neighbours', stay the same cannot be predicted from the motion
near it: it counts against any continuation scored on codes, copying and model alike.

`python -m lwm.demo.code_stability --vq.train.steps 200 ...` generates the demo's world
(configs/demo-full.yaml with the given overrides), trains its VQ tokenizer on the training
videos (`lwm.train.vq`), encodes the held-out videos and prints `code_stability` of them as one
JSON line. docs/demo.md records the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config import load_config
from lwm.data.synthetic import generate_world
from lwm.demo.config import DemoConfig
from lwm.demo.pipeline import train_tokenizer


def code_stability(frames_VTHWC: np.ndarray, codes_VTN: np.ndarray) -> dict[str, float]:
    """Shares of codes that change between consecutive frames, overall and where the pixels
    stay: under the code's own patch, and under its patch and its 8 neighbours.

    `frames_VTHWC` are uint8 videos; `codes_VTN` their codes, `N = side * side` in raster order,
    each covering an `H / side` pixel square patch.
    """
    videos, steps, height, width, channels = frames_VTHWC.shape
    side = int(round(np.sqrt(codes_VTN.shape[-1])))
    if side * side != codes_VTN.shape[-1] or height % side or width % side or codes_VTN.shape[:2] != (videos, steps):
        raise ValueError(f"code_stability: codes {codes_VTN.shape} do not tile frames {frames_VTHWC.shape}")
    if steps < 2:
        raise ValueError("code_stability: needs videos of at least 2 frames")
    codes = codes_VTN.reshape(videos, steps, side, side)
    changed = codes[:, 1:] != codes[:, :-1]
    patches = frames_VTHWC.reshape(videos, steps, side, height // side, side, width // side, channels)
    patch_same = (patches[:, 1:] == patches[:, :-1]).all(axis=(3, 5, 6))
    padded = np.pad(patch_same, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=True)  # the border has no neighbour
    neighbourhood_same = np.ones_like(patch_same)
    for dy in range(3):
        for dx in range(3):
            neighbourhood_same &= padded[:, :, dy:dy + side, dx:dx + side]

    def share(mask: np.ndarray) -> float:
        return float(changed[mask].mean()) if mask.any() else 0.0

    return {"codes_changed": float(changed.mean()), "patches_changed": float((~patch_same).mean()),
            "changed_where_patch_same": share(patch_same),
            "changed_where_neighbourhood_same": share(neighbourhood_same),
            "changed_where_patch_changed": share(~patch_same),
            "codes_used": int(len(np.unique(codes_VTN)))}


def measure(config: DemoConfig, output_dir: str) -> dict[str, Any]:
    """Trains the demo's VQ tokenizer as the demo does (into `output_dir/vq`) and measures its
    codes on the held-out videos."""
    world = generate_world(dataclasses.replace(config.synthetic, document_chars=config.demo_data.document_chars))
    tokenizer = train_tokenizer(config, world, Path(output_dir))
    held_out = np.stack([video.frames for video in world.videos_in("held_out")])
    codes = np.asarray(tokenizer.encode(held_out.reshape(-1, *held_out.shape[2:])))
    codes = codes.reshape(held_out.shape[0], held_out.shape[1], -1)
    return {"vq_steps": config.vq.train.steps, "codebook_size": config.vq.model.codebook_size,
            "reconstruction_mse": round(tokenizer.metrics["vq_reconstruction_mse"], 4),
            **{k: round(v, 3) if isinstance(v, float) else v for k, v in code_stability(held_out, codes).items()}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo-full.yaml")
    parser.add_argument("--output-dir", default="runs/code_stability")
    args, overrides = parser.parse_known_args(argv)
    config = load_config(DemoConfig, args.config, overrides)
    start = time.perf_counter()
    line = {**measure(config, args.output_dir), "overrides": overrides, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(line), flush=True)
    return line


if __name__ == "__main__":
    main()
