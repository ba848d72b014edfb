"""Training benchmark: tokens/s and MFU of the tiny and llama-200m presets on this machine, and
the longest sequence the tiny model trains on within 24 GiB, ring attention against dense.

    python scripts/bench_train.py                      # everything
    python scripts/bench_train.py --skip-longest       # throughput only

Results print as a markdown table (paste into docs/benchmarks.md with the command).
"""

import argparse
import dataclasses
import os

DEVICES = 8
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-gib", type=float, default=24.0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-longest", action="store_true")
    args = parser.parse_args()

    from lwm.config import TrainRunConfig, load_config
    from lwm.train.benchmark import longest_trainable_sequence, measure_throughput

    if not args.skip_throughput:
        runs = [
            ("tiny", "configs/tiny.yaml", ["--data.seq_len", "512", "--data.batch_size", "8"]),
            ("llama-200m", "configs/llama-200m.yaml",
             ["--data.seq_len", "256", "--data.batch_size", "8", "--model.dtype", "float32",
              "--model.remat", "none", "--model.query_chunk_size", "256", "--model.key_chunk_size", "256"]),
        ]
        print("| model | batch × seq | step (s, median) | tokens/s | achieved GFLOP/s | matmul GFLOP/s | fraction of matmul rate |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for name, path, overrides in runs:
            config = load_config(TrainRunConfig, path, overrides + ["--mesh.fsdp", "-1"])
            result = measure_throughput(name, config, args.repeats)
            print(f"| {name} | {result.batch_size} × {result.seq_len} | {result.step_seconds:.3f} | "
                  f"{result.tokens_per_second:,.0f} | {result.achieved_flops / 1e9:.1f} | "
                  f"{result.matmul_flops / 1e9:.1f} | {result.mfu:.2f} |", flush=True)

    if not args.skip_longest:
        budget = int(args.budget_gib * 2**30)
        base = load_config(TrainRunConfig, "configs/tiny.yaml", [
            "--data.batch_size", "1", "--model.remat", "full", "--mesh.dp", "1", "--mesh.fsdp", "1",
            "--mesh.sp", str(DEVICES), "--model.attention", "ring", "--model.ring_layout", "zigzag",
            "--model.query_chunk_size", "512", "--model.key_chunk_size", "512",
        ])
        dense = dataclasses.replace(base, model=dataclasses.replace(base.model, attention="dense"))
        print(f"\nlongest trainable sequence of tiny within {args.budget_gib:g} GiB ({DEVICES} devices, remat full):")
        for name, config in (("ring (sp=8, zigzag)", base), ("dense (sp=8)", dense)):
            print(f"{name}:")
            best, _ = longest_trainable_sequence(config, budget)
            print(f"{name}: longest {best:,} tokens", flush=True)


if __name__ == "__main__":
    main()
