"""The ledger: signed, hash-chained provenance of every engine action (see docs/ledger.md).

The rest of the engine calls one function::

    from engine import ledger
    ledger.record("run.start", {"run_id": run_id, "config_hash": h})   # -> the appended block (dict)

``record`` initialises the signing key and the genesis block on first use, redacts secrets before hashing,
takes the cross-process lock, appends, fsyncs and returns the block. UI code that must not block uses
``record_nowait`` (a single background writer thread; returns a Future); a write that fails there is also kept
in ``write_failures()`` so the workbench can show it.

``evaluate(action, config)`` answers whether an action may go ahead under carl.yaml's ``policy:``
(allow / deny / needs_approval + the rule), counting today's spend from the ledger itself.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from engine.errors import CARLError
from engine.home import CarlHome
from engine.ledger.chain import (BLOCK_FIELDS, GENESIS_PREV, Ledger, VerifyResult, block_matches, format_ts,
                                 verify_dir, verify_segments)
from engine.ledger.policy import Decision, PolicyModel, load_policy, spend_today

__all__ = ["ACTIONS", "BLOCK_FIELDS", "GENESIS_PREV", "Decision", "Ledger", "PolicyModel", "VerifyResult",
           "block_matches", "evaluate", "format_ts", "init", "load_policy", "record", "record_many",
           "record_nowait", "spend_today", "verify", "verify_dir", "verify_segments", "write_failures"]

# The action vocabulary (any dotted lower-case name is accepted; these are the ones the engine records).
ACTIONS: dict[str, str] = {
    "ledger.genesis": "first block: names the first signing key (written by the ledger)",
    "key.rotate": "signed by the old key, names the new one (written by the ledger)",
    "ledger.recovered": "a torn tail was moved to ledger/quarantine/ by `ledger repair` (segment, offset, size, "
                        "sha256; written by the ledger)",
    "project.init": "carl.yaml written by `project init`",
    "project.change": "carl.yaml saved with changes",
    "run.start": "a training run started (run_id, config hash, backend)",
    "run.stop": "a run was asked to stop",
    "run.complete": "a run finished",
    "run.fail": "a run crashed or its worker went stale",
    "gate.open": "the cascade gate opened (stage A → B)",
    "collapse.onset": "the collapse early warning fired in a run (step, evidence, cascade.on_collapse action)",
    "checkpoint": "a checkpoint was saved",
    "eval": "an eval gate result (pass, metrics, threshold)",
    "push": "an adapter/model was pushed to the Hub",
    "pipeline.stage": "a stage of a `train --send-it` run ended (stage, status, key number, reason)",
    "approval": "a human approved a paid action (estimated_usd, job_id)",
    "job.submit": "a remote job was submitted (backend, flavor, estimated_usd, job_id)",
    "job.stop": "a remote job was stopped",
    "chat.tool_call": "the chat agent called a tool (name, input, ok)",
    "mcp.serve": "an MCP server started (transport, pre-approved actions)",
    "mcp.tool_call": "an MCP client called a tool (name, input, ok)",
    "mcp.approval": "a person answered an MCP approval form",
    "consent.change": "privacy consent changed (`consent set`: changed flags, all flags)",
    "alert.sent": "a health alert was delivered to a webhook (host only, never the URL; run, code, severity, step)",
}


def record(action: str, payload: dict[str, Any] | None = None, *, home: CarlHome | None = None,
           ts: float | str | None = None) -> dict[str, Any]:
    """Append one block and return it. Initialises key + genesis on first use; redacts secrets."""
    return Ledger(home).append(action, payload or {}, ts=ts)


def record_many(items: list[tuple[Any, ...]], *, home: CarlHome | None = None) -> list[dict[str, Any]]:
    """Append ``(action, payload[, ts])`` items under one lock and one fsync."""
    return Ledger(home).append_many(items)


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_failures: list[dict[str, Any]] = []  # background writes that failed in this process (newest last, bounded)
_MAX_FAILURES = 20


def _note_failure(action: str, home: CarlHome, fut: "Future[dict[str, Any]]") -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is None:
        return
    with _executor_lock:
        _failures.append({"action": action, "home": str(home.root), "error": str(exc),
                          "code": getattr(exc, "code", type(exc).__name__), "hint": getattr(exc, "hint", "")})
        del _failures[:-_MAX_FAILURES]


def write_failures(home: CarlHome | None = None) -> list[dict[str, Any]]:
    """The ``record_nowait`` writes that failed in this process (for ``home``, or all): what a UI shows so that
    a block that never reached the ledger does not vanish unseen. Each: action, home, error, code, hint."""
    with _executor_lock:
        out = list(_failures)
    return [f for f in out if home is None or f["home"] == str(home.root)]


def record_nowait(action: str, payload: dict[str, Any] | None = None, *, home: CarlHome | None = None,
                  ts: float | str | None = None) -> "Future[dict[str, Any]]":
    """Like :func:`record`, but on one background writer thread (order preserved); returns a Future whose
    ``result()`` is the block or raises the typed error. Never blocks the caller (the UI thread)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carl-ledger")
    home = home or CarlHome.from_env()
    fut = _executor.submit(record, action, payload, home=home, ts=ts)
    fut.add_done_callback(lambda f: _note_failure(action, home, f))
    return fut


def init(home: CarlHome | None = None, *, seed: bytes | str | None = None,
         ts: float | str | None = None) -> tuple[dict[str, Any], bool]:
    """Create the key and the genesis block if absent: (genesis block, created)."""
    return Ledger(home).init(seed=seed, ts=ts)


def verify(home: CarlHome | None = None, public_keys: list[str] | None = None) -> VerifyResult:
    return Ledger(home).verify(public_keys)


def evaluate(action: dict[str, Any], config: Any = None, *, home: CarlHome | None = None,
             spent_today: float | None = None, now: float | None = None) -> Decision:
    """Policy decision for ``action`` (see :mod:`engine.ledger.policy`). ``config``: an engine.config.Config,
    a ``policy:`` mapping, a PolicyModel, or None (defaults). Today's spend comes from this CARL_HOME's
    ledger unless ``spent_today`` is given. Appends nothing."""
    from engine.ledger import chain, policy

    if spent_today is None:
        from datetime import datetime, timezone

        led = Ledger(home)
        if now is None:
            now = chain.clock()
        day = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
        blocks = led.iter_blocks(since_ts=day)
        return policy.evaluate(action, config, blocks=blocks, now=now)
    return policy.evaluate(action, config, spent_today=spent_today, now=now)


def ledger_record(action: str, payload: dict[str, Any]) -> None:
    """Record an action in the ledger. Never lets bookkeeping kill a run: failures are reported on stderr."""
    try:
        record(action, payload)
    except CARLError as exc:
        sys.stderr.write(f"carl: ledger: {action} not recorded: {exc.message} ({exc.hint})\n")
