"""The `lwm` command: one subcommand per task, each wiring a config to a library function.

Every command group lives in its own module with a `register(subparsers)` function; heavy
imports (jax, torch) happen inside the commands so that `lwm --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Command-group modules, in the order `lwm --help` lists them.
COMMAND_MODULES = (
    "lwm.cli.train",
    "lwm.cli.data",
    "lwm.cli.tokenize",
    "lwm.cli.vq",
    "lwm.cli.infer",
    "lwm.cli.serve",
    "lwm.cli.eval",
    "lwm.cli.convert",
    "lwm.cli.worldmodels",
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the examples in descriptions as written and shows defaults."""


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available command group registered."""
    parser = argparse.ArgumentParser(
        prog="lwm",
        description="Long-context video+language world models in JAX.",
        epilog="Run `lwm COMMAND --help` for a command's options and examples.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # A command group still being written must not break the others.
            if error.name == module_name:
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lwm` console script."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    accepts_overrides = getattr(args, "accepts_overrides", False)
    if rest and not accepts_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from lwm.config import ConfigError

    try:
        result = args.func(args, rest) if accepts_overrides else args.func(args)
    except ConfigError as error:
        print(f"lwm {args.command}: config error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
