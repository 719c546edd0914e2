"""Observe screen: open any run (carl frames, JSONL, TRL trainer_state.json, trackio local or remote) and watch
Φ against σ, rewards (task vs CARL), entropy and any other metric, the phase badge, health findings and the
latest frames — live.

Data flow (memray-style): a thread worker loads the source and then follows it, posting batches of frames and
a fresh summary (computed in the worker, never on the UI thread); the screen appends the batches to its
charts and table, and the charts redraw at most 10 times a second however fast frames arrive.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from engine.errors import CARLError
from engine.frames import Frame
from engine.observe.analysis import SIGMA, metric_names, summarize
from engine.observe.empty import empty_source_error
from engine.observe.follow import follow
from engine.observe.sources import Source, list_runs, open_source, parse_source_spec
from screens.context import context_of
from screens.widgets.charts import MetricChart
from screens.widgets.frame_table import FrameTable

FIXED = ("phi", "reward_mean", "task_reward", "carl_reward", "entropy")
SUMMARY_EVERY = 0.5  # seconds between summaries while following (always one after the last batch)


class FramesArrived(Message):
    def __init__(self, token: int, frames: list[Frame], summary: dict[str, Any] | None, *, reset: bool = False,
                 initial: bool = False, ended: bool = False):
        super().__init__()
        self.token, self.frames, self.summary = token, frames, summary
        self.reset, self.initial, self.ended = reset, initial, ended


class SourceFailed(Message):
    def __init__(self, token: int, error: CARLError):
        super().__init__()
        self.token, self.error = token, error


class SourceInput(Input):
    """The picker's source box: ↓ (or Esc) moves into the recent-runs list below it."""

    BINDINGS = [Binding("down", "screen.focus_runs", "Runs"),
                Binding("escape", "screen.leave_source", "Leave input")]


