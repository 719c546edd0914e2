"""BoundedTable: a row-cursor DataTable that keeps only its last ``max_rows`` rows and follows the bottom while
the cursor is there. Subclasses name their COLUMNS and turn their items into rows."""

from __future__ import annotations

from typing import ClassVar, Iterable, Sequence

from textual.widgets import DataTable


class BoundedTable(DataTable):
    COLUMNS: ClassVar[Sequence[tuple[str, str]]] = ()  # (label, key)

    def __init__(self, *, max_rows: int, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True)
        self.max_rows = max_rows
        self._keys: list[object] = []

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            self.add_column(label, key=key)

    def reset(self) -> None:
        self.clear()
        self._keys.clear()

    @property
    def row_total(self) -> int:
        return len(self._keys)

    def append_rows(self, rows: Iterable[Sequence[object]]) -> None:
        """Append rows (the oldest drop out past max_rows); follows the bottom if the cursor was there."""
        rows = list(rows)[-self.max_rows:]
        if not rows:
            return
        at_bottom = not self._keys or self.cursor_row >= len(self._keys) - 1
        for cells in rows:
            self._keys.append(self.add_row(*cells))
        while len(self._keys) > self.max_rows:
            self.remove_row(self._keys.pop(0))
        if at_bottom:
            self.move_cursor(row=len(self._keys) - 1, animate=False)
