"""Ledger screen: the signed hash chain as a table, a filter, block detail, and a verify action.

Keys: ``/`` filter (action or run; ``action:X`` / ``run:Y`` to be explicit), ``escape`` back to the table,
``v`` verify (the verdict names the first bad block, which is highlighted and selected), ``r`` reload,
``i`` initialise an empty ledger. Reading and verifying run on a worker thread; the UI never blocks.
Times are the blocks' own UTC timestamps, shown as ``YYYY-MM-DD HH:MM:SS``.
"""

from __future__ import annotations

import json
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from engine.errors import CARLError, PermissionDenied
from engine.ledger import Ledger, VerifyResult, write_failures
from engine.ledger.keys import key_id
from screens.context import context_of

COLUMNS = ("#", "time (UTC)", "action", "hash", "signer")


def show_time(ts: Any) -> str:
    """``2025-06-15T15:06:40.000Z`` → ``2025-06-15 15:06:40`` (fixed format, no local time zone)."""
    s = str(ts or "")
    return s[:19].replace("T", " ") if len(s) >= 19 else s


def parse_filter(text: str) -> tuple[str | None, str | None, str | None]:
    """``(action, run, either)`` from the filter text: ``action:run.`` / ``run:abc`` explicit, else a term that
    matches an action prefix or a run-id prefix."""
    action = run = either = None
    for term in text.split():
        if term.startswith("action:"):
            action = term[7:] or None
        elif term.startswith("run:"):
            run = term[4:] or None
        else:
            either = term
    return action, run, either


def _run_of(block: dict[str, Any]) -> str:
    p = block.get("payload") if isinstance(block.get("payload"), dict) else {}
    return str(p.get("run_id") or p.get("run") or "")


def matches(block: dict[str, Any], text: str) -> bool:
    action, run, either = parse_filter(text)
    a = str(block.get("action", ""))
    r = _run_of(block)
    if action and not a.startswith(action):
        return False
    if run and not r.startswith(run):
        return False
    if either and not (a.startswith(either) or (r and r.startswith(either))):
        return False
    return True


def render_detail(block: dict[str, Any] | None, bad: VerifyResult | None = None) -> str:
    if block is None:
        return "[dim]No block selected.[/dim]"
    lines = [f"[b]Block {block.get('index')}[/b]  {escape(str(block.get('action')))}  {show_time(block.get('ts'))}"]
    if bad is not None and not bad.ok and bad.first_bad == block.get("index"):
        lines.append(f"[b red]✗ first bad block: {escape(bad.reason or '')}[/b red]")
    lines.append(escape(json.dumps(block.get("payload"), indent=2, sort_keys=True, ensure_ascii=False)))
    for label, k in (("hash", "hash"), ("prev", "prev_hash"), ("payload#", "payload_hash"), ("signer", "signer")):
        lines.append(f"[dim]{label:<8}[/dim] {escape(str(block.get(k, '')))}")
    sig = str(block.get("signature", ""))
    lines.append(f"[dim]{'sig':<8}[/dim] {escape(sig[:48])}{'…' if len(sig) > 48 else ''}")
    return "\n".join(lines)


