"""Headless batch mode: `carl --batch VERB …` (the contract is ../shared/CONTRACT.md).

Each verb lives in its own module in this package and exposes ``register(subparsers)``, which adds its parser
and sets ``func`` (``func(args) -> int``). Verb modules import heavy libraries only inside ``func``.
Discovery is by module name, so adding a verb never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
from typing import Any

from carl_tui import __version__
from carl_tui.batch._io import emit_error
from engine.errors import CARLError, Interrupted, ValidationError


class _Parser(argparse.ArgumentParser):
    """argparse that raises ``carl.validation`` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValidationError(f"{self.prog}: {message}", hint=f"See `{self.prog} --help`.",
                              context={"usage": self.format_usage().strip()})


def verb_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The batch parser; with ``only`` (a verb whose module is named like it) just that verb is imported, so a
    verb's start-up never pays for every other verb's imports."""
    parser = _Parser(prog="carl --batch", description="carl headless mode: JSON on stdout, errors as JSON on stderr.",
                     epilog="exit codes: 0 ok · 1 failed · 2 usage/config · 3 credential · 4 network · "
                            "5 refused (budget/approval) · 130 interrupted")
    parser.add_argument("--version", action="version", version=f"carl {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    for name in ([only] if only else verb_modules()):
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        first = argv[0] if argv else None
        parser = build_parser(first if first in verb_modules() else None)
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            if args.verb is None:
                parser.print_help()
                return 0 if not argv else 2
            raise ValidationError(f"carl --batch {args.verb}: missing subcommand",
                                  hint=f"See `carl --batch {args.verb} --help`.")
        return int(args.func(args) or 0)
    except CARLError as exc:
        emit_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        exc = Interrupted("interrupted")
        emit_error(exc)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): nothing more to say
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1
    except Exception as exc:  # a bug, not bad input: still one JSON line, no traceback unless asked
        if os.environ.get("CARL_DEBUG"):
            raise
        err = CARLError(f"internal error: {type(exc).__name__}: {exc}",
                        hint="This is a bug in carl; re-run with CARL_DEBUG=1 for the traceback and report it.")
        emit_error(err)
        return 1
