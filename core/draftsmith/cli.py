"""The ``draftsmith`` command line.

Every subcommand lives in ``draftsmith.commands.<name>`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. Those modules import nothing heavy at module level, so ``--help`` and ``list-drafts`` run
without torch; heavy imports happen inside ``run``. Errors a user can cause print one line on stderr and exit
non-zero; ``DRAFTSMITH_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# name -> module under draftsmith.commands (module names use underscores)
COMMANDS = (
    "list-drafts",
    "plugins",
    "resolve",
    "train",
    "prepare-features",
    "import-features",
    "inspect-data",
    "eval",
    "regenerate",
    "export",
    "check-export",
    "report",
)


def _command_module(name: str):
    module_name = f"draftsmith.commands.{name.replace('-', '_')}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # a command whose module is not part of this build
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="draftsmith",
        description="Build, train, evaluate and ship speculative-decoding draft models.",
    )
    parser.add_argument("--version", action="version", version=f"draftsmith {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = _command_module(name)
        if module is None:
            continue
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _fail(message: str, code: int = 1) -> int:
    print(f"draftsmith: error: {message}", file=sys.stderr)
    return code


def run_command(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    from .errors import DraftsmithError

    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # one clear line, never a traceback (unless debugging)
        if os.environ.get("DRAFTSMITH_DEBUG"):
            raise
        if isinstance(exc, DraftsmithError):
            return _fail(str(exc))
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename}")
        return _fail(f"{type(exc).__name__}: {exc} (set DRAFTSMITH_DEBUG=1 for a traceback)")


def main(argv: Sequence[str] | None = None) -> int:
    sys.exit(run_command(sys.argv[1:] if argv is None else argv))


def list_drafts_main(argv: Sequence[str] | None = None) -> int:
    """The standalone ``list-drafts`` console script."""
    sys.exit(run_command(["list-drafts", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":  # python -m draftsmith.cli
    main()
