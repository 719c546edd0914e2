"""Privacy consent, kept locally in ``CARL_HOME/platform/consent.json`` (0600, atomic). Every flag is off by
default, and a missing, unreadable or corrupt file (quarantined) means every flag off.

Flags:

- ``telemetry``       run events (run start/end, gate, checkpoints, evals) to the platform's telemetry endpoint;
- ``ledger_forward``  signed ledger blocks to the platform's ledger append endpoint.

Nothing is ever sent without the flag *and* the managed token. Changes are recorded in the ledger
(``consent.change``), so the provenance of what was shared is itself provable.
"""

from __future__ import annotations

import time
from typing import Any

from engine.errors import CARLError, ValidationError
from engine.home import CarlHome
from engine.platform.store import Corrupt, platform_dir, read_json, write_json

CONSENT_FILE = "consent.json"
FLAGS: dict[str, str] = {
    "telemetry": "run events (run start/end, gate open, checkpoints, eval results; secrets redacted), "
                 "forwarded on a background thread",
    "ledger_forward": "signed ledger blocks (the same JSON as `carl --batch ledger show`), after they are written "
                      "to the local chain",
}


class ConsentRequired(CARLError):
    code = "carl.telemetry.consent_required"
    exit_code = 5
    default_hint = "Nothing was sent. Turn it on with `carl --batch consent set ledger_forward=on` if you agree."


def path(home: CarlHome | None = None):
    return platform_dir(home) / CONSENT_FILE


def load(home: CarlHome | None = None) -> dict[str, bool]:
    """Every flag (False unless set on). A corrupt file is quarantined and counts as all off."""
    try:
        data = read_json(path(home)) or {}
    except Corrupt:
        data = {}
    flags = data.get("flags") if isinstance(data.get("flags"), dict) else {}
    return {name: flags.get(name) is True for name in FLAGS}


def enabled(name: str, home: CarlHome | None = None) -> bool:
    return load(home).get(name, False)


def parse_assignments(items: list[str]) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip().replace("-", "_"), value.strip().lower()
        if not sep or name not in FLAGS or value not in ("on", "off", "true", "false", "yes", "no"):
            raise ValidationError(f"consent set: {item!r} is not FLAG=on|off",
                                  hint=f"Flags: {', '.join(FLAGS)}; e.g. `carl --batch consent set telemetry=on`.",
                                  context={"flags": list(FLAGS)})
        out[name] = value in ("on", "true", "yes")
    return out


def set_flags(changes: dict[str, bool], home: CarlHome | None = None) -> dict[str, bool]:
    """Set flags, write the file, record a ``consent.change`` ledger block when anything changed."""
    home = home or CarlHome.from_env()
    before = load(home)
    after = {**before, **changes}
    write_json(path(home), {"format": "carl-consent/1", "flags": after, "updated_at": time.time()})
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    if changed:
        from engine import ledger

        ledger.record("consent.change", {"changed": changed, "flags": after}, home=home)
    return after


def describe(settings: Any | None, home: CarlHome | None = None) -> dict[str, Any]:
    """What each flag would send and to whom (the URLs of carl.yaml's platform), and whether it is on."""
    import os

    from engine.platform import join, platform_base

    flags = load(home)
    base = None
    if settings is not None and (getattr(settings, "url", None) or getattr(settings, "platform_url", None)):
        base = platform_base(settings)
    token_env = getattr(settings, "token_env", "CARL_MANAGED_TOKEN")
    urls = {"telemetry": join(base, settings.telemetry_path) if base else None,
            "ledger_forward": join(base, settings.ledger_path) if base else None}
    token = bool(os.environ.get(token_env))
    rows = []
    for name, what in FLAGS.items():
        rows.append({"flag": name, "on": flags[name], "sends": what, "to": urls[name],
                     "would_send": flags[name] and token and urls[name] is not None})
    return {"flags": flags, "consent": rows, "platform": base, "token_env": token_env, "token_present": token,
            "path": str(path(home)),
            "note": "every flag is off by default; nothing is sent unless its flag is on and the token is set"}
