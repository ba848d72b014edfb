"""Collecting random rollouts: one compressed `.npz` per episode plus a JSONL manifest.

Layout of `run_dir/rollouts/`:
  ep_00000042.npz   frames uint8 [T+1, 64, 64, 3] (the frame before each action, then the last),
                    actions float32 [T, A] (model actions), rewards float32 [T],
                    dones uint8 [T] (1 only on the last step, and only if the episode died)
  manifest.jsonl    one line per finished episode: {"seed", "file", "steps", "return", ...}

An episode is written to a hidden temporary name and atomically renamed, and its manifest line
is appended only after that (by the parent process alone, so lines never interleave). A crash
therefore loses at most the episodes in flight; a rerun skips every seed the manifest lists
and removes temporary leftovers.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.worldmodels import EnvConfig, WorldModelsConfig
from lwm.worldmodels.envs import RandomPolicy, make_env

MANIFEST = "manifest.jsonl"
_WORKER_ENV: dict[str, Any] = {}


def episode_file(seed: int) -> str:
    """File name of the episode collected with environment seed `seed`."""
    return f"ep_{seed:08d}.npz"


@dataclasses.dataclass
class ManifestReport:
    """A manifest's finished episodes and what reading it had to skip."""

    entries: list[dict[str, Any]]
    bad_lines: int = 0
    missing_files: int = 0


def read_manifest(directory: str | Path) -> ManifestReport:
    """Reads `manifest.jsonl`, keeping entries whose file exists (last entry per seed wins).

    A line cut short by a crash, or one naming a missing file, is skipped and counted.
    """
    path = Path(directory) / MANIFEST
    report = ManifestReport(entries=[])
    if not path.exists():
        return report
    by_seed: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            seed = int(entry["seed"])
        except (ValueError, KeyError, TypeError):
            report.bad_lines += 1
            continue
        if not (Path(directory) / entry["file"]).exists():
            report.missing_files += 1
            continue
        by_seed[seed] = entry
    report.entries = [by_seed[seed] for seed in sorted(by_seed)]
    return report


def append_manifest(directory: str | Path, entry: dict[str, Any]) -> None:
    """Appends one finished episode's line and flushes it to disk."""
    with open(Path(directory) / MANIFEST, "a") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Writes a compressed `.npz` under a temporary name, then renames it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(temporary, path)


