"""The dream, and every stage end to end on a tiny fake TakeCover through the `lwm wm` CLI."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from lwm.cli import main
from lwm.worldmodels.controller import ControllerSpec, load_controller
from lwm.worldmodels.dream import make_dream_fn
from lwm.worldmodels.mdnrnn import init_mdnrnn

TINY = """\
run_dir: {run_dir}
env: {{name: fake-takecover, max_steps: 25}}
collect: {{episodes: 4, workers: 0, policy: brownian}}
vae: {{z_size: 4, batch_size: 16, epochs: 1, encode_chunk: 32}}
mdnrnn: {{hidden: 8, seq_len: 8, batch_size: 4, steps: 3}}
controller: {{population: 4, rollouts: 2, generations: 2, workers: 0, eval_every: 2, eval_rollouts: 2}}
dream: {{max_steps: 30, temperature: 1.15}}
evaluate: {{episodes: 2, workers: 1}}
pictures: {{reconstructions: 3, dream_steps: 4, agent_steps: 6}}
"""


def test_dream_scores_a_whole_population_in_one_call():
    meta = {"z_size": 4, "action_dim": 1, "hidden": 8, "mixtures": 3, "with_done": True}
    mdnrnn = init_mdnrnn(meta, seed=0)
    spec = ControllerSpec(4, 8, 1)
    rng = np.random.default_rng(0)
    thetas = rng.normal(size=(5, spec.num_params)).astype(np.float32)
    thetas[1] = thetas[0]
    z0 = rng.normal(size=(3, 4)).astype(np.float32)
    import jax

    returns, dreams = {}, {}
    for threshold in (1e-6, 0.5, 1 - 1e-6):  # one compilation serves all three
        dreams[threshold] = make_dream_fn(mdnrnn, spec, "fake-takecover", rollouts=3, max_steps=30,
                                          temperature=1.15, done_threshold=threshold, chunk=8, sample_done=False)
        returns[threshold] = dreams[threshold](thetas, z0, np.zeros_like(z0), jax.random.key(0))
        assert returns[threshold].shape == (5,)
    np.testing.assert_array_equal(returns[1e-6], 1.0)  # every dream ends after its first step
    np.testing.assert_array_equal(returns[1 - 1e-6], 30.0)  # none ends before the step limit
    middle = returns[0.5]
    assert middle[0] == middle[1]  # the same controller meets the same dreams
    assert np.all((middle >= 1) & (middle <= 30))
    own = dreams[0.5](np.repeat(thetas[:1], 5, axis=0), z0, np.zeros_like(z0), jax.random.key(0), shared=False)
    assert len(set(own.tolist())) > 1  # unshared: each copy meets its own dreams
    # Sampled ends: the done head's odds are divided by the weight its training gave positives.
    for weight, expected in ((1e-30, 1.0), (1e30, 30.0)):
        sampled = make_dream_fn(mdnrnn, spec, "fake-takecover", rollouts=3, max_steps=30, temperature=1.15,
                                done_threshold=0.5, chunk=8, sample_done=True, done_pos_weight=weight)
        np.testing.assert_array_equal(sampled(thetas, z0, np.zeros_like(z0), jax.random.key(0)), expected)
    sampled = make_dream_fn(mdnrnn, spec, "fake-takecover", rollouts=3, max_steps=30, temperature=1.15,
                            done_threshold=0.5, chunk=8, sample_done=True)
    lengths = sampled(thetas, z0, np.zeros_like(z0), jax.random.key(0))
    assert np.all((lengths >= 1) & (lengths <= 30)) and lengths[0] == lengths[1]


def test_every_stage_runs_and_evaluate_loads_the_trained_controller(tmp_path):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(TINY.format(run_dir=tmp_path / "run"))
    run = tmp_path / "run"
    base = ["--config", str(config_path), "--quiet"]
    for stage in ("collect", "train-vae", "encode", "train-mdnrnn", "train-controller", "evaluate"):
        assert main(["wm", stage, *base]) == 0, stage
    theta, spec, meta = load_controller(run / "controller")
    assert spec == ControllerSpec(4, 8, 1) and theta.shape == (spec.num_params,) and meta["dream"] is False
    report = json.loads((run / "eval.json").read_text())
    assert len(report["controller"]["returns"]) == 2 and len(report["random"]["returns"]) == 2
    assert report["controller"]["trained_in_dream"] is False
    log = [json.loads(line) for line in (run / "controller" / "log.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in log] == [1, 2] and "eval" in log[1]

    assert main(["wm", "train-controller", *base, "--dream", "--controller.generations", "3"]) == 0
    theta, spec, meta = load_controller(run / "controller")
    assert meta["dream"] is True and meta["temperature"] == pytest.approx(1.15)
    assert 1.0 <= meta["score"] <= 30.0  # steps survived in the dream
    assert main(["wm", "evaluate", *base, "--evaluate.workers", "0"]) == 0
    assert json.loads((run / "eval.json").read_text())["controller"]["trained_in_dream"] is True

    assert main(["wm", "pictures", *base]) == 0
    grid = iio.imread(run / "pictures" / "reconstructions.png")
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 3 * 64
    assert iio.imread(run / "pictures" / "dream.gif", index=None).shape[0] >= 1
    assert iio.imread(run / "pictures" / "agent.gif", index=None).shape[0] >= 2


def test_cli_help_lists_the_stages_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["wm", "--help"])
    text = capsys.readouterr().out
    for stage in ("collect", "train-vae", "encode", "train-mdnrnn", "train-controller", "evaluate", "pictures"):
        assert stage in text
    with pytest.raises(SystemExit):
        main(["wm", "train-controller", "--help"])
    assert "--dream" in capsys.readouterr().out
