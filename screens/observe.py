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
from engine.observe.view import MAX_OVERLAY, View, fmt, metric_choices, overlay, overlay_diff, series_of
from screens.context import context_of
from screens.widgets.charts import COLORS, MetricChart
from screens.widgets.completion_table import CompletionTable
from screens.widgets.frame_table import FrameTable
from screens.widgets.health_alerts import PHASE_MEANS, HealthAlerts, health_badge, phase_words

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


class OverlayLoaded(Message):
    def __init__(self, token: int, runs: list[tuple[str, list[Frame]]], errors: list[str]):
        super().__init__()
        self.token, self.runs, self.errors = token, runs, errors


class RunList(OptionList):
    """The picker's recent runs: space marks up to four of them to overlay (Enter then opens the overlay; the
    key is the screen's, so `?` lists it)."""


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
    ObserveScreen #obs-reason { height: 1; padding: 0 1; color: $text-muted; display: none; }
    ObserveScreen #obs-tabs { height: 1fr; }
    ObserveScreen TabPane { padding: 0; }
    ObserveScreen #obs-grid { grid-size: 2 2; grid-gutter: 0 1; height: 1fr; }
    ObserveScreen #obs-health { padding: 0 1; }
    ObserveScreen #obs-picker { padding: 0 1; }
    ObserveScreen #obs-spec { margin-bottom: 1; }
    ObserveScreen #obs-error { color: $error; height: auto; }
    ObserveScreen #obs-runs { height: 1fr; }
    ObserveScreen #obs-view { height: 1; padding: 0 1; color: $text-muted; display: none; }
    ObserveScreen #obs-overlay { height: 1fr; display: none; }
    ObserveScreen #obs-diff { width: 32; height: 1fr; padding: 0 1; }
    ObserveScreen #obs-completions-note { height: 1; padding: 0 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("f", "toggle_follow", "Follow"),
        Binding("m", "cycle_metric(1)", "Metric"),
        Binding("M", "cycle_metric(-1)", "Prev metric", show=False),
        Binding("r", "reload", "Reload"),
        Binding("E", "export", "Export", show=False),  # as `observe --export`: CARL_HOME/exports/
        Binding("e", "cycle_smoothing", "EMA"),
        Binding("x", "cycle_x", "X-axis", show=False),
        Binding("L", "toggle_log", "Log-y", show=False),  # a terminal sends "L" (never "shift+l"); l alone is the ledger
        Binding("s", "show_tab('source')", "Source"),
        Binding("slash", "focus_spec", "Type a source", show=False),
        Binding("escape", "back", "Charts", show=False),
        Binding("1", "show_tab('charts')", "Charts", show=False),
        Binding("2", "show_tab('health')", "Health", show=False),
        Binding("3", "show_tab('frames')", "Frames", show=False),
        Binding("4", "show_tab('source')", "Source", show=False),
        Binding("5", "show_tab('completions')", "Completions", show=False),
        Binding("space", "mark_run", "Mark a run to overlay (picker list)", show=False),
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
        self.view = View()  # smoothing, x-axis, log-y (e / x / l)
        self.marked: list[str] = []  # run ids marked in the picker (space) to overlay
        self.overlay_runs: list[tuple[str, list[Frame]]] = []  # the other runs of an overlay (the first is open)
        self.overlay_metric: str | None = None
        self.overlay_ids: list[str] = []
        self.overlay_pending = False
        self.poll_interval = 0.5
        self._token = 0
        self._stop = threading.Event()
        self._pending: list[FramesArrived] = []
        self.alerts = HealthAlerts()  # bell + notification on a new warn/bad finding of the followed run
        self._alerts_primed = False

    # ── layout ────────────────────────────────────────────────────────────────────────────────────────
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="obs-top"):
            yield Static("no run open — press s to pick one", id="obs-source")
            yield Static("", id="obs-health-badge")
            yield Static(" — ", id="obs-phase", classes="phase-none")
        yield Static("", id="obs-reason")  # why the phase label says what it says (phase_reason)
        with TabbedContent(initial="charts", id="obs-tabs"):
            with TabPane("1 Charts", id="charts"):
                yield Static("", id="obs-view")
                with Horizontal(id="obs-overlay"):
                    yield MetricChart("overlay", id="chart-overlay")
                    yield Static("", id="obs-diff")
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
                    yield RunList(id="obs-runs")
            with TabPane("5 Completions", id="completions"):
                with Vertical():
                    yield Static("Sampled completions per step (* one sample, the step's mean reward and Φ)",
                                 id="obs-completions-note")
                    yield CompletionTable(id="obs-completions")
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
            self.call_after_refresh(self.action_focus_runs)  # never the box: a screen key must not type into it

    def on_unmount(self) -> None:
        self._stop.set()

    # ── opening and following a source ─────────────────────────────────────────────────────────────────
    def open(self, source: Source, *, keep_overlay: bool = False) -> None:
        """Show a new source (replacing the current one) and start its loader/follower worker."""
        if not keep_overlay:
            self.overlay_runs = []
            self._show_overlay(False)
        self._stop.set()
        self._stop = threading.Event()
        self._token += 1
        self.source = source
        self.frames, self.summary, self.error, self.ended = [], None, None, False
        self.loading = True
        self._pending.clear()
        self.alerts.reset()
        self._alerts_primed = False
        for chart in self.query(MetricChart):
            chart.clear()
        self.query_one(FrameTable).reset()
        self.query_one(CompletionTable).reset()
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
                    self.query_one(CompletionTable).reset()
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
            self.query_one(CompletionTable).add_frames(new)
            self._refresh_header()
            if summary is not None:
                self._refresh_health()
        if summary is not None and self.source is not None:
            # what is there when the run opens is shown, not rung; what opens (or recovers) while following is
            self.alerts.announce(self, summary, self.source.run or self.source.label,
                                 prime=not (self._alerts_primed and self.following))
            self._alerts_primed = True

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
        if self.overlay_runs or not self.view.is_default:  # smoothed / rescaled lines are redrawn whole
            self._redraw_charts()
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
        rest = metric_choices(names, exclude=FIXED)  # TRL's diagnostics (frac_reward_zero_std, kl, …) first
        return rest or [n for n in names if n != "phi"]

    def _set_other(self, name: str) -> None:
        self.other_metric = name
        chart = self.query_one("#chart-other", MetricChart)
        chart.clear()
        chart.set_title(f"{name}  (m: next)")
        if self.view.is_default:
            chart.set_series(name, *self._xy(self.frames, name))
        else:
            ser = series_of(self.frames, name, self.view)
            chart.set_log_y(self.view.log_y)
            chart.set_series(name, ser.xs, ser.ys)

    def _redraw_charts(self) -> None:
        """Every chart from all frames under the current view (smoothing, x-axis, log-y) and the overlay."""
        v = self.view
        if self.other_metric is None:
            choices = self._other_choices()
            if choices:
                self.other_metric = choices[0]
                self.query_one("#chart-other", MetricChart).set_title(f"{choices[0]}  (m: next)")
        specs = [("#chart-phi", (("phi", "phi"),)),
                 ("#chart-reward", (("task_reward", "task"), ("carl_reward", "carl"), ("reward_mean", "mean"))),
                 ("#chart-entropy", (("entropy", "entropy"),))]
        if self.other_metric is not None:
            specs.append(("#chart-other", ((self.other_metric, self.other_metric),)))
        for sel, lines in specs:
            chart = self.query_one(sel, MetricChart)
            chart.clear()
            chart.set_log_y(v.log_y)
            for name, label in lines:
                ser = series_of(self.frames, name, v, label)
                if ser.xs or sel != "#chart-reward":
                    chart.set_series(label, ser.xs, ser.ys)
        if self.overlay_runs:
            self._redraw_overlay()
        self._refresh_view_line()

    # ── overlay of 2–4 runs ───────────────────────────────────────────────────────────────────────────
    def _overlay_all(self) -> list[tuple[str, list[Frame]]]:
        src = self.source
        label = (src.run or src.label) if src is not None else "?"
        return [(label, self.frames)] + self.overlay_runs

    def _overlay_choices(self) -> list[str]:
        names = metric_names(self.frames[-200:])
        head = [n for n in ("phi", "reward_mean") if n in names]
        return head + metric_choices(names, exclude=head)

    def _redraw_overlay(self) -> None:
        runs = self._overlay_all()
        choices = self._overlay_choices()
        if self.overlay_metric is None or (choices and self.overlay_metric not in choices):
            self.overlay_metric = choices[0] if choices else "phi"
        metric = self.overlay_metric
        chart = self.query_one("#chart-overlay", MetricChart)
        chart.clear()
        chart.sigma = SIGMA if metric == "phi" else None
        chart.set_log_y(self.view.log_y)
        chart.set_title(f"{metric} · {len(runs)} runs  (m: next)")
        for ser in overlay(runs, metric, self.view):
            chart.set_series(ser.label, ser.xs, ser.ys)
        ref = runs[0][0]
        lines = [f"[b]run diff[/b] vs ref · {escape(metric)}", f"[{COLORS[0]}]■[/] {escape(ref[:24])} (ref)"]
        for i, row in enumerate(overlay_diff(runs, metric), start=1):
            m, phi, cs = row["metric"] or {}, row["phi"] or {}, row["crystallization_step"]
            lines.append(f"[{COLORS[i % len(COLORS)]}]■[/] {escape(row['label'][:24])}")
            lines.append(f"  {row['aligned_steps']} steps · Δmean {fmt(m.get('mean_delta'))}")
            lines.append(f"  Δlast {fmt(m.get('last_delta'))} · max|Δ| {fmt(m.get('max_abs_delta'))}")
            if metric != "phi" and phi:
                lines.append(f"  ΔΦ mean {fmt(phi.get('mean_delta'))}")
            if cs["a"] is not None or cs["b"] is not None:
                lines.append(f"  Φ≥σ@ {cs['a'] if cs['a'] is not None else '—'} → "
                             f"{cs['b'] if cs['b'] is not None else '—'}")
        self.query_one("#obs-diff", Static).update("\n".join(lines))

    def _show_overlay(self, on: bool) -> None:
        self.query_one("#obs-overlay").display = on
        self.query_one("#obs-grid").display = not on
        self._refresh_view_line()

    def _refresh_view_line(self) -> None:
        line = self.query_one("#obs-view", Static)
        on = bool(self.overlay_runs) or self.overlay_pending or not self.view.is_default
        line.display = on
        if on:
            text = self.view.describe()
            if self.overlay_runs or self.overlay_pending:
                text += f" · overlay {1 + len(self.overlay_runs)} runs" + (" (loading…)" if self.overlay_pending else "")
            line.update(text + "  [dim](e EMA · x axis · L log)[/dim]")

    def _open_overlay(self, run_ids: list[str]) -> None:
        home = context_of(self).home
        try:
            sources = [open_source(run=r, home=home) for r in run_ids]
        except CARLError as exc:
            self._show_error(exc)
            return
        self.marked = []
        self._show_charts()
        self.open(sources[0], keep_overlay=True)
        self.overlay_ids = list(run_ids)
        self.overlay_runs, self.overlay_metric, self.overlay_pending = [], None, True
        self.query_one("#chart-overlay", MetricChart).clear()
        self.query_one("#obs-diff", Static).update("")
        self._show_overlay(True)
        self._load_overlay(sources[1:], self._token)

    @work(thread=True, exclusive=True, group="observe-overlay")
    def _load_overlay(self, sources: list[Source], token: int) -> None:
        runs: list[tuple[str, list[Frame]]] = []
        errors: list[str] = []
        for src in sources:
            try:
                frames, _ = src.load()
            except CARLError as exc:
                errors.append(f"{src.run or src.label}: {exc.message}")
                continue
            frames.sort(key=lambda f: f.step)
            runs.append((src.run or src.label, frames))
        self.post_message(OverlayLoaded(token, runs, errors))

    def on_overlay_loaded(self, msg: OverlayLoaded) -> None:
        if msg.token != self._token:
            return
        self.overlay_pending = False
        self.overlay_runs = msg.runs
        for e in msg.errors:
            self.notify(f"overlay: {e}", severity="warning")
        if not self.overlay_runs:
            self._show_overlay(False)
        self._redraw_charts()

    def action_export(self) -> None:
        from screens.export_key import export_frames

        export_frames(self, self.frames, (self.source and (self.source.run or self.source.label)) or "observe")

    def action_mark_run(self) -> None:
        """space in the recent-runs list: mark / unmark the highlighted run for an overlay (2–4 runs)."""
        if not isinstance(self.focused, RunList):
            return
        run_id = self._highlighted_run()
        if not run_id:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        elif len(self.marked) >= MAX_OVERLAY:
            self.notify(f"At most {MAX_OVERLAY} runs overlay on one chart.", severity="warning")
            return
        else:
            self.marked.append(run_id)
        self._fill_runs(keep_highlight=True)
        n = len(self.marked)
        self.query_one("#obs-error", Static).update(
            "" if not n else f"{n} marked to overlay · " + ("enter opens them" if n > 1 else "mark one more")
            + " · space unmarks")

    def action_cycle_smoothing(self) -> None:
        self.view = self.view.next_smoothing()
        self._redraw_charts()

    def action_cycle_x(self) -> None:
        self.view = self.view.next_x()
        self._redraw_charts()

    def action_toggle_log(self) -> None:
        self.view = self.view.toggle_log()
        self._redraw_charts()

    def action_cycle_metric(self, delta: int) -> None:
        if self.overlay_runs:
            choices = self._overlay_choices()
            if choices:
                i = choices.index(self.overlay_metric) if self.overlay_metric in choices else -delta
                self.overlay_metric = choices[(i + delta) % len(choices)]
                self._redraw_overlay()
            return
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
        label, reason = phase_words(s)
        badge.update(label)
        why = self.query_one("#obs-reason", Static)
        why.display = bool(s) and bool(reason)
        why.update(f"{label.lower()}: {escape(reason)}")
        self.query_one("#obs-health-badge", Static).update(health_badge(s))

    def _refresh_health(self) -> None:
        s = self.summary or {}
        h = s.get("health") or {}
        lines = []
        phi = s.get("phi")
        phase = s.get("phase")
        lines.append(f"[b]Phase[/b]: {phase or 'no Φ in this source'}"
                     + (f" · crystallization step {s['crystallization_step']}"
                        if s.get("crystallization_step") is not None else ""))
        reason = s.get("phase_reason") or PHASE_MEANS.get(phase or "")
        if reason:
            lines.append(f"  [dim]{escape(reason)}[/dim]")
        if phi:
            lines.append(f"Φ first {phi['first']:.4f} · last {phi['last']:.4f} · min {phi['min']:.4f} · "
                         f"max {phi['max']:.4f} · mean {phi['mean']:.4f}  (σ = {SIGMA:.4f} is the charts' "
                         f"reference line; it does not decide the phase)")
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
            if f.get("recovered_at") is not None:  # it stopped holding: say so, not BAD to the end of the run
                lines.append(f"[green][b]RECOVERED[/b] {escape(f['code'])}[/] ({escape(f['severity'])} "
                             f"steps {f['first_step']}–{f['last_step']}, recovered at step {f['recovered_at']})")
            else:
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
    def _fill_runs(self, *, keep_highlight: bool = False) -> None:
        runs = list_runs(context_of(self).home, limit=30)
        ol = self.query_one("#obs-runs", OptionList)
        prev = ol.highlighted if keep_highlight else None
        ol.clear_options()
        if not runs:
            ol.add_option(Option("(no runs yet — start one on the train screen, key t)", id="", disabled=True))
        for r in runs:
            mark = "● " if r["run_id"] in self.marked else ""
            ol.add_option(Option(f"{mark}{r['run_id']}  [dim]{r['status'] or ''}[/dim]", id=r["run_id"]))
        if runs:
            # Enter on an empty source box opens this one
            ol.highlighted = prev if prev is not None and prev < len(runs) else 0

    @on(Input.Submitted, "#obs-spec")
    def _spec_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():  # nothing typed: Enter opens the highlighted recent run
            if len(self.marked) > 1:
                self._open_overlay(list(self.marked))
                return
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

    def action_focus_spec(self) -> None:
        """`/`: into the source box (on the Source tab), to type a path, a run id or a URL."""
        self.query_one(TabbedContent).active = "source"
        self._fill_runs()
        self.query_one("#obs-spec", Input).focus()

    def action_leave_source(self) -> None:
        self.action_focus_runs()

    def action_back(self) -> None:
        """Esc: from the picker's list back to the charts (from the source box, see SourceInput)."""
        self.action_show_tab("charts")

    @on(OptionList.OptionSelected, "#obs-runs")
    def _run_picked(self, event: OptionList.OptionSelected) -> None:
        if len(self.marked) > 1:  # runs marked with space: Enter overlays them
            self._open_overlay(list(self.marked))
        elif event.option.id:
            self.marked = []
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
            self.action_focus_runs()  # the list, not the box: `/` enters the box
            return
        self.set_focus(None)
        self.query_one(TabbedContent).active = tab
        if tab == "frames":
            self.query_one(FrameTable).focus()
        elif tab == "completions":
            self.query_one(CompletionTable).focus()

    def action_toggle_follow(self) -> None:
        self.following = not self.following
        if self.source is None:
            return
        if not self.following:
            self._stop.set()
            self._refresh_header()
        else:
            self.open(self.source, keep_overlay=bool(self.overlay_runs))  # re-read from the top, then follow

    def action_reload(self) -> None:
        if self.overlay_runs and self.overlay_ids:
            self._open_overlay(list(self.overlay_ids))
        elif self.source is not None:
            self.open(self.source)
