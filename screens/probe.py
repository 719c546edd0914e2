"""Probe panel: open a logits file and see its per-token Phi field and CARL reward components.

Type a path (relative to the working directory; prefilled from ``carl probe --logits F``) and press Enter: a
worker thread reads the file (``engine.probe.load_logits_file``) and measures it (``CoherenceProbe``); the
panel shows the Phi heat strip (block glyphs too, so it reads under NO_COLOR), a bar plot with the SIGMA line,
the reward components and the summary statistics. Errors show inline with their code, message and hint.
The CARL weights are the project's (``--config``, else ./carl.yaml; a ``run`` screen argument: that run's), else
the defaults (engine.settings); the rewards panel names the source when it is not the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from engine.errors import CARLError
from engine.probe import DEFAULT_WEIGHTS, SIGMA, CoherenceProbe, Snapshot, load_logits_file
from screens.context import context_of
from screens.widgets.phi_strip import PhiPlot, PhiStrip


def _bar(value: float, width: int = 10) -> str:
    v = min(1.0, max(0.0, value))
    full = round(v * width)
    return "█" * full + "░" * (width - full)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None or v != v else format(v, spec)


def rewards_text(snap: Snapshot, weights: dict[str, float] | None = None, source: str = "default") -> Text:
    r = snap.rewards
    weights = weights or DEFAULT_WEIGHTS
    t = Text()
    t.append("CARL reward ", style="bold")
    t.append(f"{r.carl:.3f}\n", style="bold")
    for key, label in (("coherence", "coherence"), ("cloud", "cloud"), ("discontinuity", "discontinuity")):
        v = getattr(r, key)
        t.append(f"{label:<13} {v:.3f} {_bar(v)} ×{weights[key]:g}\n")
    if source != "default":
        t.append(f"weights: {Path(source).name if source.endswith('.yaml') else source}\n", style="dim")
    if snap.batched:
        t.append(f"mean of {len(snap.per_sequence)} sequences", style="dim")
    return t


def stats_text(snap: Snapshot) -> Text:
    d = snap
    cryst = sum(len(c) for c in d.crystallization_positions())
    melt = sum(len(m) for m in d.melting_positions())
    shape = "×".join(str(s) for s in d.shape)
    return Text("\n".join((
        f"tokens {d.n_tokens} · V {d.vocab_size} · {shape} {d.dtype}",
        f"Φ {_fmt(d.phi_mean)} ± {_fmt(d.phi_std)} [{_fmt(d.phi_min)}, {_fmt(d.phi_max)}]",
        f"H {_fmt(d.entropy_mean)} nats · surprisal {_fmt(d.surprisal_mean, '.2f')}",
        f"Φ≥σ {_fmt(d.crystallized_fraction * 100, '.0f')}% · cryst {cryst} · melt {melt} · R {_fmt(d.kuramoto_r, '.2f')}",
    )))


class ProbeScreen(Screen):
    TITLE = "carl · probe"  # the header names the screen
    """The probe panel (mode key ``b``)."""

    DEFAULT_CSS = """
    ProbeScreen #probe-body { padding: 0 1; }
    ProbeScreen #probe-path-row { height: 3; }
    ProbeScreen #probe-path-label { width: auto; padding: 1 1 0 0; }
    ProbeScreen #probe-path { width: 1fr; }
    ProbeScreen #probe-status { height: auto; color: $text-muted; }
    ProbeScreen #probe-status.error { color: $error; }
    ProbeScreen .probe-title { color: $accent; text-style: bold; height: 1; }
    ProbeScreen #probe-plot { height: 6; }
    ProbeScreen #probe-numbers { height: auto; }
    ProbeScreen #probe-rewards { width: 38; height: auto; }
    ProbeScreen #probe-stats { width: 1fr; height: auto; }
    ProbeScreen .hidden { display: none; }
    """

    BINDINGS = [
        Binding("ctrl+r", "reload", "Reload"),
        Binding("ctrl+t", "toggle_masked", "Masked −inf"),
        Binding("escape", "leave_input", "Leave input"),
        Binding("slash", "focus_path", "Path", show=False),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.allow_masked = False
        self.snapshot: Snapshot | None = None
        self.error: CARLError | None = None
        self.settings: Any = None  # engine.settings.Settings of the last measurement

    def compose(self) -> ComposeResult:
        ctx = context_of(self)
        logits = ctx.screen_args.get("logits") or ""
        yield Header()
        with VerticalScroll(id="probe-body"):
            with Horizontal(id="probe-path-row"):
                yield Static("Logits", id="probe-path-label")
                path = Input(value=str(logits), placeholder=".npy / .npz / .safetensors path, Enter loads",
                             id="probe-path")
                path.cursor_blink = False
                yield path
            yield Static("Open a logits file ([T, V] or [B, T, V]) to see its per-token Phi field.", id="probe-status")
            yield Static("Φ per token", classes="probe-title hidden", id="probe-strip-title")
            yield PhiStrip(id="probe-strip", classes="hidden")
            yield PhiPlot(SIGMA, id="probe-plot", classes="hidden")
            with Horizontal(id="probe-numbers", classes="hidden"):
                yield Static(id="probe-rewards")
                yield Static(id="probe-stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#probe-body").focus()  # `/` enters the path box; screen keys never type into it
        if context_of(self).screen_args.get("logits"):
            self.action_reload()

    # ── actions ──────────────────────────────────────────────────────────────────────────────────────
    @on(Input.Submitted, "#probe-path")
    def _submitted(self, event: Input.Submitted) -> None:
        self.action_reload()

    def action_reload(self) -> None:
        raw = self.query_one("#probe-path", Input).value.strip()
        if not raw:
            self._show_error(CARLError("no logits file given", code="carl.validation",
                                       hint="Type the path of a .npy, .npz or .safetensors file and press Enter."))
            return
        ctx = context_of(self)
        path = self._resolve(raw)
        tokens = ctx.screen_args.get("tokens")
        self._set_status(f"loading {raw} …")
        self._measure(path, self._resolve(tokens) if tokens else None, self.allow_masked, ctx)

    def action_toggle_masked(self) -> None:
        self.allow_masked = not self.allow_masked
        self.notify(f"masked mode {'on: -inf logits are probability 0' if self.allow_masked else 'off'}",
                    timeout=3)
        if self.query_one("#probe-path", Input).value.strip():
            self.action_reload()

    def action_leave_input(self) -> None:
        self.query_one("#probe-body").focus()

    def action_focus_path(self) -> None:
        self.query_one("#probe-path", Input).focus()

    def _resolve(self, raw: str) -> Path:
        p = Path(raw).expanduser()
        return p if p.is_absolute() else context_of(self).cwd / p

    # ── the worker ───────────────────────────────────────────────────────────────────────────────────
    @work(thread=True, exclusive=True, group="probe")
    def _measure(self, path: Path, tokens: Path | None, allow_masked: bool, ctx: Any) -> None:
        from engine import settings

        worker = get_current_worker()
        try:
            st = settings.resolve(run=ctx.screen_args.get("run"), config_path=ctx.config_path, cwd=ctx.cwd,
                                  home=ctx.home)
            logits, toks = load_logits_file(path, tokens)
            snap = CoherenceProbe(weights=st.weights).measure(logits, toks, allow_masked=allow_masked)
        except CARLError as exc:
            self.app.call_from_thread(self._show_error, exc)
            return
        except Exception as exc:  # a bug, still shown inline rather than crashing the workbench
            self.app.call_from_thread(self._show_error, CARLError(f"internal error: {type(exc).__name__}: {exc}"))
            return
        if not worker.is_cancelled:  # a newer load replaced this one: its result is stale
            self.app.call_from_thread(self._show, snap, path, st)

    # ── rendering (UI thread) ────────────────────────────────────────────────────────────────────────
    def _set_status(self, message: str, error: bool = False) -> None:
        status = self.query_one("#probe-status", Static)
        status.update(message)
        status.set_class(error, "error")

    def _show_error(self, exc: CARLError) -> None:
        self.error, self.snapshot = exc, None
        self._set_status(f"✗ {exc.code}: {escape(str(exc))}\n  → {escape(exc.hint or '')}", error=True)
        for wid in ("#probe-strip-title", "#probe-strip", "#probe-plot", "#probe-numbers"):
            self.query_one(wid).add_class("hidden")

    def _show(self, snap: Snapshot, path: Path, st: Any = None) -> None:
        self.error, self.snapshot = None, snap
        self.settings = st
        masked = " · masked −inf" if self.allow_masked else ""
        self._set_status(f"✓ {escape(path.name)}: {snap.n_tokens} tokens · V {snap.vocab_size}{masked}")
        phi = snap.phi.tolist()
        title = f"Φ per token (σ = {SIGMA:g})" + (f" · {len(snap.per_sequence)} sequences, in order"
                                                  if snap.batched else "")
        self.query_one("#probe-strip-title", Static).update(title)
        self.query_one("#probe-strip", PhiStrip).set_phi(phi)
        self.query_one("#probe-plot", PhiPlot).set_phi(phi)
        self.query_one("#probe-rewards", Static).update(
            rewards_text(snap, st.weights if st else None, st.source if st else "default"))
        self.query_one("#probe-stats", Static).update(stats_text(snap))
        for wid in ("#probe-strip-title", "#probe-strip", "#probe-plot", "#probe-numbers"):
            self.query_one(wid).remove_class("hidden")
