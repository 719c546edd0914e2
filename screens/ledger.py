"""Ledger screen (issue: Ledger). Until the ledger lands: an honest empty state."""

from screens.empty import EmptyStateScreen


class LedgerScreen(EmptyStateScreen):
    TITLE_TEXT = "Ledger — not built yet"
    BODY = ("This screen will show the signed, hash-chained record of every engine action (runs, gate "
            "openings, evals, approvals, tool calls), with block detail and a verify action that points "
            "at the first tampered block.\n\nNothing is recorded yet.")
