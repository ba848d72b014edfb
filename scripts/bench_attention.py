"""Side-by-side attention benchmark: this repo's ring attention, PyPI ringattention 0.1.2, dense.

Every configuration (implementation, sequence length, device count, mode, head layout) runs in
its own subprocess with ``--xla_force_host_platform_device_count`` set, so peak memory (the
process's max RSS) and the compiled per-device temp size belong to that configuration alone.
Each timed call sits between two timings of a 2048x2048 float32 matmul; results are reported
as a fraction of that matmul rate, because the speed of a shared CPU drifts by 2x within
seconds. The process's CPU time per call (all threads) is reported too: on a machine shared
with other work it is the steadier measure of how much computation a call costs. Outputs (and
gradients) of the implementations are saved and compared.

The PyPI package shares the import name ``ringattention`` with this repo's library, so it is
installed into its own target directory and imported from there in its own process::

    .venv/bin/pip install --no-deps --target .bench/ringattention_pypi ringattention==0.1.2

Example (the comparison recorded in docs/benchmarks.md)::

    .venv/bin/python scripts/bench_attention.py --seq-lens 4096,8192,16384 --devices 4 \\
        --modes fwdbwd --repeats 3 --markdown /tmp/bench_attention.md

FLOPs are the useful causal FLOPs: forward ``4 * B * H * D * S * (S + 1) / 2`` (two matmuls over
the visible pairs), forward+backward 3.5x that (the backward recomputes the scores and does
four more matmuls). Dense attention is credited with the same useful FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PYPI_DIR = REPO / ".bench" / "ringattention_pypi"


# ----------------------------------------------------------------------------- worker


def _matmul_rate(jax, jnp, size: int = 2048) -> float:
    """Best-of-three GFLOP/s of a float32 ``size x size`` matmul, right now."""
    x = jnp.ones((size, size), jnp.float32)
    matmul = _matmul_rate.cache.get(size)
    if matmul is None:
        matmul = jax.jit(lambda a: a @ a)
        matmul(x).block_until_ready()
        _matmul_rate.cache[size] = matmul
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


_matmul_rate.cache = {}


def _import_pypi(pypi_dir: str):
    """Import ringattention 0.1.2 from its install dir, patching what JAX 0.10 removed."""
    import types

    import jax
    import jax.extend.backend

    sys.path.insert(0, pypi_dir)
    if not hasattr(jax.lib, "xla_bridge"):
        jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)
    import ringattention as pypi

    if not str(Path(pypi.__file__).resolve()).startswith(str(Path(pypi_dir).resolve())):
        raise RuntimeError(f"imported ringattention from {pypi.__file__}, not from {pypi_dir}")
    return pypi


def _build(args, jax, jnp):
    """Return ``(function of (q, k, v, dout), description)`` for the configured implementation."""
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((args.devices,), ("sp",), axis_types=(jax.sharding.AxisType.Auto,))
    spec = P(None, "sp")
    chunk = args.chunk

    if args.impl.startswith("ours"):
        from ringattention import ring_attention

        layout = _layout_of(args.impl)

        def local(q, k, v):
            return ring_attention(
                q, k, v, axis_name="sp", causal=True, query_chunk_size=chunk, key_chunk_size=chunk, layout=layout,
            )

        attention = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec)
    elif args.impl == "pypi":
        pypi = _import_pypi(args.pypi_dir)
        blockwise_kwargs = dict(
            causal_block_size=1, query_chunk_size=chunk, key_chunk_size=chunk, deterministic=True,
            dropout_rng=None, attn_pdrop=0.0, dtype=jnp.float32,
            policy=jax.checkpoint_policies.nothing_saveable, precision=None, prevent_cse=False,
        )

        def local(q, k, v):
            groups = q.shape[2] // k.shape[2]
            # The package has no grouped-query path: repeat K/V heads as LWM does.
            k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
            return pypi.ringattention_jax(q, k, v, None, None, None, "sp", True, blockwise_kwargs)

        # The package's initial carries are not marked as varying over the axis.
        attention = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    elif args.impl == "dense":
        from ringattention import dense_attention

        def attention(q, k, v):
            return dense_attention(q, k, v, causal=True)
    else:
        raise ValueError(f"unknown --impl {args.impl!r}")

    if args.mode == "fwd":
        return jax.jit(lambda q, k, v, dout: attention(q, k, v))

    def loss(q, k, v, dout):
        return jnp.sum(attention(q, k, v).astype(jnp.float32) * dout)

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def _layout_of(impl: str) -> str:
    """``ours`` runs the contiguous layout, ``ours-zigzag`` / ``ours-striped`` a balanced one."""
    return impl.split("-", 1)[1] if "-" in impl else "contiguous"


def worker(args) -> dict:
    """Run one configuration and return its measurements (printed as one JSON line)."""
    import resource

    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    shape_q = (1, args.seq, args.heads, args.dim)
    shape_kv = (1, args.seq, args.kv_heads, args.dim)
    q, k, v = (rng.standard_normal(s, dtype=np.float32) for s in (shape_q, shape_kv, shape_kv))
    dout = rng.standard_normal(shape_q, dtype=np.float32)
    layout = _layout_of(args.impl) if args.impl.startswith("ours") else "contiguous"
    if layout != "contiguous":
        from ringattention import from_layout, to_layout

        # Permuting tokens is data preparation (done once per batch in training), not timed.
        q, k, v, dout = (to_layout(x, layout, args.devices) for x in (q, k, v, dout))
    inputs = [jnp.asarray(x) for x in (q, k, v, dout)]
    fn = _build(args, jax, jnp)
    start = time.perf_counter()
    compiled = fn.lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    result = dict(
        impl=args.impl, seq=args.seq, devices=args.devices, mode=args.mode, heads=args.heads,
        kv_heads=args.kv_heads, dim=args.dim, chunk=args.chunk,
        compile_s=compile_s,
        temp_bytes=getattr(memory, "temp_size_in_bytes", None),
        argument_bytes=getattr(memory, "argument_size_in_bytes", None),
        output_bytes=getattr(memory, "output_size_in_bytes", None),
    )
    if args.compile_only:
        result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return result
    out = jax.block_until_ready(compiled(*inputs))  # warm-up
    times, fractions, rates, cpu_times = [], [], [], []
    for _ in range(args.repeats):
        before = _matmul_rate(jax, jnp)
        start, cpu_start = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*inputs))
        elapsed = time.perf_counter() - start
        cpu_times.append(time.process_time() - cpu_start)
        after = _matmul_rate(jax, jnp)
        rate = (before + after) / 2
        flops = _useful_flops(args)
        times.append(elapsed)
        rates.append(rate)
        fractions.append(flops / elapsed / 1e9 / rate)
    result.update(
        times_s=times, median_s=statistics.median(times), matmul_gflops=rates,
        cpu_s=cpu_times, median_cpu_s=statistics.median(cpu_times),
        fraction_of_matmul=statistics.median(fractions),
        gflops=_useful_flops(args) / statistics.median(times) / 1e9,
        max_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    )
    if args.save:
        arrays = [np.asarray(a) for a in (out if isinstance(out, tuple) else (out,))]
        if layout != "contiguous":
            arrays = [from_layout(a, layout, args.devices) for a in arrays]
        np.savez(args.save, *arrays)
    return result


def _useful_flops(args) -> float:
    forward = 4.0 * args.heads * args.dim * args.seq * (args.seq + 1) / 2
    return forward * (3.5 if args.mode == "fwdbwd" else 1.0)


# ----------------------------------------------------------------------------- driver


def _run_config(args, impl, seq, devices, mode, kv_heads, save_dir) -> dict:
    save = os.path.join(save_dir, f"{impl}_{seq}_{devices}_{mode}_{kv_heads}.npz")
    compile_only = impl == "dense" and seq > args.max_dense_seq
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--impl", impl, "--seq", str(seq),
        "--devices", str(devices), "--mode", mode, "--heads", str(args.heads), "--kv-heads", str(kv_heads),
        "--dim", str(args.dim), "--chunk", str(args.chunk),
        "--repeats", str(args.repeats), "--pypi-dir", args.pypi_dir, "--save", save,
    ] + (["--compile-only"] if compile_only else [])
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return dict(impl=impl, seq=seq, devices=devices, mode=mode, kv_heads=kv_heads, error=f"timeout {args.timeout}s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            result["saved"] = save if os.path.exists(save) else None
            return result
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    # Keep the first line that names the failure (an XLA check or a Python error), then the end.
    cause = [line for line in lines if "Check failed" in line or "Error" in line or "Killed" in line][:1]
    summary = " | ".join(cause + lines[-2:]).replace("|", "/")
    return dict(impl=impl, seq=seq, devices=devices, mode=mode, kv_heads=kv_heads, heads=args.heads,
                error=f"exit {proc.returncode}: {summary}")


def _max_difference(path_a: str, path_b: str) -> float:
    import numpy as np

    a, b = np.load(path_a), np.load(path_b)
    worst = 0.0
    for name in a.files:
        x, y = a[name], b[name]
        worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-30)))
    return worst


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _markdown(results: list, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "| impl | heads/kv | devices | seq | mode | median s | CPU s | GFLOP/s | frac of matmul | matmul GFLOP/s | "
        "temp MiB/device | max RSS MiB | max rel diff vs ours | ours/impl (matmul-normalised) | ours/impl (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r.get('heads', '')}/{r['kv_heads']} | {r['devices']} | {r['seq']} | {r['mode']} | "
                         f"error: {r['error']} | | | | | | | | | |")
            continue
        timed = "median_s" in r
        lines.append(
            "| {impl} | {heads}/{kv} | {devices} | {seq} | {mode} | {t} | {cpu} | {g} | {f} | {m} | {temp} | {rss} | {diff} | {ratio} | {cpu_ratio} |".format(
                impl=r["impl"], heads=r["heads"], kv=r["kv_heads"], devices=r["devices"], seq=r["seq"], mode=r["mode"],
                t=f"{r['median_s']:.2f}" if timed else "compile only",
                cpu=f"{r['median_cpu_s']:.1f}" if timed else "-",
                g=f"{r['gflops']:.1f}" if timed else "-",
                f=f"{r['fraction_of_matmul']:.3f}" if timed else "-",
                m=f"{statistics.median(r['matmul_gflops']):.0f}" if timed else "-",
                temp=_mib(r.get("temp_bytes")), rss=_mib(r.get("max_rss_bytes")),
                diff=r.get("max_rel_diff", "-") if isinstance(r.get("max_rel_diff"), str) else f"{r['max_rel_diff']:.1e}" if "max_rel_diff" in r else "-",
                ratio=f"{r['ours_over_impl']:.2f}" if "ours_over_impl" in r else "-",
                cpu_ratio=f"{r['ours_over_impl_cpu']:.2f}" if "ours_over_impl_cpu" in r else "-",
            )
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impls", default="ours,pypi,dense",
                        help="comma list of ours (contiguous layout), ours-zigzag, ours-striped, pypi, dense")
    parser.add_argument("--seq-lens", default="4096,8192,16384", help="comma list of global sequence lengths")
    parser.add_argument("--devices", default="4", help="comma list of fake CPU device counts")
    parser.add_argument("--modes", default="fwdbwd", help="comma list of fwd, fwdbwd")
    parser.add_argument("--kv-heads-list", default="8", help="comma list of KV head counts (8 = MHA, 2 = GQA)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-dense-seq", type=int, default=4096,
                        help="longer dense runs are compiled only (8K forward+backward needs about 14 GiB)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per configuration")
    parser.add_argument("--pypi-dir", default=str(DEFAULT_PYPI_DIR))
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--markdown", help="write the result table here")
    # Worker-only arguments.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--kv-heads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        args.devices = int(args.devices)
        print(json.dumps(worker(args)), flush=True)
        return

    command = "python scripts/bench_attention.py " + " ".join(argv if argv is not None else sys.argv[1:])
    impls = args.impls.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_attention_") as save_dir:
        for devices in (int(d) for d in args.devices.split(",")):
            for kv_heads in (int(h) for h in args.kv_heads_list.split(",")):
                for mode in args.modes.split(","):
                    for seq in (int(s) for s in args.seq_lens.split(",")):
                        group = {}
                        for impl in impls:
                            result = _run_config(args, impl, seq, devices, mode, kv_heads, save_dir)
                            group[impl] = result
                            print(json.dumps({k: v for k, v in result.items() if k != "saved"}), flush=True)
                        ours = group.get("ours")
                        for impl, result in group.items():
                            if ours and ours.get("saved") and result.get("saved") and impl != "ours":
                                # Relative to the largest magnitude, max over output / dq, dk, dv.
                                result["max_rel_diff"] = _max_difference(result["saved"], ours["saved"])
                            if ours and "median_s" in ours and "median_s" in result and impl != "ours":
                                # Compare fractions of the matmul rate, not raw seconds (drift).
                                result["ours_over_impl"] = result["fraction_of_matmul"] / ours["fraction_of_matmul"]
                                result["ours_over_impl_cpu"] = ours["median_cpu_s"] / result["median_cpu_s"]
                            results.append(result)
    for r in results:
        r.pop("saved", None)
    table = _markdown(results, command)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(table)


if __name__ == "__main__":
    main()