def load_episode(path: str | Path) -> dict[str, np.ndarray]:
    """Loads one episode shard into memory."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def record_episode(env: Any, env_config: EnvConfig, policy: str, brownian_dt: float, seed: int,
                   directory: Path) -> dict[str, Any]:
    """Plays one episode with a random policy and writes its shard; returns its manifest entry."""
    actor = RandomPolicy(env_config.name, policy, seed=seed + 7_919, brownian_dt=brownian_dt)
    frames = [env.reset(seed)]
    actions, rewards = [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = actor()
        frame, reward, terminated, truncated = env.step(action)
        frames.append(frame)
        actions.append(action)
        rewards.append(reward)
    dones = np.zeros(len(actions), np.uint8)
    dones[-1] = int(terminated)
    name = episode_file(seed)
    write_npz_atomic(
        directory / name,
        frames=np.stack(frames).astype(np.uint8),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        dones=dones,
    )
    return {"seed": seed, "file": name, "steps": len(actions), "return": float(np.sum(rewards)),
            "terminated": bool(terminated), "policy": policy, "env": env_config.name}


def _worker_init(env_config: EnvConfig) -> None:
    _WORKER_ENV["env"] = make_env(env_config)


def _worker_episode(task: tuple[EnvConfig, str, float, int, str]) -> dict[str, Any]:
    env_config, policy, brownian_dt, seed, directory = task
    return record_episode(_WORKER_ENV["env"], env_config, policy, brownian_dt, seed, Path(directory))


@dataclasses.dataclass
class CollectSummary:
    """What a collection run did."""

    collected: int
    skipped_finished: int
    removed_temporaries: int
    bad_manifest_lines: int
    total_steps: int
    mean_return: float

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"collected {self.collected} episodes ({self.total_steps} steps, mean return "
                f"{self.mean_return:.1f}); skipped {self.skipped_finished} already finished; removed "
                f"{self.removed_temporaries} partial files; {self.bad_manifest_lines} unreadable manifest lines")


def collect(config: WorldModelsConfig, progress: bool = True) -> CollectSummary:
    """Collects `collect.episodes` episodes into `run_dir/rollouts`, resuming a previous run."""
    from tqdm import tqdm

    directory = config.paths.rollouts
    directory.mkdir(parents=True, exist_ok=True)
    removed = 0
    for leftover in directory.glob(".*.tmp"):
        leftover.unlink()
        removed += 1
    report = read_manifest(directory)
    finished = {int(entry["seed"]) for entry in report.entries}
    wanted = [config.collect.seed + index for index in range(config.collect.episodes)]
    todo = [seed for seed in wanted if seed not in finished]
    tasks = [(config.env, config.collect.policy, config.collect.brownian_dt, seed, str(directory)) for seed in todo]
    entries: list[dict[str, Any]] = []
    bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc="collect", unit="episode",
               disable=not progress)
    if config.collect.workers == 0:
        env = make_env(config.env)
        try:
            for task in tasks:
                entry = record_episode(env, *task[:4], directory)
                append_manifest(directory, entry)
                entries.append(entry)
                bar.update(1)
        finally:
            env.close()
    else:
        context = multiprocessing.get_context("spawn")
        workers = min(config.collect.workers, max(len(tasks), 1))
        with context.Pool(workers, initializer=_worker_init, initargs=(config.env,)) as pool:
            for entry in pool.imap_unordered(_worker_episode, tasks):
                append_manifest(directory, entry)
                entries.append(entry)
                bar.update(1)
    bar.close()
    returns = [entry["return"] for entry in entries]
    return CollectSummary(
        collected=len(entries),
        skipped_finished=len(wanted) - len(todo),
        removed_temporaries=removed,
        bad_manifest_lines=report.bad_lines,
        total_steps=sum(entry["steps"] for entry in entries),
        mean_return=float(np.mean(returns)) if returns else float("nan"),
    )


def episode_paths(config: WorldModelsConfig) -> list[Path]:
    """Shard paths of every finished episode, in seed order; raises if there are none."""
    directory = config.paths.rollouts
    entries = read_manifest(directory).entries
    if not entries:
        raise FileNotFoundError(f"{directory}/{MANIFEST} lists no finished episodes: run `lwm wm collect` first")
    return [directory / entry["file"] for entry in entries]


def play_random_episode(env: Any, env_config: EnvConfig, policy: str, seed: int, brownian_dt: float = 0.02) -> float:
    """The return of one episode played by a random policy (nothing is stored)."""
    actor = RandomPolicy(env_config.name, policy, seed=seed + 7_919, brownian_dt=brownian_dt)
    env.reset(seed)
    total, terminated, truncated = 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated = env.step(actor())
        total += reward
    return total


def _worker_random(task: tuple[EnvConfig, str, int]) -> float:
    env_config, policy, seed = task
    return play_random_episode(_WORKER_ENV["env"], env_config, policy, seed)


def random_returns(env_config: EnvConfig, seeds: list[int], workers: int, policy: str = "random") -> np.ndarray:
    """Returns of a random policy on each seed (the baseline a controller must beat)."""
    tasks = [(env_config, policy, int(seed)) for seed in seeds]
    if workers == 0:
        env = make_env(env_config)
        try:
            return np.asarray([play_random_episode(env, env_config, policy, int(seed)) for seed in seeds])
        finally:
            env.close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(tasks)), initializer=_worker_init, initargs=(env_config,)) as pool:
        return np.asarray(pool.map(_worker_random, tasks))
