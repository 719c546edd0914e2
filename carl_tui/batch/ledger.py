"""`carl --batch ledger …` — the signed, hash-chained record of every action (docs/ledger.md).

    ledger init                       → {"created", "path", "signer", "key_id", "genesis"}
    ledger status                     → {"initialised", "path", "blocks", "segments", "bytes", "head", "torn_tail",
                                         "signer", "key_id", "key_present", "public_keys"}
    ledger show [--last N] [--action A] [--run R]
                                      → {"blocks": [block, …], "count", "total"}
    ledger verify [--dir DIR] [--pubkey HEX|FILE …]
                                      → {"ok", "blocks", "first_bad", "reason", "kind", "segment", "head"}; exit 1
                                        when not ok; no public key for an existing chain: carl.credential (3)
    ledger evaluate --action JSON|-   → {"decision", "rule", "reason", "kind", "context"}; exit 0 whatever the
                                        decision (it is a question; nothing is appended)
    ledger export DIR                 → {"dir", "format", "blocks", "head", "segments", "public_keys"}
    ledger rotate-key                 → {"block", "signer", "previous"}
    ledger repair                     → {"repaired", "quarantine", "segment", "offset", "size", "sha256", "block"}:
                                        a torn last line (an append killed mid-write) moved byte for byte to
                                        ledger/quarantine/ and a signed ledger.recovered block appended;
                                        {"repaired": false, "reason"} when nothing is torn; anything else
                                        broken: carl.ledger.broken_chain (exit 1), nothing changed
    ledger forward [--replay]         → {"platform", "url", "blocks", "sent", "acked", "duplicates", "acked_index",
                                         "pending", …}: unacknowledged blocks to the managed platform (needs
                                         consent ledger_forward=on: else carl.telemetry.consent_required, exit 5)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from carl_tui.batch._io import emit, progress
from engine.config import add_config_arguments
from engine.errors import ValidationError


def register(sub: Any) -> None:
    p = sub.add_parser("ledger", help="the signed, hash-chained record of every action",
                       description="Signed, hash-chained provenance: init, status, show, verify, evaluate, export, "
                                   "rotate-key.")
    verbs = p.add_subparsers(dest="ledger_verb", metavar="SUBCOMMAND", parser_class=type(p))

    verbs.add_parser("init", help="create the signing key and the genesis block",
                     description="Create the Ed25519 signing key (CARL_HOME/keys) and the genesis block; "
                                 "does nothing when they exist.").set_defaults(func=run_init)
    verbs.add_parser("status", help="blocks, head, segments, signer",
                     description="Summary of the ledger: block count, head block, segments, current signer."
                     ).set_defaults(func=run_status)

    show = verbs.add_parser("show", help="print blocks", description="Print blocks, oldest first.")
    show.add_argument("--last", type=int, metavar="N", help="only the last N (after filtering)")
    show.add_argument("--action", metavar="A", help="only this action (run.start), or a family (run. / run)")
    show.add_argument("--run", metavar="R", help="only blocks whose payload run_id starts with R")
    show.set_defaults(func=run_show)

    verify = verbs.add_parser("verify", help="recompute every hash, link and signature; exit 1 when broken",
                              description="Verify the chain with public keys only. Exit 1 and name the first bad "
                                          "block when it is broken.")
    verify.add_argument("--dir", metavar="DIR", help="verify an exported ledger (segments + ledger.pub) instead")
    verify.add_argument("--pubkey", action="append", default=[], metavar="HEX|FILE",
                        help="trust this public key (hex, or a file of them) instead of the stored ones")
    verify.set_defaults(func=run_verify)

    verbs.add_parser("repair", help="move a torn last block aside (quarantined) and record that it was",
                     description="After an append was killed mid-write: move the torn last line, byte for byte, "
                                 "into ledger/quarantine/ and append a signed ledger.recovered block (its size and "
                                 "sha256). Refuses when anything else is broken.").set_defaults(func=run_repair)

    ev = verbs.add_parser("evaluate", help="policy decision for an action (allow/deny/needs_approval)",
                          description="Decide an action under carl.yaml's policy without appending anything. "
                                      "Exit 0 with the decision whatever it is.")
    ev.add_argument("--action", required=True, metavar="JSON",
                    help='the action, e.g. \'{"kind": "remote.submit", "backend": "hf", "estimated_usd": 3.2}\' '
                         "(- reads stdin)")
    add_config_arguments(ev)
    ev.set_defaults(func=run_evaluate)

    ex = verbs.add_parser("export", help="copy segments + public keys for a third-party audit",
                          description="Write the segments, ledger.pub and MANIFEST.json to DIR; audit with "
                                      "`carl --batch ledger verify --dir DIR`.")
    ex.add_argument("dir", metavar="DIR")
    ex.set_defaults(func=run_export)

    verbs.add_parser("rotate-key", help="new signing key, announced by a block signed with the old one",
                     description="Create a new signing key; a key.rotate block signed by the old key names it."
                     ).set_defaults(func=run_rotate)

    fw = verbs.add_parser("forward", help="send unacknowledged blocks to the managed platform (with consent)",
                          description="Send the blocks the managed platform has not acknowledged, in order; "
                                      "--replay starts from the genesis block (the platform skips what it holds).")
    fw.add_argument("--replay", action="store_true", help="resend from the genesis block")
    add_config_arguments(fw)
    fw.set_defaults(func=run_forward)


def run_init(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    led = Ledger()
    genesis, created = led.init()
    st = led.status()
    progress("ledger initialised" if created else "ledger already initialised")
    emit({"created": created, "path": st["path"], "signer": st["signer"], "key_id": st["key_id"],
          "genesis": genesis})
    return 0


def run_status(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    emit(Ledger().status())
    return 0


def run_show(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    if args.last is not None and args.last < 1:
        raise ValidationError("--last must be ≥ 1", context={"last": args.last})
    led = Ledger()
    matched = led.blocks(action=args.action, run=args.run)
    shown = matched[-args.last:] if args.last else matched
    emit({"blocks": shown, "count": len(shown), "total": len(matched)})
    return 0


def _pubkeys(items: list[str]) -> list[str]:
    from engine.ledger.keys import read_public_keys_text

    out: list[str] = []
    for item in items:
        p = Path(item).expanduser()
        text = p.read_text(encoding="ascii") if p.is_file() else item
        found = read_public_keys_text(text)
        if not found:
            raise ValidationError(f"--pubkey {item[:20]}…: not a 64-hex public key or a file of them",
                                  context={"pubkey": item})
        out += found
    return out


def run_repair(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    out = Ledger().repair()
    if out.get("repaired"):
        progress(f"carl: moved {out['size']} torn bytes to {out['quarantine']} (sha256 {out['sha256'][:16]}…); "
                 f"recorded block {out['block']['index']}")
    emit(out)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger, verify_dir

    keys = _pubkeys(args.pubkey) if args.pubkey else None
    if args.dir:
        d = Path(args.dir).expanduser()
        if not d.is_dir():
            raise ValidationError(f"--dir {d} is not a directory")
        res = verify_dir(d, keys)
    else:
        res = Ledger().verify(keys)
    emit(res.to_dict())
    if not res.ok:
        progress(f"ledger broken at block {res.first_bad}: {res.reason}")
    return 0 if res.ok else 1


def run_evaluate(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.ledger import evaluate

    raw = sys.stdin.read() if args.action == "-" else args.action
    try:
        action = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--action is not valid JSON: {exc.msg} at column {exc.colno}",
                              hint='Example: --action \'{"kind": "push", "eval_passed": true}\'') from None
    cfg, _ = load_config(args.config, args.sets)
    emit(evaluate(action, cfg).to_dict())
    return 0


def run_export(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    out = Ledger().export(Path(args.dir).expanduser())
    progress(f"exported {out['blocks']} blocks to {out['dir']}")
    emit(out)
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from engine.ledger import Ledger

    block = Ledger().rotate_key()
    emit({"block": block, "signer": block["payload"]["public_key"], "previous": block["signer"]})
    return 0


def run_forward(args: argparse.Namespace) -> int:
    from engine.config import load_config
    from engine.platform.forward import forward
    from engine.remote.base import RetryPolicy
    from engine.remote.config import remote_settings

    cfg, _ = load_config(args.config, args.sets)
    rs = remote_settings(cfg)
    out = forward(rs.managed, replay=args.replay, policy=RetryPolicy.from_settings(rs.retries))
    progress(f"forwarded to {out['url']}: {out['acked']} acknowledged, {out['duplicates']} already held, "
             f"{out['pending']} pending")
    emit(out)
    return 0
