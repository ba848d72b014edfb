"""CMA-ES around pycma: it solves spheres, logs, keeps the best and resumes."""

import json

import numpy as np

from lwm.config.worldmodels import ControllerConfig
from lwm.worldmodels.cmaes import evolve
from lwm.worldmodels.controller import ControllerSpec


def sphere_returns(center):
    """Returns (higher is better) of a sphere centred at `center`."""
    return lambda candidates, generation: -np.sum(np.square(candidates - center), axis=1)


def test_separable_cma_es_solves_a_sphere_of_the_controllers_dimension():
    dim = ControllerSpec(32, 256, 3).num_params
    assert dim == 867
    center = np.random.default_rng(0).uniform(-0.5, 0.5, dim)
    start_distance = float(np.sum(center**2))
    # Separable CMA-ES needs about 1,300 generations here (a few seconds); 1,500 is the bound.
    settings = ControllerConfig(population=16, sigma0=0.3, generations=1500, diagonal=True, resume=False)
    solved = {}

    def returns(candidates, generation):
        values = sphere_returns(center)(candidates, generation)
        if -values.max() < 1e-4 * start_distance and "generation" not in solved:
            solved["generation"] = generation
        return values

    result = evolve(returns, dim, settings, directory=None, progress=False)
    assert "generation" in solved, f"not solved in 1500 generations; best {result.best_score}"
    assert -result.best_score < 1e-4 * start_distance


def test_full_cma_es_solves_a_small_sphere_and_keeps_the_best():
    center = np.linspace(-1, 1, 12)
    settings = ControllerConfig(population=10, sigma0=0.3, generations=300, resume=False)
    result = evolve(sphere_returns(center), 12, settings, directory=None, progress=False)
    np.testing.assert_allclose(result.best_theta, center, atol=1e-3)
    assert result.best_score == max(record["max"] for record in result.history)


def test_evaluation_checkpoints_pick_the_better_of_mean_and_champion(tmp_path):
    center = np.full(5, 0.3)
    settings = ControllerConfig(population=6, sigma0=0.2, generations=6, eval_every=2, resume=False)
    evaluated, saved = [], []

    def evaluate(theta, generation):
        evaluated.append(generation)
        return float(-np.sum((theta - center) ** 2))

    result = evolve(sphere_returns(center), 5, settings, tmp_path, evaluate,
                    on_best=lambda theta, score, generation: saved.append(score), progress=False)
    assert evaluated == [2, 2, 4, 4, 6, 6]  # the mean and the generation's champion each time
    assert saved == sorted(saved) and saved[-1] == result.best_score
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["generation"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert set(lines[1]["eval"]) == {"mean", "champion"}


def test_an_interrupted_search_resumes_where_it_stopped(tmp_path):
    center = np.full(4, -0.2)
    first = evolve(sphere_returns(center), 4, ControllerConfig(population=6, generations=3, eval_every=100),
                   tmp_path, progress=False, tag="sphere")
    assert first.generations == 3
    resumed = evolve(sphere_returns(center), 4, ControllerConfig(population=6, generations=7, eval_every=100),
                     tmp_path, progress=False, tag="sphere")
    assert resumed.generations == 7 and len(resumed.history) == 4
    assert resumed.best_score >= first.best_score
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["generation"] for line in lines] == list(range(1, 8))
    # A different objective does not resume the old search; the log says why.
    other = evolve(sphere_returns(center), 4, ControllerConfig(population=6, generations=2, eval_every=100),
                   tmp_path, progress=False, tag="dream")
    assert len(other.history) == 2
    assert "not resuming" in json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])["note"]
