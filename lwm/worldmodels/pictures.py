"""Pictures of a run: V's reconstructions (PNG), a dream decoded by V (GIF), the agent (GIF).

Written to `run_dir/pictures/`: `reconstructions.png` (top row real frames, bottom row V's
reconstructions of them), `dream.gif` (M dreaming at the dream temperature, C acting when a
trained controller exists, else random actions, every z decoded by V), `agent.gif` (the best
controller in the real environment, its raw frames).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lwm.config.worldmodels import WorldModelsConfig

SCALE = 4  # 64×64 frames are enlarged so that they can be seen


def enlarge(frames_u8: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Nearest-neighbour enlargement of `[..., H, W, 3]` frames."""
    return np.repeat(np.repeat(frames_u8, scale, axis=-3), scale, axis=-2)


def reconstruction_grid(originals: np.ndarray, reconstructions: np.ndarray, gap: int = 2) -> np.ndarray:
    """Two rows (real above, reconstructed below) of N frames with white gaps: one image."""
    count, height, width, _ = originals.shape
    grid = np.full((2 * height + 3 * gap, count * (width + gap) + gap, 3), 255, np.uint8)
    for row, frames in enumerate((originals, reconstructions)):
        top = gap + row * (height + gap)
        for index, frame in enumerate(frames):
            left = gap + index * (width + gap)
            grid[top:top + height, left:left + width] = frame
    return grid


def write_gif(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Writes an endlessly looping GIF."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, list(frames), extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def make_pictures(config: WorldModelsConfig) -> list[Path]:
    """Writes the three pictures of a run (the dream and agent ones only when M and C exist)."""
    import imageio.v3 as iio
    import jax.numpy as jnp

    from lwm.worldmodels import checkpoint
    from lwm.worldmodels.rollouts import episode_paths, load_episode
    from lwm.worldmodels.vae import decode_latents, encode_frames, load_vae

    settings = config.pictures
    out = config.paths.pictures
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(settings.seed)
    vae = load_vae(config.paths.vae)
    written: list[Path] = []

    paths = episode_paths(config)
    episode = load_episode(paths[rng.integers(len(paths))])
    picks = np.sort(rng.choice(len(episode["frames"]), size=min(settings.reconstructions, len(episode["frames"])),
                               replace=False))
    originals = episode["frames"][picks]
    mu, _ = encode_frames(vae, originals, config.vae.encode_chunk)  # the encode stage's compiled shape
    recon = np.concatenate([decode_latents(vae, mu[i:i + 1]) for i in range(len(mu))])  # as dream.gif: 1 at a time
    path = out / "reconstructions.png"
    iio.imwrite(path, enlarge(reconstruction_grid(originals, recon)))
    written.append(path)

    if not (config.paths.mdnrnn / "mdnrnn.json").exists():
        return written
    from lwm.worldmodels.controller import load_controller, spec_for
    from lwm.worldmodels.dream import dream_frames
    from lwm.worldmodels.mdnrnn import load_mdnrnn

    mdnrnn = load_mdnrnn(config.paths.mdnrnn)
    has_controller = (config.paths.controller / "best.json").exists()
    if has_controller:
        theta, spec, meta = load_controller(config.paths.controller, "best")
    else:
        theta, meta = None, {}
        spec = spec_for(config, checkpoint.read_meta(config.paths.vae, "vae"),
                        checkpoint.read_meta(config.paths.mdnrnn, "mdnrnn"))
    frames = dream_frames(mdnrnn, vae, None if theta is None else jnp.asarray(theta), spec, config.env.name,
                          np.asarray(mu[0]), settings.dream_steps, config.dream.temperature, settings.seed,
                          float(checkpoint.read_meta(config.paths.mdnrnn, "mdnrnn").get("done_pos_weight", 1.0)))
    written.append(write_gif(out / "dream.gif", enlarge(frames), settings.fps))

    if has_controller:
        from lwm.worldmodels.controller import LockstepRunner

        short = dataclasses.replace(config, env=dataclasses.replace(
            config.env, max_steps=min(config.env.max_steps, settings.agent_steps)))
        runner = LockstepRunner(short, vae, mdnrnn, spec, bool(meta.get("sample_z", False)))
        _, recordings = runner.run(theta[None], [config.evaluate.seed], 1, record=True)
        for env in runner.envs:
            env.close()
        raw = np.stack(recordings[0])
        written.append(write_gif(out / "agent.gif", enlarge(raw, max(1, 256 // raw.shape[1])), settings.fps))
    return written
