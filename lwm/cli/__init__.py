"""The `lwm` command: one subcommand per task, each wiring a config to a library function.

Every command group lives in its own module with a `register(subparsers)` function; heavy
imports (jax, torch) happen inside the commands so that `lwm --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from lwm.errors import LwmError

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
        epilog="Run `lwm COMMAND --help` for a command's options and examples. Mistakes in "
               "inputs print one line and exit with code 2; add --debug (anywhere) or set "
               "LWM_DEBUG=1 for the traceback.",
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


# Operating-system errors about a path the user named: shown as one line like `LwmError`.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether tracebacks are wanted: `--debug` anywhere on the command line, or `LWM_DEBUG=1`."""
    return "--debug" in argv or os.environ.get("LWM_DEBUG", "").strip().lower() in ("1", "true", "yes")


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, (LwmError, *PATH_ERRORS))


def find_user_error(error: BaseException) -> BaseException | None:
    """The user-facing error behind `error`: itself, or one in its cause/context chain.

    Grain (and other libraries running our code on threads or processes) re-raise our errors
    wrapped in their own, with the real cause further down the chain.
    """
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _is_user_error(current):
            return current
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
        pending += list(getattr(current, "exceptions", ()))  # ExceptionGroup
    return None


def one_line_message(error: BaseException) -> str:
    """The error as one line: an OSError as `PATH: reason`, anything else its first line."""
    if isinstance(error, OSError) and error.filename is not None:
        target = f" -> {error.filename2}" if error.filename2 is not None else ""
        text = f"{error.filename}{target}: {error.strerror or type(error).__name__}"
    else:
        text = str(error).strip() or type(error).__name__
        if isinstance(error, KeyError) and text.startswith(("'", '"')):
            text = text[1:-1]
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lwm` console script.

    A user mistake (an `LwmError`, or an OS error about a named path) prints one line
    `lwm CMD: error: MESSAGE` and exits 2; Ctrl-C prints one line and exits 130. `--debug`
    (anywhere on the command line) or `LWM_DEBUG=1` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [argument for argument in argv if argument != "--debug"]
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    accepts_overrides = getattr(args, "accepts_overrides", False)
    if rest and not accepts_overrides:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result = args.func(args, rest) if accepts_overrides else args.func(args)
    except BrokenPipeError:
        # The reader of our output went away (`lwm inspect-store ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"\nlwm {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        user_error = find_user_error(error)
        if user_error is None or debug:
            raise
        print(f"lwm {args.command}: error: {one_line_message(user_error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
