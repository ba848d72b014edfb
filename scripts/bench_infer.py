"""Inference benchmark: chunked prefill and one decode step against context length, with the
KV cache split over `sp` fake CPU devices, through `lwm.infer.cache.InferenceModel` (the engine
of `lwm chat`, `lwm generate`, `lwm needle` and the server).

The model is the `model` section of configs/tiny.yaml (float32).

- prefill: a random prompt of each length runs chunk by chunk into the cache (real compute).
  Useful FLOPs per token are the layers' matmuls (2 · weights) plus causal attention
  (4 · heads · head_dim · (position + 1) per layer); the rate is reported as a fraction of a
  2048² float32 matmul timed right before and right after (the shared CPU's speed drifts 2×).
- decode: one token against a cache of N filled positions, filled SYNTHETICALLY with random
  keys/values (what the step's cost and memory depend on). Memory per device is XLA's compiled
  memory analysis of the per-device program (arguments + outputs − donated aliases + temps).
  Each step time is also given in matmul units (seconds × the matmul rate of that moment).

`--baseline DIR` (a checkout of another commit's `lwm/` and `ringattention/`) runs this script
on that tree and on this one alternately, `--rounds` times, each in its own process, and
prints medians and new/old ratios of the matmul-normalised figures, taken side by side.

Example (the runs recorded in docs/benchmarks.md)::

    git archive d0893dc lwm ringattention configs | tar -x -C /tmp/h1_base
    .venv/bin/python scripts/bench_infer.py --devices 8 --prefill-lengths 16384 --decode-lengths 1048576 \\
        --baseline /tmp/h1_base --rounds 2
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (all on the sp axis) for decode")
    parser.add_argument("--prefill-devices", type=int, default=1, help="sp devices for prefill")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"), help="YAML whose model section is used")
    parser.add_argument("--prefill-lengths", default="16384")
    parser.add_argument("--decode-lengths", default="1048576")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--key-chunk", type=int, default=1024)
    parser.add_argument("--decode-steps", type=int, default=3, help="timed decode steps per length (median kept)")
    parser.add_argument("--cache-dtype", default="", help="cache dtype (default: the model's)")
    parser.add_argument("--source", default=str(REPO), help="tree whose lwm/ and ringattention/ are measured")
    parser.add_argument("--baseline", default="", help="another tree: measure both alternately and compare")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds with --baseline")
    parser.add_argument("--json", default="", help="write the results here")
    return parser.parse_args(argv)


def _matmul_rate(jax, jnp, size: int = 2048) -> float:
    """Best-of-three GFLOP/s of a float32 ``size × size`` matmul on the first device, right now."""
    x = jax.device_put(jnp.ones((size, size), jnp.float32), jax.devices()[0])
    matmul = _matmul_rate.__dict__.setdefault("compiled", jax.jit(lambda a: a @ a))
    matmul(x).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _memory(compiled) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    args, out = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
    alias, temp = analysis.alias_size_in_bytes, analysis.temp_size_in_bytes
    return {"arguments": args, "outputs": out, "aliased": alias, "temp": temp, "peak": args + out - alias + temp}


def _prefill_flops(config, length: int) -> float:
    """Useful FLOPs of a causal prefill of `length` tokens (no logits)."""
    e, f, h, kv, d = config.hidden_size, config.intermediate_size, config.num_heads, config.kv_heads, config.head_dim
    weights = e * (h + 2 * kv) * d + h * d * e + 3 * e * f
    return config.num_layers * (2 * weights * length + 4 * h * d * length * (length + 1) / 2)


def measure(args) -> dict:
    """Runs the measurements on `args.source` in this process (fake devices set up first)."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(args.devices, args.prefill_devices)}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(args.source).resolve()))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm.config import MeshConfig, ModelConfig, from_dict, read_yaml
    from lwm.infer.cache import InferenceModel, KVCache, _extend_step
    from lwm.mesh import make_mesh
    from lwm.model.params_io import create_model

    model_config = from_dict(ModelConfig, read_yaml(args.config)["model"], f"{args.config} (model)")
    model = create_model(model_config)
    config = model.config
    rng = np.random.default_rng(0)
    results: dict = {"source": str(args.source), "prefill": [], "decode": []}

    def engine_on(devices: int) -> InferenceModel:
        mesh = make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=devices), devices=jax.devices()[:devices])
        return InferenceModel(model, mesh, cache_dtype=args.cache_dtype or None, prefill_chunk_size=args.prefill_chunk,
                              key_chunk_size=args.key_chunk, progress=False)

    engine = engine_on(args.prefill_devices)
    for length in [int(x) for x in args.prefill_lengths.split(",") if x]:
        size = engine.round_cache_size(length + 1)
        prompt = rng.integers(3, config.vocab_size, length).tolist()
        # Compiles both signatures of the chunk step (the first chunk's arguments are fresh
        # arrays, later ones are the previous step's outputs).
        engine.prefill(engine.init_cache(1, size), [prompt[: 2 * args.prefill_chunk]])
        cache = engine.init_cache(1, size)
        before = _matmul_rate(jax, jnp)
        wall = time.perf_counter()
        cache, hidden = engine.prefill(cache, [prompt])
        jax.block_until_ready(hidden)
        wall = time.perf_counter() - wall
        after = _matmul_rate(jax, jnp)
        rate = _prefill_flops(config, length) / wall / 1e9
        record = {"context": length, "seconds": wall, "gflops": rate, "matmul_gflops": [before, after],
                  "fraction_of_matmul": rate / statistics.mean([before, after])}
        results["prefill"].append(record)
        print(f"prefill {length:>8d} tokens on {args.prefill_devices} device(s): {wall:7.2f} s, {rate:6.1f} GFLOP/s "
              f"= {record['fraction_of_matmul']:.3f} of the matmul ({before:.0f}/{after:.0f} GFLOP/s)", flush=True)
        del cache

    engine = engine_on(args.devices)
    for length in [int(x) for x in args.decode_lengths.split(",") if x]:
        size = engine.round_cache_size(length)
        shape = (config.num_layers, 1, size, config.kv_heads, config.head_dim)
        with jax.set_mesh(engine.mesh):
            fill = jax.jit(functools.partial(jax.random.normal, shape=shape, dtype=engine.cache_dtype),
                           out_shardings=engine.cache_sharding(1, size))
            cache = KVCache(fill(jax.random.key(1)), fill(jax.random.key(2)),
                            jnp.full((1,), size - args.decode_steps - 2, jnp.int32))
        token = jnp.asarray(rng.integers(3, config.vocab_size, (1, 1)), jnp.int32)
        flags, ones = jnp.zeros((1, 1), bool), jnp.ones((1,), jnp.int32)
        previous = jnp.zeros((1, config.hidden_size), jnp.dtype(config.dtype))
        with jax.set_mesh(engine.mesh):
            memory = _memory(_extend_step.lower(engine.graphdef, engine.mesh, engine.key_chunk_size, engine.state,
                                                cache, token, flags, ones, previous).compile())
        per_device = cache.nbytes_per_device()
        cache, _, hidden = engine.extend(cache, token, flags, ones, previous)  # compiles
        jax.block_until_ready(hidden)
        steps, units = [], []
        for _ in range(args.decode_steps):
            before = _matmul_rate(jax, jnp)
            wall = time.perf_counter()
            cache, _, hidden = engine.extend(cache, token, flags, ones, previous)
            jax.block_until_ready(hidden)
            wall = time.perf_counter() - wall
            rate = statistics.mean([before, _matmul_rate(jax, jnp)])
            steps.append(wall)
            units.append(wall * rate)
        record = {"context": length, "positions_per_device": size // engine.sequence_parallel,
                  "step_seconds": statistics.median(steps), "step_matmul_gflop": statistics.median(units),
                  "cache_bytes_per_device": per_device, "memory_per_device": memory}
        results["decode"].append(record)
        print(f"decode  {length:>8d} positions ({record['positions_per_device']} per device): "
              f"{record['step_seconds'] * 1000:8.1f} ms/step = {record['step_matmul_gflop']:.0f} matmul-GFLOP; "
              f"cache per device {per_device / 2**20:.1f} MiB, step program per device "
              f"{memory.get('peak', 0) / 2**20:.1f} MiB (temp {memory.get('temp', 0) / 2**20:.1f} MiB)", flush=True)
        del cache
    results["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results


def compare(args) -> dict:
    """Measures `--baseline` and `--source` alternately, each run in a fresh process."""
    runs: dict[str, list[dict]] = {"baseline": [], "new": []}
    forwarded = [f"--{name.replace('_', '-')}={value}" for name, value in vars(args).items()
                 if name not in ("baseline", "rounds", "json", "source")]
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            for name, tree in (("baseline", args.baseline), ("new", args.source)):
                out = Path(folder) / f"{name}{round_}.json"
                print(f"--- round {round_ + 1}: {name} ({tree})", flush=True)
                subprocess.run([sys.executable, __file__, *forwarded, "--source", tree, "--json", str(out)], check=True)
                runs[name].append(json.loads(out.read_text()))
    summary = {"runs": runs, "prefill": [], "decode": []}
    for kind, key, better in (("prefill", "fraction_of_matmul", "higher"), ("decode", "step_matmul_gflop", "lower")):
        for index, record in enumerate(runs["new"][0][kind]):
            old = statistics.median(run[kind][index][key] for run in runs["baseline"])
            new = statistics.median(run[kind][index][key] for run in runs["new"])
            summary[kind].append({"context": record["context"], key: {"baseline": old, "new": new},
                                  "new_over_baseline": new / old})
            print(f"{kind} {record['context']}: {key} baseline {old:.3f}, new {new:.3f}, new/baseline "
                  f"{new / old:.3f} ({better} is better); medians of {args.rounds}")
    return summary


def main(argv=None) -> int:
    args = _parse_args(argv)
    results = compare(args) if args.baseline else measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
