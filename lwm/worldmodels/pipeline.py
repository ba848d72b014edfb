"""The pipeline's stages as library calls: collect → V → encode → M → C → evaluate → pictures.

Every stage reads its inputs from and writes its outputs to `run_dir` (see `RunPaths`), so the
stages can run one by one (`lwm wm collect`, `lwm wm train-vae`, ...) or all at once
(`lwm wm run`, which also records each stage's wall time in `run_dir/timings.json`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from lwm.config.worldmodels import WorldModelsConfig

# Seed ranges kept apart so that training, checkpoint evaluation and final evaluation never
# replay the same environment episodes.
TRAIN_SEED_BASE = 100_000
CHECK_SEED_BASE = 50_000_000


def _save_json(path: Any, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _config_dict(config: WorldModelsConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def collect(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 1: random rollouts."""
    from lwm.worldmodels.rollouts import collect as collect_rollouts

    return collect_rollouts(config, progress).summary()


def train_vae(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 2: V."""
    from lwm.worldmodels.vae import train_vae as train

    return train(config, progress).summary()


def encode(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 3: every frame through V."""
    from lwm.worldmodels.vae import encode_dataset

    return f"encoded the rollouts into {encode_dataset(config, progress)}"


def train_mdnrnn(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 4: M."""
    from lwm.worldmodels.mdnrnn import train_mdnrnn as train

    return train(config, progress).summary()


def train_controller(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 5: C by CMA-ES, in the real environment or (`controller.dream`) inside M.

    Writes `controller/best.npz` (+ `.json`) whenever an evaluation checkpoint improves, and
    `controller/last.npz` with the search distribution's final mean.
    """
    import jax

    from lwm.worldmodels import checkpoint
    from lwm.worldmodels.cmaes import evolve
    from lwm.worldmodels.controller import RealEnvEvaluator, save_controller, spec_for

    settings = config.controller
    vae_meta = checkpoint.read_meta(config.paths.vae, "vae")
    mdn_meta = checkpoint.read_meta(config.paths.mdnrnn, "mdnrnn")
    spec = spec_for(config, vae_meta, mdn_meta)
    directory = config.paths.controller
    meta = {"env": config.env.name, "dream": settings.dream, "sample_z": settings.sample_z,
            "temperature": config.dream.temperature if settings.dream else None}

    def on_best(theta: np.ndarray, score: float, generation: int) -> None:
        save_controller(directory, "best", theta, spec, meta | {"score": score, "generation": generation})

    evaluator = None
    if settings.dream:
        from lwm.worldmodels.dream import make_dream_fn
        from lwm.worldmodels.mdnrnn import Series, load_mdnrnn

        mdnrnn = load_mdnrnn(config.paths.mdnrnn)
        z0_mu, z0_logvar = Series(config.paths.series / "series.npz").initial_latents()
        dream_args = (mdnrnn, spec, config.env.name)
        dream_settings = (config.dream.max_steps, config.dream.temperature, config.dream.done_threshold)
        train_dream = make_dream_fn(*dream_args, settings.rollouts, *dream_settings, sample_done=config.dream.sample_done,
                                    done_pos_weight=float(mdn_meta.get("done_pos_weight", 1.0)))

        def objective(thetas: np.ndarray, generation: int) -> np.ndarray:
            return train_dream(thetas, z0_mu, z0_logvar, jax.random.key(settings.seed * 1_000_003 + generation))

        def evaluate(theta: np.ndarray, generation: int) -> float:
            # The training function's shape (population × rollouts dreams) serves evaluation too, so
            # nothing recompiles; eval_rollouts is rounded up to whole calls.
            calls = -(-settings.eval_rollouts // (settings.population * settings.rollouts))
            tiled = np.repeat(theta[None], settings.population, axis=0)
            keys = [jax.random.key(CHECK_SEED_BASE + 1000 * generation + i) for i in range(calls)]
            return float(np.mean([train_dream(tiled, z0_mu, z0_logvar, key, shared=False) for key in keys]))
    else:
        evaluator = RealEnvEvaluator(config, settings.workers, settings.sample_z)

        def objective(thetas: np.ndarray, generation: int) -> np.ndarray:
            base = TRAIN_SEED_BASE + settings.seed * 10_000_000 + generation * settings.rollouts
            seeds = [base + r for r in range(settings.rollouts)] * len(thetas)
            returns = evaluator.returns(np.repeat(thetas, settings.rollouts, axis=0), seeds, key_seed=generation)
            return returns.reshape(len(thetas), settings.rollouts).mean(axis=1)

        def evaluate(theta: np.ndarray, generation: int) -> float:
            seeds = [CHECK_SEED_BASE + i for i in range(settings.eval_rollouts)]
            return float(evaluator.returns(np.repeat(theta[None], len(seeds), axis=0), seeds).mean())

    try:
        tag = f"{config.env.name} dream={settings.dream} rollouts={settings.rollouts}"
        result = evolve(objective, spec.num_params, settings, directory, evaluate, on_best, progress, tag)
    finally:
        if evaluator is not None:
            evaluator.close()
    save_controller(directory, "last", result.best_theta, spec, meta | {"score": result.best_score,
                                                                          "generation": result.generations})
    where = f"the dream (τ={config.dream.temperature})" if settings.dream else "the real environment"
    return f"{result.summary()} (trained in {where}; {spec.num_params} parameters)"


def evaluate(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 6: the best controller in the real environment, next to a random policy.

    Writes `run_dir/eval.json` with every episode's return.
    """
    from lwm.worldmodels.controller import RealEnvEvaluator, load_controller
    from lwm.worldmodels.rollouts import random_returns

    settings = config.evaluate
    theta, spec, meta = load_controller(config.paths.controller, "best")
    seeds = [settings.seed + i for i in range(settings.episodes)]
    start = time.perf_counter()
    with RealEnvEvaluator(config, settings.workers, bool(meta.get("sample_z", False))) as evaluator:
        if evaluator.spec != spec:
            raise ValueError(f"{config.paths.controller}/best.json was trained for {spec}, but this run's V and M "
                             f"give {evaluator.spec}")
        returns = evaluator.returns(np.repeat(theta[None], len(seeds), axis=0), seeds)
    report: dict[str, Any] = {"env": config.env.name, "episodes": len(seeds), "max_steps": config.env.max_steps,
                              "controller": {"mean": float(returns.mean()), "std": float(returns.std()),
                                             "returns": returns.tolist(), "trained_in_dream": meta.get("dream")},
                              "seconds": round(time.perf_counter() - start, 1)}
    line = f"controller: {returns.mean():.1f} ± {returns.std():.1f} over {len(seeds)} episodes"
    if settings.random_baseline:
        baseline = random_returns(config.env, seeds, settings.workers)
        report["random"] = {"mean": float(baseline.mean()), "std": float(baseline.std()), "returns": baseline.tolist()}
        line += f"; random policy: {baseline.mean():.1f} ± {baseline.std():.1f}"
    _save_json(config.paths.root / "eval.json", report)
    return line


def pictures(config: WorldModelsConfig, progress: bool = True) -> str:
    """Stage 7: V's reconstructions (PNG), a decoded dream (GIF), the agent (GIF)."""
    from lwm.worldmodels.pictures import make_pictures

    written = make_pictures(config)
    return "wrote " + ", ".join(str(path) for path in written)


STAGES: dict[str, Callable[[WorldModelsConfig, bool], str]] = {
    "collect": collect,
    "train-vae": train_vae,
    "encode": encode,
    "train-mdnrnn": train_mdnrnn,
    "train-controller": train_controller,
    "evaluate": evaluate,
    "pictures": pictures,
}


def run_all(config: WorldModelsConfig, progress: bool = True, stages: list[str] | None = None,
            echo: Callable[[str], None] = print) -> dict[str, float]:
    """Runs the stages in order, printing each one's summary; returns and saves their wall times."""
    timings: dict[str, float] = {}
    total = time.perf_counter()
    config.paths.root.mkdir(parents=True, exist_ok=True)
    _save_json(config.paths.root / "config.json", _config_dict(config))
    for name in stages or list(STAGES):
        start = time.perf_counter()
        message = STAGES[name](config, progress)
        timings[name] = round(time.perf_counter() - start, 1)
        echo(f"[{name} {timings[name]:.0f} s] {message}")
    timings["total"] = round(time.perf_counter() - total, 1)
    _save_json(config.paths.root / "timings.json", timings)
    return timings
