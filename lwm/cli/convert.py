"""`lwm convert`: between Hugging Face LLaMA folders, LWM's JAX files and lwm model directories."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Convert model weights between a local Hugging Face LlamaForCausalLM folder (config.json plus
safetensors, as save_pretrained writes it), LWM's released JAX `params` files (tux/EasyLM
streaming msgpack; LWM-Chat-32K/128K/1M ship only in this form) and an lwm model directory.
Nothing is downloaded.

examples:
  lwm convert jax2lwm params::ckpt/LWM-Chat-1M-Jax/params runs/lwm-chat-1m \
      --model-config configs/lwm/lwm-chat-1m.yaml
  lwm convert jax2lwm ckpt/LWM-Text-1M-Jax/params runs/lwm-text-1m --model-config configs/lwm/lwm-text-1m.yaml
  lwm convert lwm2jax runs/my-vision-run/export out/params --dtype bfloat16
  lwm convert hf2lwm ~/models/Llama-2-7b-hf runs/llama2-7b-init
  lwm convert hf2lwm ~/models/TinyLlama runs/tinyllama --no-scan-layers
  lwm convert lwm2hf runs/my-run/export runs/my-run/hf
"""


def _hf2lwm(args: argparse.Namespace) -> int:
    from lwm.model.convert import hf_to_lwm

    out = hf_to_lwm(args.hf_dir, args.out_dir, scan_layers=args.scan_layers)
    print(f"wrote lwm model directory {out}")
    return 0


def _lwm2hf(args: argparse.Namespace) -> int:
    from lwm.model.convert import lwm_to_hf

    out = lwm_to_hf(args.model_dir, args.out_dir)
    print(f"wrote Hugging Face folder {out}")
    return 0


def _jax2lwm(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.model.formats.lwm_checkpoint import jax_to_lwm, load_lwm_model_config

    config = load_lwm_model_config(args.model_config, overrides)
    out = jax_to_lwm(args.params, args.out_dir, config)
    print(f"wrote lwm model directory {out}")
    return 0


def _lwm2jax(args: argparse.Namespace) -> int:
    from lwm.model.formats.lwm_checkpoint import lwm_to_jax

    out = lwm_to_jax(args.model_dir, args.out_file, dtype=args.dtype, scan_layers=args.scan_layers)
    print(f"wrote LWM streaming params file {out} (load it in LWM as params::{out})")
    return 0


def _dispatch(args: argparse.Namespace, rest: list[str]) -> int:
    # Only jax2lwm takes --model.FIELD VALUE overrides; the others must not get stray words.
    if args.direction == "jax2lwm":
        return _jax2lwm(args, rest)
    if rest:
        args.parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.handler(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm convert hf2lwm|lwm2hf|jax2lwm|lwm2jax`."""
    from lwm.cli import HelpFormatter

    parser = subparsers.add_parser(
        "convert", help="convert weights to and from Hugging Face and LWM's JAX files", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    directions = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    hf2lwm = directions.add_parser(
        "hf2lwm", help="Hugging Face folder -> lwm model directory", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    hf2lwm.add_argument("hf_dir", help="local folder with config.json and *.safetensors")
    hf2lwm.add_argument("out_dir", help="lwm model directory to write")
    hf2lwm.add_argument(
        "--scan-layers", action=argparse.BooleanOptionalAction, default=True,
        help="store layers stacked (for nnx.scan) or one by one",
    )
    hf2lwm.set_defaults(func=_dispatch, handler=_hf2lwm, parser=hf2lwm, accepts_overrides=True)
    lwm2hf = directions.add_parser(
        "lwm2hf", help="lwm model directory -> Hugging Face folder", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    lwm2hf.add_argument("model_dir", help="lwm model directory (model.yaml + params/)")
    lwm2hf.add_argument("out_dir", help="Hugging Face folder to write")
    lwm2hf.set_defaults(func=_dispatch, handler=_lwm2hf, parser=lwm2hf, accepts_overrides=True)
    jax2lwm = directions.add_parser(
        "jax2lwm", help="LWM's JAX params file -> lwm model directory", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    jax2lwm.add_argument("params", help="LWM load spec: params::FILE (default kind), trainstate::FILE, "
                                        "trainstate_params::FILE or flax_params::FILE")
    jax2lwm.add_argument("out_dir", help="lwm model directory to write")
    jax2lwm.add_argument("--model-config", required=True,
                         help="YAML with a model: section giving the shapes (presets: configs/lwm/); "
                              "--model.FIELD VALUE overrides follow")
    jax2lwm.set_defaults(func=_dispatch, parser=jax2lwm, accepts_overrides=True)
    lwm2jax = directions.add_parser(
        "lwm2jax", help="lwm model directory -> LWM's JAX params file", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    lwm2jax.add_argument("model_dir", help="lwm model directory (model.yaml + params/)")
    lwm2jax.add_argument("out_file", help="streaming msgpack file to write")
    lwm2jax.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                         help="dtype of the written arrays (LWM's trainer writes bfloat16)")
    lwm2jax.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=True,
                         help="write layers stacked (transformer/h/scan_decoder) or as transformer/h/{i}")
    lwm2jax.set_defaults(func=_dispatch, handler=_lwm2jax, parser=lwm2jax, accepts_overrides=True)
