"""`carl --batch consent show | set FLAG=on|off …` — privacy consent, local, every flag off by default.

    consent show                  → {"flags": {"telemetry", "ledger_forward"}, "consent": [{"flag", "on", "sends",
                                     "to", "would_send"}], "platform", "token_env", "token_present", "path", "note"}
    consent set telemetry=on      → the same after the change (recorded in the ledger as consent.change)
"""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import emit
from engine.config import add_config_arguments


def register(sub: Any) -> None:
    p = sub.add_parser("consent", help="what carl may send to the managed platform (all off by default)",
                       description="Show or set privacy consent: telemetry and ledger forwarding, each off by default.")
    verbs = p.add_subparsers(dest="consent_verb", metavar="SUBCOMMAND", parser_class=type(p))
    s = verbs.add_parser("show", help="each flag, what it sends and to whom",
                         description="Each consent flag, whether it is on, what it sends and to which URL.")
    add_config_arguments(s)
    s.set_defaults(func=run_show)
    st = verbs.add_parser("set", help="set flags: telemetry=on|off ledger_forward=on|off",
                          description="Set consent flags (FLAG=on|off); the change is recorded in the ledger.")
    st.add_argument("assignments", nargs="+", metavar="FLAG=on|off")
    add_config_arguments(st)
    st.set_defaults(func=run_set)
    p.set_defaults(func=None)


def _settings(args: argparse.Namespace):
    from engine.config import load_config
    from engine.remote.config import remote_settings

    cfg, _ = load_config(args.config, args.sets)
    return remote_settings(cfg).managed


def run_show(args: argparse.Namespace) -> int:
    from engine.platform.consent import describe

    emit(describe(_settings(args)))
    return 0


def run_set(args: argparse.Namespace) -> int:
    from engine.platform.consent import describe, parse_assignments, set_flags

    changes = parse_assignments(args.assignments)
    ms = _settings(args)
    set_flags(changes)
    emit(describe(ms))
    return 0
