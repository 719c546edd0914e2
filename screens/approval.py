"""The approval modal for paid compute: backend, flavor, hours, estimated cost and remaining budget.

Push it with the estimate (``engine.remote.approval.Estimate.to_dict()`` or ``engine.remote.jobs.estimate_job``)
and a callback; it dismisses with ``True`` (approved, key ``y``) or ``False`` (denied: ``n`` or ``escape``)::

    self.app.push_screen(ApprovalScreen(estimate), self._on_decision)

An estimate the policy denies (above a cap, backend not allowed) cannot be approved here: ``y`` only rings
the bell. The caller records the approval (``engine.remote.jobs.submit_job(..., approve=True, via="tui")``).
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

BACKEND_NAMES = {"hf": "Hugging Face Jobs", "runpod": "RunPod", "managed": "managed endpoint"}


def _usd(v: Any) -> str:
    return f"${float(v):,.2f}" if isinstance(v, (int, float)) else "—"


class ApprovalScreen(ModalScreen[bool]):
    """Approve or deny one paid remote job. Keys only: y approve · n / esc deny."""

    BINDINGS = [
        Binding("y", "approve", "Approve"),
        Binding("n", "deny", "Deny"),
        Binding("escape", "deny", "Deny", show=False),
    ]

    DEFAULT_CSS = """
    ApprovalScreen {
        align: center middle;
    }
    ApprovalScreen > #approval-box {
        width: 64;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        border: thick $warning;
        background: $surface;
        padding: 0 1;
    }
    ApprovalScreen #approval-title {
        text-style: bold;
        padding-bottom: 1;
    }
    ApprovalScreen #approval-refused {
        color: $error;
        text-style: bold;
        padding-top: 1;
    }
    ApprovalScreen #approval-keys {
        padding-top: 1;
        color: $text-muted;
    }
    """

    def __init__(self, estimate: dict[str, Any], *, name: str | None = None, id: str | None = None):
        super().__init__(name=name, id=id)
        self.estimate = dict(estimate)

    @property
    def approvable(self) -> bool:
        return self.estimate.get("decision") != "deny"

    def _rows(self) -> list[tuple[str, str]]:
        e = self.estimate
        backend = str(e.get("backend", "?"))
        gpus = int(e.get("gpu_count") or 1)
        flavor = str(e.get("flavor", "?")) + (f" × {gpus}" if gpus > 1 else "")
        hours = e.get("hours")
        rows = [
            ("Backend", f"{backend} ({BACKEND_NAMES.get(backend, backend)})"),
            ("Flavor", flavor),
            ("Hours (max)", f"{float(hours):g} h" if isinstance(hours, (int, float)) else "—"),
            ("Price", f"{_usd(e.get('price_per_hour'))} / h" + (" per GPU" if gpus > 1 else "")),
            ("Estimated cost", _usd(e.get("estimated_usd"))),
            ("Remaining budget", _usd(e.get("remaining_usd"))),
            ("Caps", f"{_usd(e.get('max_usd_per_job'))} per job · {_usd(e.get('max_usd_per_day'))} per day"),
            ("Spent today", _usd(e.get("spent_today_usd"))),
        ]
        return rows

    def compose(self) -> ComposeResult:
        with Vertical(id="approval-box"):
            yield Static("Approve paid compute?", id="approval-title")
            width = max(len(k) for k, _ in self._rows())
            body = "\n".join(f"{k.ljust(width)}  {v}" for k, v in self._rows())
            yield Static(body, id="approval-body", markup=False)
            if not self.approvable:
                yield Static(f"Refused: {self.estimate.get('reason', 'over the budget')}", id="approval-refused",
                             markup=False)
                yield Static("n / esc  close", id="approval-keys", markup=False)
            else:
                yield Static("y  approve and submit      n / esc  deny", id="approval-keys", markup=False)

    def action_approve(self) -> None:
        if not self.approvable:
            self.app.bell()
            return
        self.dismiss(True)

    def action_deny(self) -> None:
        self.dismiss(False)
