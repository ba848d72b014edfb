"""`lwm serve`: the OpenAI-compatible server (see docs/serving.md)."""

from __future__ import annotations

import argparse

from lwm.cli.common import add_config_command

SERVE_DESCRIPTION = """\
Serve a model over OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models, /health)
with continuous batching: serve.slots requests decode together in one KV cache (its positions
split over the mesh's sp devices), waiting prompts are prefilled in chunks between decode steps,
and a prompt that starts like one a free slot holds (the same video, a follow-up question)
reuses its cached prefix. Binds 127.0.0.1 unless --host says otherwise; with serve.api_key (or
the variable named by serve.api_key_env) every request needs 'Authorization: Bearer KEY'.

examples:
  lwm serve --config configs/infer/serve-tiny.yaml --model runs/tiny/model
  lwm serve --config configs/infer/serve-tiny.yaml --model runs/vision/model --load.vq runs/vq-tiny \\
      --serve.media_root ~/videos --port 8080
"""


def _run(args: argparse.Namespace, overrides: list[str]) -> int:
    import json

    from lwm.config import load_config
    from lwm.config.serve import ServeRunConfig

    shorthands: list[str] = []
    for attribute, key in (("model", "load.model"), ("host", "serve.host"), ("media_root", "serve.media_root")):
        if getattr(args, attribute, None):
            # Overrides are read as YAML scalars: quoted, text stays text.
            shorthands += [f"--{key}", json.dumps(str(getattr(args, attribute)))]
    if args.port is not None:
        shorthands += ["--serve.port", str(args.port)]
    config = load_config(ServeRunConfig, args.config, shorthands + list(overrides))
    import jax

    # Fake CPU devices must be requested before JAX starts its backend.
    if config.cpu_devices and jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_num_cpu_devices", config.cpu_devices)
    from lwm.serve.server import serve

    serve(config)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm serve`."""
    parser = add_config_command(
        subparsers, "serve", help="OpenAI-compatible server with continuous batching",
        description=SERVE_DESCRIPTION, run=_run, default_config="configs/infer/serve-tiny.yaml",
    )
    parser.add_argument("--model", help="model directory (= --load.model)")
    parser.add_argument("--host", help="address to bind (= --serve.host; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (= --serve.port)")
    parser.add_argument("--media-root", dest="media_root", help="folder media paths must lie in (= --serve.media_root)")
