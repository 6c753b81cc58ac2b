"""The `fedpic` command: one parser gathering the commands of every part of the project."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

import pic_core

from .commands import crop, data, demo, federation, report, roles, train

COMMAND_GROUPS = (train, crop, data, federation, roles, report, demo)
"""Each module's `register(subparsers)` adds its commands; parsing imports no torch, OpenCV or Flower."""

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, OSError)
"""DataError, ConfigError and CheckpointError are ValueErrors: shown as one line, not a traceback."""


class _VersionAction(argparse.Action):
    """--version, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.exit(message=f"fedpic {pic_core.__version__}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedpic", description="Federated personalized image cropping.")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Flower must not pip-install anything at run time (no internet on devices or in CI)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Flower's state-database set-up chatter
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("fedpic: interrupted", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as exc:
        if args.verbose:
            raise
        print(f"fedpic {args.command}: error: {exc}", file=sys.stderr)
        return 2
