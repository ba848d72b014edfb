"""Helpers shared by the command modules: config-driven subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_config_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    description: str,
    run: Callable[[argparse.Namespace, list[str]], int | None],
    default_config: str | None = None,
) -> argparse.ArgumentParser:
    """Adds a subcommand that takes `--config PATH` plus dotted overrides (`--train.lr 3e-4`)."""
    from lwm.cli import HelpFormatter

    parser = subparsers.add_parser(
        name, help=help, description=description, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--config", default=default_config, help="YAML config file (see configs/)"
    )
    parser.set_defaults(func=run, accepts_overrides=True)
    return parser
