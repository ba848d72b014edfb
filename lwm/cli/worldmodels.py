"""World Models commands: `lwm wm collect|train-vae|encode|train-mdnrnn|train-controller|evaluate|pictures|run`.

Each subcommand takes `--config PATH` (a `WorldModelsConfig` YAML, see configs/worldmodels/)
plus dotted overrides, and calls one stage of `lwm.worldmodels.pipeline`.
"""

from __future__ import annotations

import argparse

WM_DESCRIPTION = """\
The World Models pipeline (Ha & Schmidhuber 2018): random rollouts, the VAE V, the MDN-RNN M
and the linear controller C evolved by CMA-ES, in the real environment or in M's dream.
Every stage reads and writes below run_dir.

examples:
  lwm wm run --config configs/worldmodels/smoke.yaml
  lwm wm collect --config configs/worldmodels/smoke.yaml --collect.episodes 4
  lwm wm train-controller --config configs/worldmodels/doom-smoke.yaml --dream
"""

STAGE_HELP = {
    "collect": ("collect random rollouts (one .npz per episode, resumable)",
                "lwm wm collect --config configs/worldmodels/smoke.yaml --collect.workers 2"),
    "train-vae": ("train V, the convolutional VAE, on the collected frames",
                  "lwm wm train-vae --config configs/worldmodels/smoke.yaml --vae.max_seconds 150"),
    "encode": ("encode every collected frame with V into run_dir/series/series.npz",
               "lwm wm encode --config configs/worldmodels/smoke.yaml"),
    "train-mdnrnn": ("train M, the MDN-RNN, on the encoded sequences",
                     "lwm wm train-mdnrnn --config configs/worldmodels/smoke.yaml --mdnrnn.steps 500"),
    "train-controller": ("evolve C with CMA-ES in the real environment, or in the dream with --dream",
                         "lwm wm train-controller --config configs/worldmodels/doom-smoke.yaml --dream"),
    "evaluate": ("score the best controller in the real environment next to a random policy",
                 "lwm wm evaluate --config configs/worldmodels/smoke.yaml --evaluate.episodes 16"),
    "pictures": ("write V's reconstructions (PNG), a dream (GIF) and the agent (GIF)",
                 "lwm wm pictures --config configs/worldmodels/smoke.yaml"),
    "run": ("run every stage in order and record their times in run_dir/timings.json",
            "lwm wm run --config configs/worldmodels/smoke.yaml --run_dir runs/wm-smoke\n"
            "  lwm wm run --config configs/worldmodels/doom-smoke.yaml --from train-mdnrnn --mdnrnn.max_seconds 300"),
}


def _load(args: argparse.Namespace, overrides: list[str]):
    from lwm.config import load_config
    from lwm.config.worldmodels import WorldModelsConfig

    overrides = list(overrides)
    if getattr(args, "dream", False):
        overrides += ["--controller.dream", "true"]
    return load_config(WorldModelsConfig, args.config, overrides)


def _run_stage(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.worldmodels import pipeline

    config = _load(args, overrides)
    if args.stage == "run":
        names = list(pipeline.STAGES)
        pipeline.run_all(config, progress=not args.quiet, stages=names[names.index(args.start):])
    else:
        print(pipeline.STAGES[args.stage](config, not args.quiet))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `wm` and its stage subcommands."""
    from lwm.cli import HelpFormatter

    wm = subparsers.add_parser("wm", help="World Models (Ha & Schmidhuber): rollouts, V, M, C, dream",
                               description=WM_DESCRIPTION, formatter_class=HelpFormatter)
    stages = wm.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, (summary, example) in STAGE_HELP.items():
        parser = stages.add_parser(
            name, help=summary, formatter_class=HelpFormatter,
            description=f"{summary[0].upper()}{summary[1:]}.\n\nAny config field can be overridden as "
                        f"--section.field VALUE.\n\nexample:\n  {example}")
        parser.add_argument("--config", default=None, help="WorldModelsConfig YAML file (configs/worldmodels/)")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        if name in ("train-controller", "run"):
            parser.add_argument("--dream", action="store_true",
                                help="train C inside M's dream (same as --controller.dream true)")
        if name == "run":
            parser.add_argument("--from", dest="start", default="collect", choices=[s for s in STAGE_HELP if s != "run"],
                                help="skip the stages before this one (their outputs must exist)")
        parser.set_defaults(func=_run_stage, accepts_overrides=True, stage=name)
