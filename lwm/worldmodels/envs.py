"""Environments as the models see them: 64×64 uint8 frames, a small action vector, a reward.

The real environments come through gymnasium (optional extras): CarRacing-v3 (box2d) and
VizDoom's TakeCover (the `doom` extra), both headless. Frames are preprocessed as in the paper:
CarRacing's bottom 12 rows (the dashboard) are cropped, then every frame is resized to 64×64 and
kept as uint8; models divide by 255.

Actions have two forms. The *model action* is what rollouts store and what M and C see:
CarRacing `[steer in [-1, 1], gas in [0, 1], brake in [0, 1]]`, TakeCover one value in
{-1 (left), 0 (stay), 1 (right)}. The *env action* is what gymnasium's `step` takes. C's raw
tanh output `y` in [-1, 1] becomes a model action as in the paper's code: CarRacing
`[y0, (y1 + 1) / 2, clip(y2, 0, 1)]`; TakeCover left below -1/3, right above 1/3, else stay.

This module imports numpy, PIL and (lazily) gymnasium only, never JAX, so that collection
workers start fast.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from lwm.config import ConfigError
from lwm.config.worldmodels import ENV_ACTION_DIM, GYM_IDS, EnvConfig

FRAME_SIZE = 64
CARRACING_KEEP_ROWS = 84  # rows 84..95 of CarRacing's 96×96 frame are the dashboard
TAKECOVER_THRESHOLD = 1.0 / 3.0
# VizdoomTakeCover-v1's Discrete(3) actions: 0 = no button, 1 = MOVE_RIGHT, 2 = MOVE_LEFT.
TAKECOVER_ENV_ACTION = {-1: 2, 0: 0, 1: 1}


def preprocess_frame(frame: np.ndarray, crop_rows: int | None = None) -> np.ndarray:
    """Crops the top `crop_rows` rows (all when None) and resizes to 64×64 RGB uint8."""
    from PIL import Image

    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an RGB frame of shape (H, W, 3), got {frame.shape}")
    if crop_rows is not None:
        frame = frame[:crop_rows]
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    return np.asarray(image.resize((FRAME_SIZE, FRAME_SIZE), Image.BILINEAR), dtype=np.uint8)


def model_action_from_tanh(name: str, y: Any, xp: Any = np) -> Any:
    """Maps C's tanh output(s) `y[..., A]` to model actions (numpy or jax.numpy via `xp`)."""
    if name in ("carracing", "fake-carracing"):
        steer = y[..., 0]
        gas = (y[..., 1] + 1.0) / 2.0
        brake = xp.clip(y[..., 2], 0.0, 1.0)
        return xp.stack([steer, gas, brake], axis=-1)
    value = y[..., 0]
    stay = xp.zeros_like(value)
    left = -xp.ones_like(value)
    right = xp.ones_like(value)
    return xp.where(value < -TAKECOVER_THRESHOLD, left, xp.where(value > TAKECOVER_THRESHOLD, right, stay))[..., None]


def env_action(name: str, model_action: np.ndarray) -> Any:
    """The action gymnasium's `step` takes for one model action."""
    if name in ("carracing", "fake-carracing"):
        return np.asarray(model_action, dtype=np.float32)
    return TAKECOVER_ENV_ACTION[int(round(float(model_action[0])))]


