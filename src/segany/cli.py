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
import warnings
from typing import NoReturn

COMMAND_MODULES = ("predict", "auto", "train", "eval", "export", "serve", "engine", "data", "probe")


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (and exit status 2, as argparse's).

    Why: every bad input on segany's command line ends in one line naming the problem; the
    full usage block argparse prints first buries that line. ``--help`` still shows it all.
    Sub-command parsers inherit the class (``add_subparsers`` uses the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="segany", description="Segment Anything, fast and complete.")
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
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning_one_line
            return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError, MemoryError) as exc:
        # Bad input gets one clear line, not a traceback (use SEGANY_DEBUG=1 for one).
        # OSError covers unwritable or vanished files (FileNotFoundError, PermissionError,
        # IsADirectoryError, a full disk); MemoryError an input too large for this machine.
        import os

        if os.environ.get("SEGANY_DEBUG"):
            raise
        print(f"segany {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _show_warning_one_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                           file: object = None, line: str | None = None) -> None:
    """Warnings during a command as one ``segany: warning: ...`` line (not file:line + source)."""
    print(f"segany: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (some library errors span several)."""
    if isinstance(exc, MemoryError):
        return "out of memory (the input or the model is too large for this machine)" + (f": {exc}" if str(exc) else "")
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
