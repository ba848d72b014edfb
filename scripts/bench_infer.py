"""Inference benchmark: prefill and decode speed and memory per device against context length.

Runs the tiny model (the `model` section of configs/tiny.yaml, float32) with the KV cache split
over `sp` fake CPU devices (8 by default), through the same `lwm.infer.cache.InferenceModel`
that `lwm chat` / `lwm needle` use:

- prefill: random prompts of each length run chunk by chunk into the cache (real compute);
- decode: one token against a cache of N filled positions. For large N the cache is filled
  SYNTHETICALLY with random keys/values (no prefill of N tokens is run), which is what the
  decode step's cost and memory depend on; up to 1,048,576 positions (131,072 per device at
  sp=8) to show that memory per device and step time stay bounded as the context grows.

Memory per device comes from XLA's compiled memory analysis of the per-device program
(arguments + outputs − donated aliases + temporaries), next to the bytes of cache one device
holds. On fake CPU devices every "device" shares the same cores, so times are the whole
machine's time for all eight shards: compare them across lengths, not with accelerators.
Wall time per call is reported with the process CPU time (all threads), which is steadier
on a shared machine.

Example (the run recorded in docs/benchmarks.md)::

    .venv/bin/python scripts/bench_infer.py --devices 8 --prefill-lengths 1024,4096,16384 \\
        --decode-lengths 4096,32768,262144,1048576 --markdown /tmp/bench_infer.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (all on the sp axis)")
    parser.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"), help="YAML whose model section is used")
    parser.add_argument("--prefill-lengths", default="1024,4096,16384")
    parser.add_argument("--decode-lengths", default="4096,32768,262144,1048576")
    parser.add_argument("--prefill-chunk", type=int, default=512)
    parser.add_argument("--key-chunk", type=int, default=1024)
    parser.add_argument("--decode-steps", type=int, default=5, help="timed decode steps per length")
    parser.add_argument("--prefill-repeats", type=int, default=2, help="timed prefills per length (best kept)")
    parser.add_argument("--cache-dtype", default="", help="cache dtype (default: the model's)")
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--markdown", default="", help="write the tables here")
    return parser.parse_args(argv)


def _memory(compiled) -> dict[str, int]:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {}
    args, out = analysis.argument_size_in_bytes, analysis.output_size_in_bytes
    alias, temp = analysis.alias_size_in_bytes, analysis.temp_size_in_bytes
    return {"arguments": args, "outputs": out, "aliased": alias, "temp": temp, "peak": args + out - alias + temp}


def _timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    import jax

    jax.block_until_ready(result)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    args = _parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lwm.config import MeshConfig, ModelConfig, from_dict, read_yaml
    from lwm.infer.cache import KVCache, _extend_step
    from lwm.infer.cache import InferenceModel
    from lwm.mesh import make_mesh
    from lwm.model.params_io import count_parameters, create_model

    model_config = from_dict(ModelConfig, read_yaml(args.config)["model"], f"{args.config} (model)")
    model = create_model(model_config)
    mesh = make_mesh(MeshConfig(dp=1, fsdp=1, tp=1, sp=args.devices))
    engine = InferenceModel(model, mesh, cache_dtype=args.cache_dtype or None, prefill_chunk_size=args.prefill_chunk,
                            key_chunk_size=args.key_chunk, progress=False)
    config = engine.config
    rng = np.random.default_rng(0)
    print(f"model: {args.config} model section, {count_parameters(model):,} parameters, {config.num_layers} layers, "
          f"{config.kv_heads} KV heads x {config.head_dim}, {engine.cache_dtype}; mesh sp={engine.sequence_parallel} "
          f"on {jax.device_count()} fake CPU devices ({os.cpu_count()} cores)")
    results: dict[str, list[dict]] = {"prefill": [], "decode": []}

    # --------------------------------------------------------------------------------- prefill
    for length in [int(x) for x in args.prefill_lengths.split(",") if x]:
        size = engine.round_cache_size(length + 1)
        prompt = rng.integers(3, config.vocab_size, length).tolist()
        engine.prefill(engine.init_cache(1, size), [prompt[: args.prefill_chunk]])  # compile
        timings = []
        for _ in range(args.prefill_repeats):
            cache = engine.init_cache(1, size)
            (cache, _), wall, cpu = _timed(engine.prefill, cache, [prompt])
            timings.append((wall, cpu))
            per_device = cache.nbytes_per_device()
            del cache
        wall, cpu = min(timings)
        results["prefill"].append({"context": length, "cache_size": size, "seconds": wall, "cpu_seconds": cpu,
                                   "tokens_per_second": length / wall, "cache_bytes_per_device": per_device})
        print(f"prefill {length:>8d} tokens: {wall:7.2f} s ({length / wall:8.0f} tok/s, cpu {cpu:6.1f} s), "
              f"cache per device {per_device / 2**20:7.1f} MiB")

    # ---------------------------------------------------------------------------------- decode
    print("decode: the cache is filled SYNTHETICALLY with random keys/values (no prefill is run)")
    for length in [int(x) for x in args.decode_lengths.split(",") if x]:
        size = engine.round_cache_size(length)
        shape = (config.num_layers, 1, size, config.kv_heads, config.head_dim)
        sharding = engine.cache_sharding(1, size)
        with jax.set_mesh(mesh):
            random_fill = jax.jit(lambda key: jax.random.normal(key, shape, engine.cache_dtype), out_shardings=sharding)
            cache = KVCache(random_fill(jax.random.key(1)), random_fill(jax.random.key(2)),
                            jnp.full((1,), size - args.decode_steps - 2, jnp.int32))
        per_device = cache.nbytes_per_device()
        token = jnp.asarray(rng.integers(3, config.vocab_size, (1, 1)), jnp.int32)
        flags = jnp.zeros((1, 1), bool)
        ones = jnp.ones((1,), jnp.int32)
        previous = jnp.zeros((1, config.hidden_size), jnp.dtype(config.dtype))
        with jax.set_mesh(mesh):
            compiled = _extend_step.lower(engine.graphdef, mesh, engine.key_chunk_size, engine.state, cache, token,
                                          flags, ones, previous).compile()
        memory = _memory(compiled)
        walls, cpus = [], []
        for step in range(args.decode_steps + 1):
            (cache, _, _), wall, cpu = _timed(engine.extend, cache, token, flags, ones, previous)
            if step:  # the first call also compiles
                walls.append(wall)
                cpus.append(cpu)
        wall, cpu = float(np.median(walls)), float(np.median(cpus))
        record = {"context": length, "cache_size": size, "positions_per_device": size // engine.sequence_parallel,
                  "step_seconds": wall, "step_cpu_seconds": cpu, "tokens_per_second": 1 / wall,
                  "cache_bytes_per_device": per_device, "memory_per_device": memory}
        results["decode"].append(record)
        print(f"decode  {length:>8d} positions ({size // engine.sequence_parallel:>7d} per device): "
              f"{wall * 1000:8.1f} ms/token (cpu {cpu * 1000:8.1f} ms), cache per device {per_device / 2**20:7.1f} MiB, "
              f"step program per device {memory.get('peak', 0) / 2**20:7.1f} MiB "
              f"(temp {memory.get('temp', 0) / 2**20:6.1f} MiB)")
        del cache
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results["max_rss_bytes"] = rss
    print(f"process max RSS (all {args.devices} devices together): {rss / 2**30:.2f} GiB")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        lines = ["| prefill tokens | time (s) | tokens/s | CPU time (s) | cache per device (MiB) |",
                 "|---:|---:|---:|---:|---:|"]
        for r in results["prefill"]:
            lines.append(f"| {r['context']:,} | {r['seconds']:.2f} | {r['tokens_per_second']:,.0f} | "
                         f"{r['cpu_seconds']:.1f} | {r['cache_bytes_per_device'] / 2**20:.1f} |")
        lines += ["", "| cache positions (synthetic) | per device | ms/token | tokens/s | CPU ms/token | "
                      "cache per device (MiB) | step program per device (MiB) | temp (MiB) |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["decode"]:
            memory = r["memory_per_device"]
            lines.append(f"| {r['context']:,} | {r['positions_per_device']:,} | {r['step_seconds'] * 1000:.1f} | "
                         f"{r['tokens_per_second']:.2f} | {r['step_cpu_seconds'] * 1000:.1f} | "
                         f"{r['cache_bytes_per_device'] / 2**20:.1f} | {memory.get('peak', 0) / 2**20:.1f} | "
                         f"{memory.get('temp', 0) / 2**20:.1f} |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