class ObserveScreen(Screen):
    TITLE = "carl · observe"  # the header names the screen
    DEFAULT_CSS = """
    ObserveScreen #obs-top { height: 1; padding: 0 1; }
    ObserveScreen #obs-source { width: 1fr; height: 1; color: $text-muted; }
    ObserveScreen #obs-health-badge { width: auto; height: 1; margin-right: 1; }
    ObserveScreen #obs-phase { width: auto; height: 1; padding: 0 1; text-style: bold; }
    ObserveScreen .phase-none { background: $panel; color: $text-muted; }
    ObserveScreen .phase-guessing { background: $warning-muted; color: $text; }
    ObserveScreen .phase-crystallizing { background: $accent-muted; color: $text; }
    ObserveScreen .phase-knowing { background: $success-muted; color: $text; }
    ObserveScreen #obs-tabs { height: 1fr; }
    ObserveScreen TabPane { padding: 0; }
    ObserveScreen #obs-grid { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    ObserveScreen #obs-health { padding: 0 1; }
    ObserveScreen #obs-picker { padding: 0 1; }
    ObserveScreen #obs-spec { margin-bottom: 1; }
    ObserveScreen #obs-error { color: $error; height: auto; }
    ObserveScreen #obs-runs { height: 1fr; }
    """

    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("m", "cycle_metric(1)", "Metric"),
        Binding("shift+m", "cycle_metric(-1)", "Prev metric", show=False),
        Binding("r", "reload", "Reload"),
        Binding("s", "show_tab('source')", "Source"),
        Binding("escape", "back", "Charts", show=False),
        Binding("1", "show_tab('charts')", "Charts", show=False),
        Binding("2", "show_tab('health')", "Health", show=False),
        Binding("3", "show_tab('frames')", "Frames", show=False),
        Binding("4", "show_tab('source')", "Source", show=False),
    ]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.source: Source | None = None
        self.frames: list[Frame] = []
        self.summary: dict[str, Any] | None = None
        self.following = True
        self.ended = False
        self.error: str | None = None
        self.loading = False
        self.other_metric: str | None = None
        self.poll_interval = 0.5
        self._token = 0
        self._stop = threading.Event()
        self._pending: list[FramesArrived] = []

    # ── layout ────────────────────────────────────────────────────────────────────────────────────────
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="obs-top"):
            yield Static("no run open — press s to pick one", id="obs-source")
            yield Static("", id="obs-health-badge")
            yield Static(" — ", id="obs-phase", classes="phase-none")
        with TabbedContent(initial="charts", id="obs-tabs"):
            with TabPane("1 Charts", id="charts"):
                with Grid(id="obs-grid"):
                    yield MetricChart("Φ  (σ = 3/16)", sigma=SIGMA, id="chart-phi")
                    yield MetricChart("reward: task vs CARL", id="chart-reward")
                    yield MetricChart("entropy (nats)", id="chart-entropy")
                    yield MetricChart("metric  (m: next)", id="chart-other")
            with TabPane("2 Health", id="health"):
                with VerticalScroll():
                    yield Static("No run open.", id="obs-health")
            with TabPane("3 Frames", id="frames"):
                yield FrameTable(id="obs-table")
            with TabPane("4 Source", id="source"):
                with Vertical(id="obs-picker"):
                    spec = SourceInput(placeholder="path · trackio:PROJECT[/RUN] · http://dashboard/?project=P RUN · "
                                                   "run id", id="obs-spec")
                    spec.cursor_blink = False
                    yield spec
                    yield Static("", id="obs-error")
                    yield Static("Recent runs in CARL_HOME (↓ into the list · enter opens the highlighted run):")
                    yield OptionList(id="obs-runs")
        yield Footer()

    def on_mount(self) -> None:
        ctx = context_of(self)
        args = ctx.screen_args or {}
        self.poll_interval = float(args.get("poll") or 0.5)
        self.following = not args.get("no_follow")  # live by default; f pauses
        self._fill_runs()
        self.set_interval(0.1, self._apply_pending)
        if any(args.get(k) for k in ("file", "trackio", "url", "run")):
            try:
                src = open_source(file=args.get("file"), trackio=args.get("trackio"), url=args.get("url"),
                                  project=args.get("project"), run=args.get("run"),
                                  trackio_dir=args.get("trackio_dir"), home=ctx.home)
            except CARLError as exc:
                self._show_error(exc)
                return
            self.open(src)
        else:
            self.query_one(TabbedContent).active = "source"
            self.call_after_refresh(lambda: self.query_one("#obs-spec", Input).focus())

    def on_unmount(self) -> None:
        self._stop.set()

    # ── opening and following a source ─────────────────────────────────────────────────────────────────
    def open(self, source: Source) -> None:
        """Show a new source (replacing the current one) and start its loader/follower worker."""
        self._stop.set()
        self._stop = threading.Event()
        self._token += 1
        self.source = source
        self.frames, self.summary, self.error, self.ended = [], None, None, False
        self.loading = True
        self._pending.clear()
        for chart in self.query(MetricChart):
            chart.clear()
        self.query_one(FrameTable).reset()
        self.query_one("#obs-error", Static).update("")
        self._refresh_header()
        self._run_source(source, self._token, self._stop, self.following)

    @work(thread=True, exclusive=True, group="observe-source")
    def _run_source(self, source: Source, token: int, stop: threading.Event, following: bool) -> None:
        try:
            frames, skipped = source.load()
            frames.sort(key=lambda f: f.step)
            summary = summarize(frames, source=source.label, run=source.run, skipped=skipped)
            ended = source.ended()
            self.post_message(FramesArrived(token, list(frames), summary, initial=True, ended=ended and following))
            if not following or stop.is_set():
                return
            last_summary = time.monotonic()
            stale = False  # frames arrived that the last posted summary does not cover
            for batch in follow(source, poll_interval=self.poll_interval, stop=stop, idle_batches=True):
                if not (batch.frames or batch.skipped or batch.reset or batch.ended):
                    # a quiet poll: the throttled summary catches up, so the header and badges show the latest
                    # frames within one poll interval of the last write
                    if stale:
                        summary = summarize(frames, source=source.label, run=source.run, skipped=skipped)
                        last_summary, stale = time.monotonic(), False
                        self.post_message(FramesArrived(token, [], summary))
                    continue
                if batch.reset:
                    frames = []
                skipped += batch.skipped
                frames.extend(batch.frames)
                now = time.monotonic()
                summary = None
                if batch.ended or now - last_summary >= SUMMARY_EVERY or batch.reset:
                    summary = summarize(frames, source=source.label, run=source.run, skipped=skipped)
                    last_summary = now
                stale = summary is None
                self.post_message(FramesArrived(token, batch.frames, summary, reset=batch.reset, ended=batch.ended))
            if not stop.is_set():  # the loop ended without an "ended" batch: make sure the last summary lands
                summary = summarize(frames, source=source.label, run=source.run, skipped=skipped)
                self.post_message(FramesArrived(token, [], summary, ended=True))
        except CARLError as exc:
            self.post_message(SourceFailed(token, exc))
        except Exception as exc:  # noqa: BLE001 — a source bug must not kill the screen
            self.post_message(SourceFailed(token, CARLError(f"{type(exc).__name__}: {exc}")))

    def on_frames_arrived(self, msg: FramesArrived) -> None:
        if msg.token == self._token:
            self._pending.append(msg)

    def on_source_failed(self, msg: SourceFailed) -> None:
        if msg.token == self._token:
            self.loading = False
            self._show_error(msg.error)

    def _apply_pending(self) -> None:
        """The 10 Hz tick: fold every batch that arrived since the last tick into one update."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        new: list[Frame] = []
        summary = None
        with self.app.batch_update():
            for msg in pending:
                if msg.reset:
                    self.frames, new = [], []
                    for chart in self.query(MetricChart):
                        chart.clear()
                    self.query_one(FrameTable).reset()
                new.extend(msg.frames)
                summary = msg.summary or summary
                self.ended = self.ended or msg.ended
                if msg.initial:
                    self.loading = False
            self.frames.extend(new)
            if summary is not None:
                self.summary = summary
            self._append_to_charts(new)
            self.query_one(FrameTable).add_frames(new)
            self._refresh_header()
            if summary is not None:
                self._refresh_health()

    # ── charts ────────────────────────────────────────────────────────────────────────────────────────
    def _xy(self, frames: list[Frame], name: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for f in frames:
            v = f.get(name)
            if isinstance(v, (int, float)) and v == v and v not in (float("inf"), float("-inf")):
                xs.append(f.step)
                ys.append(float(v))
        return xs, ys

    def _append_to_charts(self, new: list[Frame]) -> None:
        if not new:
            return
        phi = self.query_one("#chart-phi", MetricChart)
        reward = self.query_one("#chart-reward", MetricChart)
        entropy = self.query_one("#chart-entropy", MetricChart)
        phi.append("phi", *self._xy(new, "phi"))
        for name, label in (("task_reward", "task"), ("carl_reward", "carl"), ("reward_mean", "mean")):
            xs, ys = self._xy(new, name)
            if xs or label in reward.series_names():
                reward.append(label, xs, ys)
        entropy.append("entropy", *self._xy(new, "entropy"))
        if self.other_metric is None:
            choices = self._other_choices()
            if choices:
                self._set_other(choices[0])
                return
        if self.other_metric is not None:
            self.query_one("#chart-other", MetricChart).append(self.other_metric, *self._xy(new, self.other_metric))

    def _other_choices(self) -> list[str]:
        names = (self.summary or {}).get("metrics") or metric_names(self.frames[-200:])
        rest = [n for n in names if n not in FIXED]
        return rest or [n for n in names if n != "phi"]

    def _set_other(self, name: str) -> None:
        self.other_metric = name
        chart = self.query_one("#chart-other", MetricChart)
        chart.clear()
        chart.set_title(f"{name}  (m: next)")
        chart.set_series(name, *self._xy(self.frames, name))

    def action_cycle_metric(self, delta: int) -> None:
        choices = self._other_choices()
        if not choices:
            self.notify("No other metric in this run yet.", severity="warning")
            return
        i = choices.index(self.other_metric) if self.other_metric in choices else -delta
        self._set_other(choices[(i + delta) % len(choices)])

    @property
    def summary_current(self) -> bool:
        """Whether the summary behind the header, badges and health tab covers every frame shown."""
        return self.summary is not None and self.summary.get("n_frames") == len(self.frames)

    def flush(self) -> None:
        """Apply pending batches and redraw the charts now (tests use this instead of sleeping)."""
        self._apply_pending()
        for chart in self.query(MetricChart):
            chart.flush()

    # ── header, health, errors ────────────────────────────────────────────────────────────────────────
    def _refresh_header(self) -> None:
        src = self.source
        if src is None:
            return
        s = self.summary or {}
        state = "[b]● live[/b]" if self.following and not self.ended and not self.error else \
            "■ ended" if self.ended else "‖ paused"
        parts = [state, escape(src.run or src.label)] + ([] if src.kind in ("carl", "jsonl") else [src.kind])
        if self.loading:
            parts.append("loading…")
        else:
            n = len(self.frames)
            parts.append(f"{n} frame{'s' if n != 1 else ''}")
            if self.frames:
                parts.append(f"step {self.frames[0].step}–{self.frames[-1].step}")
            if s.get("crystallization_step") is not None:
                parts.append(f"Φ↑@{s['crystallization_step']}")
            onset = next((f for f in (s.get("health") or {}).get("findings") or []
                          if f.get("code") == "collapse.onset"), None)
            if onset is not None:
                parts.append(f"[b red]⚠ collapse onset @ step {onset.get('step')}[/]")
            if s.get("skipped_lines"):
                parts.append(f"{s['skipped_lines']} bad lines")
        self.query_one("#obs-source", Static).update(" · ".join(parts))
        phase = s.get("phase")
        badge = self.query_one("#obs-phase", Static)
        badge.set_classes(f"phase-{phase or 'none'}")
        badge.update(f"{(phase or 'no Φ').upper()}")
        h = (s.get("health") or {})
        status, n = h.get("status"), len(h.get("findings") or [])
        mark = {"ok": "[green]✓ ok[/]", "warn": f"[yellow]⚠ {n} warn[/]", "bad": f"[red]✗ {n} bad[/]",
                "empty": "[yellow]∅ empty[/]"}
        self.query_one("#obs-health-badge", Static).update(mark.get(status, "") if status else "")

    def _refresh_health(self) -> None:
        s = self.summary or {}
        h = s.get("health") or {}
        lines = []
        phi = s.get("phi")
        phase = s.get("phase")
        lines.append(f"[b]Phase[/b]: {phase or 'no Φ in this source'}"
                     + (f" · crystallization step {s['crystallization_step']}"
                        if s.get("crystallization_step") is not None else ""))
        if phi:
            lines.append(f"Φ first {phi['first']:.4f} · last {phi['last']:.4f} · min {phi['min']:.4f} · "
                         f"max {phi['max']:.4f} · mean {phi['mean']:.4f}  (σ = {SIGMA:.4f})")
        lines.append("")
        findings = h.get("findings") or []
        empty = empty_source_error(s) if h.get("status") == "empty" else None
        if empty is not None:  # no frames: nothing to be healthy about
            lines.append(f"[yellow][b]EMPTY[/b] {escape(empty.message)}[/]")
            lines.append(f"  [dim]→ {escape(empty.hint or '')}[/dim]")
        elif not findings:
            lines.append("[green]✓ No health findings.[/]")
        for f in findings:
            color = "red" if f["severity"] == "bad" else "yellow"
            lines.append(f"[{color}][b]{f['severity'].upper()}[/b] {escape(f['code'])}[/] "
                         f"steps {f['first_step']}–{f['last_step']}")
            lines.append(f"  {escape(f['message'])}")
            lines.append(f"  [dim]→ {escape(f['hint'])}[/dim]")
        self.query_one("#obs-health", Static).update("\n".join(lines))

    def _show_error(self, exc: CARLError) -> None:
        self.error = exc.message
        text = f"[b]{escape(exc.code)}[/b]: {escape(str(exc))}\n[dim]{escape(exc.hint or '')}[/dim]"
        self.query_one("#obs-error", Static).update(text)
        self.query_one("#obs-source", Static).update(f"[red]{escape(str(exc))}[/red]")
        self.query_one(TabbedContent).active = "source"

    # ── source picker ─────────────────────────────────────────────────────────────────────────────────
    def _fill_runs(self) -> None:
        runs = list_runs(context_of(self).home, limit=30)
        ol = self.query_one("#obs-runs", OptionList)
        ol.clear_options()
        if not runs:
            ol.add_option(Option("(no runs yet — start one on the train screen, key t)", id="", disabled=True))
        for r in runs:
            ol.add_option(Option(f"{r['run_id']}  [dim]{r['status'] or ''}[/dim]", id=r["run_id"]))
        if runs:
            ol.highlighted = 0  # Enter on an empty source box opens this one

    @on(Input.Submitted, "#obs-spec")
    def _spec_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():  # nothing typed: Enter opens the highlighted recent run
            run_id = self._highlighted_run()
            if run_id:
                self._open_run_id(run_id)
                return
        try:
            src = parse_source_spec(event.value, context_of(self).home)
        except CARLError as exc:
            self._show_error(exc)
            return
        self._show_charts()
        self.open(src)

    def _highlighted_run(self) -> str | None:
        ol = self.query_one("#obs-runs", OptionList)
        if ol.highlighted is None:
            return None
        return ol.get_option_at_index(ol.highlighted).id or None

    def action_focus_runs(self) -> None:
        """↓ / Esc in the source box: into the recent-runs list (highlighting the first run)."""
        ol = self.query_one("#obs-runs", OptionList)
        if ol.highlighted is None and ol.option_count and not ol.get_option_at_index(0).disabled:
            ol.highlighted = 0
        if ol.option_count and not ol.get_option_at_index(0).disabled:
            ol.focus()
        else:
            self.set_focus(None)  # no runs: at least leave the box, so the screen's keys work

    def action_leave_source(self) -> None:
        self.action_focus_runs()

    def action_back(self) -> None:
        """Esc: from the picker's list back to the charts (from the source box, see SourceInput)."""
        self.action_show_tab("charts")

    @on(OptionList.OptionSelected, "#obs-runs")
    def _run_picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self._open_run_id(event.option.id)

    def _open_run_id(self, run_id: str) -> None:
        try:
            src = open_source(run=run_id, home=context_of(self).home)
        except CARLError as exc:
            self._show_error(exc)
            return
        self._show_charts()
        self.open(src)

    def _show_charts(self) -> None:
        # leave the picker's widgets unfocused, or TabbedContent would switch back to the pane holding focus
        self.set_focus(None)
        self.query_one(TabbedContent).active = "charts"

    # ── actions ───────────────────────────────────────────────────────────────────────────────────────
    def action_show_tab(self, tab: str) -> None:
        if tab == "source":
            self.query_one(TabbedContent).active = tab
            self._fill_runs()
            self.query_one("#obs-spec", Input).focus()
            return
        self.set_focus(None)
        self.query_one(TabbedContent).active = tab
        if tab == "frames":
            self.query_one(FrameTable).focus()

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        if self.source is None:
            return
        if not self.following:
            self._stop.set()
            self._refresh_header()
        else:
            self.open(self.source)  # re-read from the top, then follow

    def action_reload(self) -> None:
        if self.source is not None:
            self.open(self.source)
