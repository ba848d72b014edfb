"""Environments, frame preprocessing, actions, and resumable rollout collection."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lwm.config import ConfigError, load_config
from lwm.config.worldmodels import CollectConfig, EnvConfig, WorldModelsConfig
from lwm.worldmodels.envs import RandomPolicy, env_action, make_env, model_action_from_tanh, preprocess_frame
from lwm.worldmodels.rollouts import collect, episode_file, load_episode, read_manifest

REPO = Path(__file__).resolve().parents[2]


def fake_config(tmp_path, name="fake-takecover", episodes=4, workers=0, max_steps=12):
    return WorldModelsConfig(run_dir=str(tmp_path / "run"), env=EnvConfig(name=name, max_steps=max_steps),
                             collect=CollectConfig(episodes=episodes, workers=workers, policy="brownian"))


def test_carracing_frames_lose_the_dashboard_and_become_64x64():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[84:] = 255  # the dashboard rows
    out = preprocess_frame(frame, crop_rows=84)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out.max() == 0
    assert preprocess_frame(frame).max() == 255  # without the crop the dashboard shows


def test_controller_outputs_map_to_the_papers_actions():
    y = np.array([[-0.5, -1.0, -0.3], [0.2, 0.0, 0.6], [1.0, 1.0, 1.0]], np.float32)
    actions = model_action_from_tanh("carracing", y)
    np.testing.assert_allclose(actions, [[-0.5, 0.0, 0.0], [0.2, 0.5, 0.6], [1.0, 1.0, 1.0]])
    doom = model_action_from_tanh("takecover", np.array([[-0.9], [-0.2], [0.2], [0.5]], np.float32))
    np.testing.assert_array_equal(doom[:, 0], [-1, 0, 0, 1])
    assert [env_action("takecover", a) for a in doom] == [2, 0, 0, 1]  # left, stay, stay, right
    import jax.numpy as jnp

    np.testing.assert_allclose(np.asarray(model_action_from_tanh("carracing", jnp.asarray(y), jnp)), actions)


@pytest.mark.parametrize("policy", ["random", "brownian"])
def test_random_policies_stay_in_the_action_space(policy):
    actor = RandomPolicy("carracing", policy, seed=0)
    actions = np.stack([actor() for _ in range(300)])
    assert actions[:, 0].min() >= -1 and actions[:, 0].max() <= 1
    assert actions[:, 1:].min() >= 0 and actions[:, 1:].max() <= 1
    doom = np.stack([RandomPolicy("takecover", policy, seed=1)() for _ in range(50)])
    assert set(np.unique(doom)) <= {-1.0, 0.0, 1.0}


def test_collection_writes_shards_and_a_manifest_and_skips_finished_seeds(tmp_path):
    config = fake_config(tmp_path, episodes=3, workers=2)
    summary = collect(config, progress=False)
    assert summary.collected == 3
    entries = read_manifest(config.paths.rollouts).entries
    assert [entry["seed"] for entry in entries] == [0, 1, 2]
    episode = load_episode(config.paths.rollouts / entries[0]["file"])
    steps = entries[0]["steps"]
    assert episode["frames"].shape == (steps + 1, 64, 64, 3) and episode["frames"].dtype == np.uint8
    assert episode["actions"].shape == (steps, 1) and episode["rewards"].shape == (steps,)
    assert episode["dones"].sum() == int(entries[0]["terminated"])
    again = collect(dataclasses.replace(config, collect=dataclasses.replace(config.collect, episodes=4)), progress=False)
    assert again.collected == 1 and again.skipped_finished == 3


def test_a_killed_collection_loses_only_the_episodes_in_flight(tmp_path):
    config = fake_config(tmp_path, name="fake-carracing", episodes=40, max_steps=150)
    script = (
        "from lwm.config.worldmodels import *\n"
        "from lwm.worldmodels.rollouts import collect\n"
        f"collect(WorldModelsConfig(run_dir={config.run_dir!r}, env=EnvConfig(name='fake-carracing', max_steps=150),"
        " collect=CollectConfig(episodes=40, workers=0, policy='brownian')), progress=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    manifest = config.paths.rollouts / "manifest.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = read_manifest(config.paths.rollouts).entries
    assert 3 <= len(finished) < 40, "the collection finished before it could be killed"
    # A partial file from an episode in flight may be left; it is never listed as finished.
    (config.paths.rollouts / ".ep_00000039.npz.tmp").write_bytes(b"half an episode")
    mtimes = {entry["file"]: (config.paths.rollouts / entry["file"]).stat().st_mtime_ns for entry in finished}
    for entry in finished:
        load_episode(config.paths.rollouts / entry["file"])  # every listed shard is whole
    summary = collect(config, progress=False)
    assert summary.skipped_finished == len(finished)
    assert summary.collected == 40 - len(finished)
    assert summary.removed_temporaries >= 1
    for name, mtime in mtimes.items():
        assert (config.paths.rollouts / name).stat().st_mtime_ns == mtime  # not collected twice
    entries = read_manifest(config.paths.rollouts).entries
    assert [entry["seed"] for entry in entries] == list(range(40))
    assert not list(config.paths.rollouts.glob(".*.tmp"))


def test_a_manifest_line_cut_short_is_skipped_and_counted(tmp_path):
    config = fake_config(tmp_path, episodes=2)
    collect(config, progress=False)
    with open(config.paths.rollouts / "manifest.jsonl", "a") as handle:
        handle.write('{"seed": 5, "file": "ep_000')
    report = read_manifest(config.paths.rollouts)
    assert report.bad_lines == 1 and len(report.entries) == 2
    assert episode_file(5) == "ep_00000005.npz"


def test_carracing_runs_headless_with_a_step_limit(tmp_path):
    pytest.importorskip("Box2D")
    pytest.importorskip("pygame")
    env = make_env(EnvConfig(name="carracing", max_steps=20))
    frame = env.reset(seed=3)
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8 and env.raw_frame.shape == (96, 96, 3)
    steps, truncated = 0, False
    while not truncated:
        frame, reward, terminated, truncated = env.step(np.array([0.0, 1.0, 0.0], np.float32))
        steps += 1
        assert not terminated
    assert steps == 20
    env.close()


def test_takecover_runs_headless_with_a_step_limit():
    pytest.importorskip("vizdoom")
    env = make_env(EnvConfig(name="takecover", max_steps=15))
    frame = env.reset(seed=0)
    assert frame.shape == (64, 64, 3) and env.raw_frame.shape == (240, 320, 3)
    steps, done, total = 0, False, 0.0
    while not done:
        frame, reward, terminated, truncated = env.step(np.array([1.0], np.float32))
        steps, done, total = steps + 1, terminated or truncated, total + reward
    assert steps <= 15 and total == steps  # one point per tic survived
    env.close()


def test_config_errors_name_the_field_and_a_fix(tmp_path):
    with pytest.raises(ConfigError, match="controller.dream=true needs .*takecover"):
        load_config(WorldModelsConfig, None, ["--controller.dream", "true"])
    with pytest.raises(ConfigError, match=r"vae.z_size=0 must be positive; set --vae.z_size"):
        load_config(WorldModelsConfig, None, ["--vae.z_size", "0"])
    with pytest.raises(ConfigError, match="dream.done_threshold"):
        load_config(WorldModelsConfig, None, ["--dream.done_threshold", "1.5"])
    for preset in sorted((REPO / "configs" / "worldmodels").glob("*.yaml")):
        config = load_config(WorldModelsConfig, preset)
        assert json.loads(json.dumps(dataclasses.asdict(config)))  # every preset loads and validates
