"""Benchmark of the World Models pipeline's inner loops, printed as a markdown table.

Measures (medians over `--repeats`, after one warm-up call that compiles):
- dream steps per second: a whole CMA-ES population dreamed in one jitted call (vmap over
  candidates, lax.scan over time), counted as population × rollouts × steps / seconds;
- real-environment steps per second: the bare environment with random actions in one process,
  and the full agent (V encodes the frame, C acts, M advances) in one process, lockstep batch;
- CMA-ES generation time (pycma ask + tell only, no evaluation) for the controller's 867
  parameters, full-covariance and separable.

example:
  .venv/bin/python scripts/bench_worldmodels.py --population 64 --rollouts 16 --steps 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def median_seconds(function, repeats: int) -> float:
    """Median wall time of `function()` over `repeats` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_dream(args: argparse.Namespace, z_size: int, hidden: int, action_dim: int, env_name: str) -> dict:
    """Dream steps per second for a population in one call (episodes never end early)."""
    import jax

    from lwm.worldmodels.controller import ControllerSpec
    from lwm.worldmodels.dream import make_dream_fn
    from lwm.worldmodels.mdnrnn import init_mdnrnn

    meta = {"z_size": z_size, "action_dim": action_dim, "hidden": hidden, "mixtures": 5, "with_done": True}
    mdnrnn = init_mdnrnn(meta, seed=0)
    spec = ControllerSpec(z_size, hidden, action_dim)
    rng = np.random.default_rng(0)
    thetas = rng.normal(scale=0.1, size=(args.population, spec.num_params)).astype(np.float32)
    z0 = rng.normal(size=(32, z_size)).astype(np.float32)
    dream = make_dream_fn(mdnrnn, spec, env_name, args.rollouts, args.steps, temperature=1.15,
                          done_threshold=1.0 - 1e-7)
    seconds = median_seconds(lambda: dream(thetas, z0, np.zeros_like(z0), jax.random.key(1)), args.repeats)
    steps = args.population * args.rollouts * args.steps
    return {"what": f"dream, M {hidden} units, z {z_size}: {args.population} candidates × {args.rollouts} dreams "
                    f"× {args.steps} steps per call", "steps_per_s": steps / seconds, "seconds": seconds}


def bench_env(name: str, steps: int) -> dict | None:
    """Bare environment steps per second with random actions (None when not installed)."""
    from lwm.config import ConfigError
    from lwm.config.worldmodels import EnvConfig
    from lwm.worldmodels.envs import RandomPolicy, make_env

    try:
        env = make_env(EnvConfig(name=name, max_steps=steps))
    except (ConfigError, ImportError) as error:
        print(f"skipping {name}: {error}")
        return None
    actor = RandomPolicy(name, "brownian", seed=0)

    def episode():
        env.reset(seed=0)
        for _ in range(steps):
            _, _, terminated, truncated = env.step(actor())
            if terminated or truncated:
                env.reset(seed=1)

    seconds = median_seconds(episode, 2)
    env.close()
    return {"what": f"{name}: bare environment, random actions, 1 process", "steps_per_s": steps / seconds,
            "seconds": seconds}


def bench_agent(name: str, batch: int, steps: int, z_size: int, hidden: int) -> dict | None:
    """Agent (V + C + M on every frame) steps per second in one process, `batch` episodes in lockstep."""
    import tempfile

    from lwm.config import ConfigError
    from lwm.config.worldmodels import EnvConfig, WorldModelsConfig
    from lwm.worldmodels.controller import ControllerSpec, LockstepRunner
    from lwm.worldmodels.mdnrnn import init_mdnrnn
    from lwm.worldmodels.vae import init_vae

    config = WorldModelsConfig(run_dir=tempfile.mkdtemp(), env=EnvConfig(name=name, max_steps=steps))
    meta = {"z_size": z_size, "action_dim": config.env.action_dim, "hidden": hidden, "mixtures": 5,
            "with_done": config.env.has_done}
    spec = ControllerSpec(z_size, hidden, config.env.action_dim)
    thetas = np.zeros((batch, spec.num_params), np.float32)
    try:
        runner = LockstepRunner(config, init_vae(z_size, 0), init_mdnrnn(meta, 0), spec, sample_z=False)
        runner.run(thetas, list(range(batch)), batch)  # warm-up: compiles
        start = time.perf_counter()
        runner.run(thetas, list(range(batch)), batch)
        seconds = time.perf_counter() - start
    except (ConfigError, ImportError) as error:
        print(f"skipping agent on {name}: {error}")
        return None
    # TakeCover episodes can end early: count the steps actually taken.
    return {"what": f"{name}: agent (V+C+M per frame), {batch} episodes in lockstep, 1 process",
            "steps_per_s": runner.last_steps / seconds, "seconds": seconds}


def bench_cmaes(dim: int, population: int, diagonal: bool, repeats: int) -> dict:
    """Seconds per CMA-ES generation (ask + tell) without evaluation."""
    from lwm.config.worldmodels import ControllerConfig
    from lwm.worldmodels.cmaes import make_strategy

    strategy = make_strategy(dim, ControllerConfig(population=population, diagonal=diagonal))
    rng = np.random.default_rng(0)

    def generation():
        candidates = strategy.ask()
        strategy.tell(candidates, list(rng.normal(size=len(candidates))))

    for _ in range(3):
        generation()
    seconds = median_seconds(generation, repeats)
    kind = "separable" if diagonal else "full covariance"
    return {"what": f"CMA-ES generation (ask+tell), {dim} parameters, population {population}, {kind}",
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="dream steps per call")
    parser.add_argument("--env-steps", type=int, default=300)
    parser.add_argument("--agent-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    rows = [
        bench_dream(args, 32, 256, 3, "carracing"),
        bench_dream(args, 64, 512, 1, "takecover"),
        bench_env("carracing", args.env_steps),
        bench_env("takecover", args.env_steps),
        bench_agent("carracing", args.agent_batch, args.env_steps, 32, 256),
        bench_agent("takecover", args.agent_batch, args.env_steps, 64, 512),
        bench_cmaes(867, 64, False, args.repeats),
        bench_cmaes(867, 64, True, args.repeats),
    ]
    rows = [row for row in rows if row is not None]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| measurement | steps/s | seconds per call |")
    print("|---|---:|---:|")
    for row in rows:
        rate = f"{row['steps_per_s']:,.0f}" if "steps_per_s" in row else "—"
        print(f"| {row['what']} | {rate} | {row['seconds']:.3f} |")


if __name__ == "__main__":
    main()
