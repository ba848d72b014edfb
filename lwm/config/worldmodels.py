"""Configuration of the World Models pipeline (Ha & Schmidhuber, arXiv 1803.10122).

One frozen dataclass per stage, gathered in `WorldModelsConfig`; load it with
`lwm.config.load_config(WorldModelsConfig, "configs/worldmodels/smoke.yaml", overrides)`.
Every section checks its own fields in `validate()`; `WorldModelsConfig.validate()` checks what
spans sections (a dream needs an environment whose M predicts episode ends).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from lwm.config.errors import ConfigError

EnvName = Literal["carracing", "takecover", "fake-carracing", "fake-takecover"]
Policy = Literal["random", "brownian"]

# What each environment looks like to the models: its action width, whether episodes end by
# dying (TakeCover: M learns a done head and the dream can end episodes), and gymnasium's id.
ENV_ACTION_DIM = {"carracing": 3, "takecover": 1, "fake-carracing": 3, "fake-takecover": 1}
ENV_HAS_DONE = {"carracing": False, "takecover": True, "fake-carracing": False, "fake-takecover": True}
GYM_IDS = {"carracing": "CarRacing-v3", "takecover": "VizdoomTakeCover-v1"}


def _positive(section: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name}={value!r} must be positive; set --{section}.{name} to a value > 0")


def _not_negative(section: str, obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ConfigError(f"{section}.{name}={value!r} must not be negative (0 switches it off)")


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """The environment: which one, and the step limit of one episode.

    `carracing` is gymnasium's CarRacing-v3 (box2d), `takecover` is VizDoom's TakeCover (the
    `doom` extra); the `fake-*` variants are cheap synthetic stand-ins with the same action
    spaces, used by tests.
    """

    name: EnvName = "carracing"
    max_steps: int = 1000

    @property
    def action_dim(self) -> int:
        """Width of the action vector that M and C see."""
        return ENV_ACTION_DIM[self.name]

    @property
    def has_done(self) -> bool:
        """Whether episodes end by dying, so that M carries a done head (TakeCover)."""
        return ENV_HAS_DONE[self.name]

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        if self.name not in ENV_ACTION_DIM:
            raise ConfigError(f"env.name={self.name!r} is unknown; use one of {sorted(ENV_ACTION_DIM)}")
        _positive("env", self, "max_steps")


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Random rollouts that V and M learn from: one compressed `.npz` per episode.

    `brownian` actions drift by a Gaussian step of standard deviation `sqrt(brownian_dt)` per
    frame (clipped to the action space), which drives the car further than per-frame uniform
    noise does. Episode `i` uses environment seed `seed + i`, so a rerun skips finished episodes.
    """

    episodes: int = 10000
    policy: Policy = "random"
    brownian_dt: float = 0.02
    workers: int = 2
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("collect", self, "episodes", "brownian_dt")
        _not_negative("collect", self, "workers", "seed")
        if self.policy not in ("random", "brownian"):
            raise ConfigError(f"collect.policy={self.policy!r}: use 'random' or 'brownian'")


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """V: the convolutional VAE and its training (paper: z 32, batch 100, lr 1e-4, 10 epochs).

    `max_seconds` > 0 stops training after that much wall time (presets with a time budget);
    `buffer_episodes` episodes are loaded at a time and their frames shuffled together, which
    bounds memory on large datasets. `encode_chunk` frames are encoded per jitted call (the
    last chunk is padded so that one compiled shape serves every episode).
    """

    z_size: int = 32
    batch_size: int = 100
    learning_rate: float = 1e-4
    epochs: int = 10
    max_seconds: float = 0.0
    kl_tolerance: float = 0.5
    buffer_episodes: int = 100
    encode_chunk: int = 256
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("vae", self, "z_size", "batch_size", "learning_rate", "epochs", "buffer_episodes", "encode_chunk")
        _not_negative("vae", self, "max_seconds", "kl_tolerance", "seed")