class FrameEnv(Protocol):
    """What the pipeline needs from an environment."""

    raw_frame: np.ndarray

    def reset(self, seed: int) -> np.ndarray:
        """Starts an episode; returns its first 64×64 frame."""

    def step(self, model_action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Applies a model action; returns (frame, reward, terminated, truncated)."""

    def close(self) -> None:
        """Releases the environment."""


class GymFrameEnv:
    """A gymnasium environment behind the `FrameEnv` interface, with the step limit applied."""

    def __init__(self, config: EnvConfig):
        import gymnasium as gym

        self.name = config.name
        if config.name == "takecover":
            try:
                import vizdoom.gymnasium_wrapper  # noqa: F401  (registers the Vizdoom ids)
            except ImportError as error:
                raise ConfigError(
                    "env.name='takecover' needs VizDoom: pip install -e '.[doom]' (vizdoom==1.3.2)"
                ) from error
        elif config.name == "carracing":
            try:
                import pygame  # noqa: F401  (CarRacing renders its frames with pygame)
            except ImportError as error:
                raise ConfigError("env.name='carracing' needs pygame: pip install pygame-ce") from error
        # gym.make wraps the env in TimeLimit(max_episode_steps), replacing CarRacing's own 1000.
        self.env = gym.make(GYM_IDS[config.name], max_episode_steps=config.max_steps)
        self.raw_frame = np.zeros((FRAME_SIZE, FRAME_SIZE, 3), np.uint8)

    def _frame(self, observation: Any) -> np.ndarray:
        if self.name == "takecover":
            self.raw_frame = observation["screen"]
            return preprocess_frame(self.raw_frame)
        self.raw_frame = observation
        return preprocess_frame(observation, CARRACING_KEEP_ROWS)

    def reset(self, seed: int) -> np.ndarray:
        """Starts an episode with gymnasium seed `seed`; returns its first frame."""
        observation, _ = self.env.reset(seed=int(seed))
        return self._frame(observation)

    def step(self, model_action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Applies a model action; returns (frame, reward, terminated, truncated)."""
        observation, reward, terminated, truncated, _ = self.env.step(env_action(self.name, model_action))
        return self._frame(observation), float(reward), bool(terminated), bool(truncated)

    def close(self) -> None:
        """Closes the gymnasium environment."""
        self.env.close()


class FakeEnv:
    """A cheap synthetic environment with a real environment's action space, for tests.

    `fake-carracing`: a bright bar on a dark road drifts with the steering; reward favours gas
    while the bar stays central, minus 0.1 per step, like CarRacing's time penalty.
    `fake-takecover`: a ball falls towards the player, who moves left or right; being hit ends
    the episode; reward is 1 per step survived. Both are deterministic given the seed.
    """

    def __init__(self, config: EnvConfig):
        self.name = config.name
        self.max_steps = config.max_steps
        self.raw_frame = np.zeros((FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
        self._rng = np.random.default_rng(0)
        self._t = 0
        self._position = 0.0
        self._ball = np.zeros(2)

    def _render(self) -> np.ndarray:
        frame = np.full((FRAME_SIZE, FRAME_SIZE, 3), 40, np.uint8)
        column = int(np.clip((self._position + 1.0) / 2.0 * (FRAME_SIZE - 8), 0, FRAME_SIZE - 8))
        frame[48:60, column:column + 8] = (230, 60, 60)
        if self.name == "fake-takecover":
            bx, by = (np.clip(self._ball, 0, 1) * (FRAME_SIZE - 6)).astype(int)
            frame[by:by + 6, bx:bx + 6] = (250, 200, 40)
        else:
            frame[:, 28:36, 1] = 150
        self.raw_frame = frame
        return frame

    def reset(self, seed: int) -> np.ndarray:
        """Starts an episode from `seed`; returns its first frame."""
        self._rng = np.random.default_rng(seed)
        self._t = 0
        self._position = float(self._rng.uniform(-0.5, 0.5))
        self._ball = np.array([self._rng.uniform(0, 1), 0.0])
        return self._render()

    def step(self, model_action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Advances one step; returns (frame, reward, terminated, truncated)."""
        action = np.asarray(model_action, dtype=np.float64)
        if action.shape != (ENV_ACTION_DIM[self.name],):
            raise ValueError(f"{self.name}: expected an action of shape ({ENV_ACTION_DIM[self.name]},), got {action.shape}")
        self._t += 1
        terminated = False
        if self.name == "fake-takecover":
            self._position = float(np.clip(self._position + 0.15 * action[0], -1, 1))
            self._ball[1] += 0.08
            if self._ball[1] >= 0.8:
                player = (self._position + 1.0) / 2.0
                terminated = abs(player - self._ball[0]) < 0.2 and self._rng.uniform() < 0.8
                self._ball = np.array([self._rng.uniform(0, 1), 0.0])
            reward = 1.0
        else:
            self._position = float(np.clip(self._position + 0.1 * action[0] + self._rng.normal(0, 0.03), -1, 1))
            reward = -0.1 + action[1] * (1.0 - abs(self._position)) - 0.5 * action[2]
        truncated = not terminated and self._t >= self.max_steps
        return self._render(), float(reward), terminated, truncated

    def close(self) -> None:
        """Nothing to release."""


def make_env(config: EnvConfig) -> FrameEnv:
    """The environment named by `config.name`, with `config.max_steps` as its step limit."""
    if config.name.startswith("fake-"):
        return FakeEnv(config)
    return GymFrameEnv(config)


class RandomPolicy:
    """The data-collection policies: uniform `random` actions, or `brownian` drift.

    Both return model actions. Brownian motion for CarRacing drifts in the action box directly;
    for TakeCover it drifts a value in [-1, 1] that is then cut into left/stay/right.
    """

    def __init__(self, name: str, policy: str, seed: int, brownian_dt: float = 0.02):
        self.name = name
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.step_std = float(np.sqrt(brownian_dt))
        dim = ENV_ACTION_DIM[name]
        carracing = name in ("carracing", "fake-carracing")
        self.low = np.array([-1.0, 0.0, 0.0]) if carracing else -np.ones(dim)
        self.high = np.ones(dim)
        self.state = self.rng.uniform(self.low, self.high)

    def __call__(self) -> np.ndarray:
        """The next model action."""
        if self.policy == "brownian":
            self.state = np.clip(self.state + self.rng.normal(0.0, self.step_std, self.state.shape), self.low, self.high)
            raw = self.state
        else:
            raw = self.rng.uniform(self.low, self.high)
        if self.name in ("carracing", "fake-carracing"):
            return raw.astype(np.float32)
        return model_action_from_tanh(self.name, raw[None].astype(np.float32))[0].astype(np.float32)