class LedgerScreen(Screen):
    TITLE = "carl · ledger"  # the header names the screen
    DEFAULT_CSS = """
    LedgerScreen #ledger-verdict { height: auto; padding: 0 1; color: $text-muted; }
    LedgerScreen #ledger-verdict.ok { color: $success; text-style: bold; }
    LedgerScreen #ledger-verdict.bad { color: $error; text-style: bold; }
    LedgerScreen #ledger-filter { height: 1; border: none; padding: 0 1; margin: 0; }
    LedgerScreen #ledger-table { height: 1fr; min-height: 5; }
    LedgerScreen #ledger-detail { height: 1fr; border-top: solid $primary; padding: 0 1; }
    """

    BINDINGS = [
        Binding("v", "verify", "Verify"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("r", "reload", "Reload"),
        Binding("i", "init", "Init", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.blocks: list[dict[str, Any]] = []
        self.shown: list[dict[str, Any]] = []
        self.result: VerifyResult | None = None
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static("Loading the ledger…", id="ledger-verdict")
            flt = Input(placeholder="/ filter: action or run id (action:run. run:abc)", id="ledger-filter")
            flt.cursor_blink = False
            yield flt
            table: DataTable = DataTable(id="ledger-table", cursor_type="row", zebra_stripes=True)
            yield table
            with VerticalScroll(id="ledger-detail"):
                yield Static(render_detail(None), id="ledger-detail-body")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for c in COLUMNS:
            table.add_column(c, key=c)
        table.focus()
        self.load()

    # ------------------------------------------------------------------------------------------ loading
    def _ledger(self) -> Ledger:
        return Ledger(context_of(self).home)

    @work(thread=True, exclusive=True, group="ledger-load")
    def load(self) -> None:
        try:
            blocks = list(self._ledger().iter_blocks())
            err = None
        except CARLError as exc:
            blocks, err = [], exc
        except OSError as exc:  # e.g. CARL_HOME/ledger is not a directory: say so, never a traceback
            blocks, err = [], PermissionDenied(f"cannot read the ledger: {exc.strerror or exc}",
                                               hint="Set CARL_HOME to a writable directory.")
        self.app.call_from_thread(self._loaded, blocks, err)

    def _loaded(self, blocks: list[dict[str, Any]], err: CARLError | None) -> None:
        self.blocks = blocks
        self.loaded = True
        if err is not None:
            self._verdict(f"✗ {err.message} — {err.hint}", "bad")
        elif not blocks:
            self._verdict("No blocks yet. Actions are recorded as you init a project, train and eval; "
                          "press i to initialise the ledger now.", "")
        else:
            self._verdict(f"{len(blocks)} blocks · press v to verify every hash, link and signature", "")
        failed = write_failures(context_of(self).home)
        if failed:  # a workbench action whose block never reached the ledger: never unseen
            last = failed[-1]
            self._verdict(f"✗ {len(failed)} action{'s' if len(failed) != 1 else ''} not recorded this session"
                          f" (last: {last['action']}: {last['error']}) — {last['hint'] or 'see the log'}"
                          + (f" · {err.message}" if err is not None and err.message != last["error"] else ""), "bad")
        self.refresh_table()

    def refresh_table(self) -> None:
        table = self.query_one(DataTable)
        text = self.query_one("#ledger-filter", Input).value
        self.shown = [b for b in self.blocks if matches(b, text)]
        bad = self.result.first_bad if self.result is not None and not self.result.ok else None
        table.clear()
        for b in self.shown:
            idx = b.get("index")
            is_bad = bad is not None and idx == bad
            style = "bold red" if is_bad else ""
            cells = [Text(("✗ " if is_bad else "") + str(idx), style=style, justify="right"),
                     Text(show_time(b.get("ts")), style=style), Text(str(b.get("action", "")), style=style),
                     Text(str(b.get("hash", ""))[:12], style=style),
                     Text(key_id(str(b.get("signer", "")))[:8], style=style)]
            table.add_row(*cells, key=str(idx))
        if bad is not None:
            self._select_index(bad)
        elif self.shown:
            table.move_cursor(row=len(self.shown) - 1)
        self._show_detail()

    def _select_index(self, index: int) -> None:
        table = self.query_one(DataTable)
        for row, b in enumerate(self.shown):
            if b.get("index") == index:
                table.move_cursor(row=row)
                return
        # the bad block was not parseable (torn / malformed) or is filtered out: select the one before it
        before = [r for r, b in enumerate(self.shown) if isinstance(b.get("index"), int) and b["index"] < index]
        if before:
            table.move_cursor(row=before[-1])

    def _show_detail(self) -> None:
        table = self.query_one(DataTable)
        block = self.shown[table.cursor_row] if self.shown and 0 <= table.cursor_row < len(self.shown) else None
        self.query_one("#ledger-detail-body", Static).update(render_detail(block, self.result))

    def _verdict(self, text: str, cls: str) -> None:
        v = self.query_one("#ledger-verdict", Static)
        v.set_classes(cls)
        v.update(escape(text))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    @on(Input.Changed, "#ledger-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.refresh_table()

    @on(Input.Submitted, "#ledger-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    # ------------------------------------------------------------------------------------------ actions
    def action_focus_filter(self) -> None:
        self.query_one("#ledger-filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_reload(self) -> None:
        self.result = None
        self.load()

    def action_verify(self) -> None:
        self._verdict("Verifying…", "")
        self.verify()

    def action_init(self) -> None:
        if not self.blocks:
            self.init_ledger()

    @work(thread=True, exclusive=True, group="ledger-init")
    def init_ledger(self) -> None:
        try:
            self._ledger().init()
        except CARLError as exc:
            self.app.call_from_thread(self._verdict, f"✗ {exc.message} — {exc.hint}", "bad")
            return
        self.app.call_from_thread(self.action_reload)

    @work(thread=True, exclusive=True, group="ledger-verify")
    def verify(self) -> None:
        led = self._ledger()
        try:
            res = led.verify()
            blocks = list(led.iter_blocks())
            err = None
        except CARLError as exc:
            res, blocks, err = None, self.blocks, exc
        self.app.call_from_thread(self._verified, res, blocks, err)

    def _verified(self, res: VerifyResult | None, blocks: list[dict[str, Any]], err: CARLError | None) -> None:
        self.blocks = blocks
        self.result = res
        if err is not None or res is None:
            self._verdict(f"✗ cannot verify: {err.message if err else '?'} — {err.hint if err else ''}", "bad")
        elif res.ok:
            head = (res.head or "")[:12]
            self._verdict(f"✓ intact: {res.blocks} blocks — hashes, links, signatures verified"
                          + (f" · head {head}" if head else ""), "ok")
        else:
            self._verdict(f"✗ BROKEN at block {res.first_bad} ({res.segment}): {res.reason}", "bad")
        self.refresh_table()