@dataclasses.dataclass(frozen=True)
class MdnRnnConfig:
    """M: the LSTM with a mixture-density head, trained with teacher forcing on (z, a) sequences.

    `hidden` 256 and 5 mixtures give the paper's 422,368 parameters for CarRacing (512 for Doom).
    Sequences of `seq_len` steps are cut at random offsets from the encoded episodes and z is
    drawn afresh from V's N(mu, sigma) for every batch. `done_pos_weight` weighs the rare
    episode ends in the done head's cross-entropy (TakeCover only).
    """

    hidden: int = 256
    mixtures: int = 5
    seq_len: int = 1000
    batch_size: int = 100
    steps: int = 4000
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    max_seconds: float = 0.0
    done_pos_weight: float = 10.0
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("mdnrnn", self, "hidden", "mixtures", "seq_len", "batch_size", "steps", "learning_rate")
        _not_negative("mdnrnn", self, "grad_clip", "max_seconds", "done_pos_weight", "seed")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """C: the linear controller a = tanh(W [z, h] + b), evolved by CMA-ES (pycma).

    Each generation asks CMA-ES for `population` candidates and scores each by its mean return
    over `rollouts` episodes (all candidates of a generation share the same episode seeds).
    `dream: true` scores them inside M instead of the real environment. `diagonal` uses
    separable CMA-ES (cheaper per generation for 867 parameters). `include_cell` also feeds the
    LSTM cell state to C; `sample_z` feeds a sample of V's posterior instead of its mean.
    Every `eval_every` generations (and after the last) the mean of the search distribution and
    the generation's best candidate are each scored over `eval_rollouts` episodes (dreams with
    `dream`, rounded up to whole population calls); the better becomes `best` when it improves.
    Existing CMA-ES state in `run_dir/controller` is resumed when `resume` is set and it was
    made for the same objective.
    """

    population: int = 64
    rollouts: int = 16
    sigma0: float = 0.1
    generations: int = 1000
    max_seconds: float = 0.0
    workers: int = 2
    diagonal: bool = False
    dream: bool = False
    include_cell: bool = False
    sample_z: bool = False
    eval_every: int = 25
    eval_rollouts: int = 1024
    resume: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("controller", self, "population", "rollouts", "sigma0", "generations", "eval_every", "eval_rollouts")
        _not_negative("controller", self, "max_seconds", "workers", "seed")
        if self.population < 2:
            raise ConfigError(f"controller.population={self.population}: CMA-ES needs at least 2 candidates")


@dataclasses.dataclass(frozen=True)
class DreamConfig:
    """The dream: M run as the environment (paper: TakeCover at temperature 1.15, 2100 steps).

    Z is drawn from M's mixture at `temperature`; each step the episode ends with M's done
    probability (`sample_done`), or, with `sample_done: false`, when that probability exceeds
    `done_threshold`; at the latest after `max_steps`. The return is the number of steps survived.
    """

    temperature: float = 1.15
    max_steps: int = 2100
    sample_done: bool = True
    done_threshold: float = 0.5

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("dream", self, "temperature", "max_steps")
        if not 0.0 < self.done_threshold < 1.0:
            raise ConfigError(f"dream.done_threshold={self.done_threshold} must lie in (0, 1)")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Scoring a controller in the real environment, next to a random policy on the same seeds."""

    episodes: int = 100
    workers: int = 2
    random_baseline: bool = True
    seed: int = 1_000_000

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("evaluate", self, "episodes")
        _not_negative("evaluate", self, "workers", "seed")


@dataclasses.dataclass(frozen=True)
class PicturesConfig:
    """The pictures: V's reconstructions (PNG), a decoded dream (GIF), the agent (GIF)."""

    reconstructions: int = 8
    dream_steps: int = 100
    agent_steps: int = 300
    fps: int = 25
    seed: int = 0

    def validate(self) -> None:
        """Raises `ConfigError` naming the first wrong field."""
        _positive("pictures", self, "reconstructions", "dream_steps", "agent_steps", "fps")


@dataclasses.dataclass(frozen=True)
class WorldModelsConfig:
    """The whole pipeline; every stage reads and writes below `run_dir`."""

    run_dir: str = "runs/worldmodels"
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    collect: CollectConfig = dataclasses.field(default_factory=CollectConfig)
    vae: VaeConfig = dataclasses.field(default_factory=VaeConfig)
    mdnrnn: MdnRnnConfig = dataclasses.field(default_factory=MdnRnnConfig)
    controller: ControllerConfig = dataclasses.field(default_factory=ControllerConfig)
    dream: DreamConfig = dataclasses.field(default_factory=DreamConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)
    pictures: PicturesConfig = dataclasses.field(default_factory=PicturesConfig)

    def validate(self) -> None:
        """Checks what spans sections."""
        if not self.run_dir:
            raise ConfigError("run_dir is empty: name a directory for the run's files")
        if self.controller.dream and not self.env.has_done:
            raise ConfigError(
                f"controller.dream=true needs an environment whose M predicts episode ends; "
                f"env.name={self.env.name!r} has none (use takecover, or train CarRacing in the real env)"
            )

    @property
    def paths(self) -> RunPaths:
        """Where each stage's files live."""
        return RunPaths(Path(self.run_dir))


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """The files of one run directory."""

    root: Path

    @property
    def rollouts(self) -> Path:
        """Episode shards (`ep_SEED.npz`) and their `manifest.jsonl`."""
        return self.root / "rollouts"

    @property
    def series(self) -> Path:
        """Encoded episodes: V's mu and log-variance per frame, with actions and rewards."""
        return self.root / "series"

    @property
    def vae(self) -> Path:
        """V's parameters (`vae.npz` + `vae.json`)."""
        return self.root / "vae"

    @property
    def mdnrnn(self) -> Path:
        """M's parameters (`mdnrnn.npz` + `mdnrnn.json`)."""
        return self.root / "mdnrnn"

    @property
    def controller(self) -> Path:
        """C's parameters, the CMA-ES state and the generation log."""
        return self.root / "controller"

    @property
    def pictures(self) -> Path:
        """PNG and GIF files."""
        return self.root / "pictures"
