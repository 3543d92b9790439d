"""The ``segany`` command line: ``segany predict | auto | train | eval | export | serve | engine``.

Each sub-command lives in its own module under ``segany.commands`` and exposes
``register(subparsers)``; this file only dispatches, so commands can be added without
touching the others. A module whose optional dependencies are missing is skipped with a
note in ``--help`` instead of breaking every other command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("predict", "auto", "train", "eval", "export", "serve", "engine", "data")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segany", description="Segment Anything, fast and complete.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    unavailable = []
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"segany.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("segany.commands"):
                continue  # command not built yet
            unavailable.append(f"{name} (needs {exc.name})")
            continue
        module.register(sub)
    if unavailable:
        parser.epilog = "unavailable commands: " + ", ".join(unavailable)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from segany import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input gets one clear line, not a traceback (use SEGANY_DEBUG=1 for one).
        import os

        if os.environ.get("SEGANY_DEBUG"):
            raise
        print(f"segany {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
