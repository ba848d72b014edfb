"""`lwm train` and `lwm demo`: config-driven training runs."""

from __future__ import annotations

import argparse

from lwm.cli.common import add_config_command

TRAIN_DESCRIPTION = """\
Train a text or vision-language model from a YAML config, sharded over the mesh the config
names, with checkpoints that a rerun resumes from. Overrides use dotted names.

examples:
  lwm train --config configs/tiny.yaml --data.store_path data/my-store
  lwm train --config configs/tiny.yaml --train.lr 3e-4 --mesh.fsdp 4 --mesh.sp 2
  lwm train --config configs/long/lwm-text-stages.yaml --checkpoint.directory gs://bucket/run
"""

DEMO_DESCRIPTION = """\
Run the main job on its embedded default: everything is generated locally, trained on this
machine's CPU, and reported in the output folder.

examples:
  lwm demo --config configs/demo.yaml
  lwm demo --config configs/demo.yaml --train.steps 50
"""


def _run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import ConfigError, TrainRunConfig, load_config
    from lwm.train.loop import train

    if args.config is None:
        raise ConfigError("lwm train needs --config PATH (see configs/)")
    config = load_config(TrainRunConfig, args.config, overrides)
    from lwm.train import distributed

    try:
        results = train(config)
    finally:
        distributed.shutdown()
    if not results:
        print(f"train: nothing to train: every stage in {config.logging.output_dir} is finished "
              f"(raise train.steps to continue)")
    for result in results:
        state = result.stop_note if result.preempted else f"model in {result.model_dir}"
        print(f"{result.name or 'train'}: step {result.steps}, loss {result.final_metrics.get('loss', float('nan')):.4f}, {state}")
    return 0


def _run_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.demo import DemoConfig, run_demo

    config = load_config(DemoConfig, args.config, overrides)
    import jax

    # The demo shards over fake CPU devices; this must happen before JAX starts its backend.
    if config.cpu_devices and jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)
    run_demo(config)
    return 0


PLAN_DESCRIPTION = """\
Print what a training config needs per device (parameters, optimizer state, activations with
the chosen remat policy, attention working set, logits, gathered weights) and the KV cache
for a context length, from jax.eval_shape and documented formulas (lwm/train/plan.py);
nothing is allocated. Says whether training fits a given device memory.

With --inference the config is a model preset (a `model:` section, as configs/lwm/*.yaml) and
the plan is for serving it: weights, a KV cache of --context tokens split over sp, one prefill
chunk's working set.

examples:
  lwm plan --config configs/llama2-7b.yaml --devices 8 --device-memory-gib 80
  lwm plan --config configs/long/lwm-text-1m.yaml --devices 256 --context 1048576
  lwm plan --config configs/lwm/lwm-chat-1m.yaml --inference --devices 32 --context 1048576
"""


def _run_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import ConfigError, TrainRunConfig, load_config
    from lwm.model.formats.lwm_checkpoint import LwmModelFile
    from lwm.train.plan import plan_inference, plan_memory

    if args.config is None:
        raise ConfigError("lwm plan needs --config PATH (see configs/)")
    devices = args.devices
    if devices is None:
        import jax

        devices = jax.device_count()
    if args.inference:
        model = load_config(LwmModelFile, args.config, overrides).model
        plan = plan_inference(model, devices, args.context or model.max_seq_len)
        print(plan.report(args.device_memory_gib))
        return 0
    config = load_config(TrainRunConfig, args.config, overrides)
    plan = plan_memory(config, devices, args.context or config.data.seq_len)
    print(plan.report(args.device_memory_gib))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm train`, `lwm demo` and `lwm plan`."""
    add_config_command(
        subparsers, "train", help="train a model from a config", description=TRAIN_DESCRIPTION,
        run=_run_train,
    )
    plan = add_config_command(
        subparsers, "plan", help="per-device memory plan of a training config",
        description=PLAN_DESCRIPTION, run=_run_plan,
    )
    plan.add_argument("--devices", type=int, default=None, help="device count (default: this machine's)")
    plan.add_argument("--device-memory-gib", type=float, default=0.0, help="memory per device to check against")
    plan.add_argument("--context", type=int, default=0,
                      help="KV-cache context length (default: data.seq_len, or model.max_seq_len with --inference)")
    plan.add_argument("--inference", action="store_true",
                      help="plan serving a model preset (configs/lwm/*.yaml) instead of training a run config")
    add_config_command(
        subparsers, "demo", help="run the end-to-end demo on this machine",
        description=DEMO_DESCRIPTION, run=_run_demo, default_config="configs/demo.yaml",
    )
