"""The ``nninv`` command line: one sub-command per module in this package.

Each sub-command module defines ``add_parser(subparsers)``, which registers its
parser and sets ``func`` to a function taking the parsed arguments and returning
an exit code. Errors that users can fix (:class:`~nninv.NNInvError`, missing
files) print one line and exit with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import NNInvError

#: Sub-command modules, in the order ``nninv --help`` lists them.
COMMANDS = [
    "demo",
    "invert",
    "diagnose",
    "preimage",
    "closest",
    "verify",
    "region",
    "posterior",
    "train_decoder",
    "train_flow",
    "explore",
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="nninv",
        description="Invert trained neural networks: find the inputs that give an output.",
    )
    parser.add_argument("--version", action="version", version=f"nninv {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (NNInvError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.debug:
            raise
        msg = str(e) if isinstance(e, NNInvError) else f"{type(e).__name__}: {e}"
        print(f"nninv {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
