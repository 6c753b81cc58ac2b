"""Options every training/inference command shares, and the config they resolve to."""
from __future__ import annotations

import argparse

from pic_core.config import Config, load_config, parse_overrides


def add_common_options(parser: argparse.ArgumentParser, default_config: str | None = None) -> None:
    """--config, --set, --device, --threads, --seed, --quiet, --skip-bad: the same on every command."""
    parser.add_argument("--config", default=default_config,
                        help="YAML config: a file, or the name of a shipped one (demo, fast, paper, quality, tiny)"
                             + (f"; default {default_config}" if default_config else "; default: built-in defaults"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set prior.epochs=2 (repeatable)")
    parser.add_argument("--device", help="auto | cpu | cuda (overrides the config)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (overrides the config)")
    parser.add_argument("--seed", type=int, help="random seed (overrides the config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad rows/images of the dataset with a counted warning instead of stopping")


def config_from_args(args: argparse.Namespace, cls: type = Config):
    """The run config: file (or shipped name), then --set overrides, then the dedicated flags."""
    overrides = parse_overrides(getattr(args, "overrides", []) or [])
    for flag in ("device", "threads", "seed"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    if getattr(args, "quiet", False):
        overrides["progress"] = False
    return load_config(getattr(args, "config", None), cls, overrides)

