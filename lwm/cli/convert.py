"""`lwm convert`: between Hugging Face LLaMA folders and lwm model directories."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Convert model weights between a local Hugging Face LlamaForCausalLM folder (config.json plus
safetensors, as save_pretrained writes it) and an lwm model directory. Nothing is downloaded.

examples:
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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm convert hf2lwm|lwm2hf`."""
    from lwm.cli import HelpFormatter

    parser = subparsers.add_parser(
        "convert", help="convert weights to and from Hugging Face", description=DESCRIPTION,
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
    hf2lwm.set_defaults(func=_hf2lwm)
    lwm2hf = directions.add_parser(
        "lwm2hf", help="lwm model directory -> Hugging Face folder", description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    lwm2hf.add_argument("model_dir", help="lwm model directory (model.yaml + params/)")
    lwm2hf.add_argument("out_dir", help="Hugging Face folder to write")
    lwm2hf.set_defaults(func=_lwm2hf)
