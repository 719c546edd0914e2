"""`carl --batch entitlements show [--refresh]` — what the managed platform grants this account (docs/remote.md).

    entitlements show            → {"status": fresh|stale|offline_grace|offline_grace_expired|missing|corrupt,
                                    "admits", "platform", "fetched_at", "age_s", "key_id", "tier", "grants",
                                    "expires_at", "pinned_key_ids", "requests": [what a refresh sends, to whom], …}
                                   from the local cache only: nothing is sent
    entitlements show --refresh  → the same after fetching and verifying (adds "refresh": {"ok", "error"?});
                                   a bad signature / swapped key / expired token: carl.entitlements.* (exit 3)
"""

from __future__ import annotations

import argparse
from typing import Any

from carl_tui.batch._io import emit, progress
from engine.config import add_config_arguments


def register(sub: Any) -> None:
    p = sub.add_parser("entitlements", help="what the managed platform grants (signed, cached, offline grace)",
                       description="Show the managed platform's entitlements for this account.")
    verbs = p.add_subparsers(dest="entitlements_verb", metavar="SUBCOMMAND", parser_class=type(p))
    s = verbs.add_parser("show", help="status, age, key id, grants (and what a refresh would send)",
                         description="Status, age, key id and grants from the local cache (nothing is sent); "
                                     "--refresh fetches and verifies them first.")
    s.add_argument("--refresh", action="store_true", help="fetch and verify now (GET the JWKS and the entitlements)")
    add_config_arguments(s)
    s.set_defaults(func=run_show)
    p.set_defaults(func=None)


def run_show(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.platform.entitlements import for_config

    from engine.errors import ConfigError

    cfg, _ = load_config(args.config, args.sets)
    try:
        ent = for_config(cfg)
    except ConfigError as exc:
        if exc.context.get("field") != "remote.managed.url":
            raise
        emit({"status": "missing", "admits": False, "platform": None, "grants": [], "requests": [],
              "note": "remote.managed.url is not set: carl knows no platform and sends nothing"})
        return 0
    st = ent.refresh() if args.refresh else ent.cached()
    if st.refresh and not st.refresh.get("ok"):
        progress(f"refresh failed: {st.refresh['error'].get('message')} — showing the cached state ({st.status})")
    emit(ent.view(st))
    return 0
