"""`carl --batch entitlements show [--refresh]` — what the managed platform grants this account (docs/remote.md).

    entitlements show            → {"status": fresh|stale|offline_grace|offline_grace_expired|missing|corrupt,
                                    "admits", "platform", "fetched_at", "age_s", "key_id", "tier", "grants",
                                    "expires_at", "pinned_key_ids", "requests": [what a refresh sends, to whom], …}
                                   from the local cache only: nothing is sent
    entitlements show --refresh  → the same after fetching and verifying (adds "refresh": {"ok", "error"?});
                                   a bad signature / swapped key / expired token: carl.entitlements.* (exit 3)
    entitlements repin           → {"platform", "before": [{"kid", "fingerprint"}], "after": [...], "changed",
                                    "status"}: trusts the platform's current JWKS on purpose (the only way to
                                    accept a new key without a rotation signed by a pinned key), then refreshes
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
    r = verbs.add_parser("repin", help="trust the platform's current signing keys (shows both fingerprints)",
                         description="Replace the pinned platform keys with the ones its JWKS offers now, print the "
                                     "old and new fingerprints, then refresh. Compare the fingerprints with what "
                                     "the platform publishes elsewhere before relying on them.")
    add_config_arguments(r)
    r.set_defaults(func=run_repin)
    p.set_defaults(func=None)


def run_repin(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.platform.entitlements import for_config

    cfg, _ = load_config(args.config, args.sets)
    out = for_config(cfg).repin()
    for side in ("before", "after"):
        keys = ", ".join(f"{k['kid']} {k['fingerprint']}" for k in out[side]) or "none"
        progress(f"{'pinned' if side == 'before' else 'now pinned'}: {keys}")
    emit(out)
    return 0


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
