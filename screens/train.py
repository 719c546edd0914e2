"""Train screen: start cascade GRPO runs, watch them live, stop/detach/resume — keyboard only.

The worker is always a separate process (engine.runs); this screen only tails its run directory on a thread
(``@work(thread=True)``) and applies batches of new frames on the UI thread. Charts redraw at most 10× a
second however fast frames arrive (MetricChart). Opening the screen re-attaches to a run that is already going.
"""

from __future__ import annotations

import re
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from engine.frames import Frame
from engine.probe import SIGMA
from screens.context import context_of
from screens.widgets.agent import AgentPanel
from screens.widgets.charts import MetricChart
from screens.widgets.health_alerts import HealthAlerts, health_badge, phase_words
from screens.widgets.stage_line import StageLine

POLL_S = 0.25
LOG_LINES = 6
SAMPLES = 5
SUMMARY_S = 1.0  # at most one health/phase summary a second while frames arrive (always one when the run ends)


class RunUpdate(Message):
    def __init__(self, run_id: str, frames: list[dict], events: list[dict], meta: dict, log: list[str],
                 system: dict | None = None):
        super().__init__()
        self.run_id, self.frames, self.events, self.meta, self.log = run_id, frames, events, meta, log
        self.system = system  # the live worker's CPU/RAM and the GPUs, measured by the follower thread


class MachineSampled(Message):
    def __init__(self, system: dict):
        super().__init__()
        self.system = system


class PlanReady(Message):
    def __init__(self, plan: dict | None, error: str | None):
        super().__init__()
        self.plan, self.error = plan, error


def _fmt(v: Any, nd: int = 3) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else "–"


def _log_tail(path: Path, n: int = LOG_LINES) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 4096))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    keep = [ln for ln in lines if ln.strip() and "Writing model shards" not in ln and "warn" not in ln.lower()]
    return keep[-n:]



_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_WARNING = re.compile(r"\b(?:\w+Warning|warnings\.warn)\b")


def clean_log(lines: list[str]) -> list[str]:
    """The worker log as a person reads it: ANSI colour codes stripped (they showed as garbage), a progress bar
    redrawn with \\r kept at its last state, and library warnings (a FutureWarning and the source line under it)
    folded into one line that counts them; stdout.log keeps every byte."""
    out: list[str] = []
    warned = 0
    skip_next = False
    for raw in lines:
        line = _ANSI.sub("", raw).split("\r")[-1].rstrip()
        if skip_next:
            skip_next = False
            if line.startswith((" ", "\t")):
                continue
        if _WARNING.search(line):
            warned += 1
            skip_next = True  # Python prints the offending source line under the warning
            continue
        if line:
            out.append(line)
    if warned:
        out.append(f"({warned} library warning{'s' if warned > 1 else ''} folded; stdout.log has them)")
    return out

class TrainScreen(Screen):
    TITLE = "carl · train"  # the header names the screen
    DEFAULT_CSS = """
    TrainScreen #train-head { height: auto; padding: 0 1; }
    TrainScreen #plan { height: auto; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    TrainScreen #status { height: auto; }
    TrainScreen #hw { height: auto; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    TrainScreen #charts { height: 1fr; min-height: 8; }
    TrainScreen #charts MetricChart { width: 1fr; height: 1fr; }
    TrainScreen #bottom { height: 8; }
    TrainScreen #samples, TrainScreen #log { width: 1fr; height: 100%; border: round $panel; padding: 0 1; }
    """
    BINDINGS = [
        Binding("s", "start", "Start"),
        Binding("x", "stop", "Stop"),
        Binding("d", "detach", "Detach"),
        Binding("a", "attach", "Attach"),
        Binding("u", "resume", "Resume"),
        Binding("y", "try_run", "Try it"),
        Binding("E", "export", "Export", show=False),  # as `observe --export`: CARL_HOME/exports/
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run_id: str | None = None
        self.meta: dict[str, Any] = {}
        self.plan: dict[str, Any] | None = None
        self.frames: list[Frame] = []
        self.events: list[dict] = []
        self.samples: deque[str] = deque(maxlen=SAMPLES)
        self.log_lines: list[str] = []
        self.following = False
        self.message_text = ""
        self.live_system: dict[str, Any] | None = None  # sampled now from the worker process (local, live)
        self.machine_system: dict[str, Any] | None = None  # this machine, when no run is open
        self.summary: dict[str, Any] | None = None  # observe's summary of the frames: phase, reason, health
        self._summary_at = 0.0
        self._summary_stale = False
        self.alerts = HealthAlerts()  # bell + notification on a new warn/bad finding of the watched run
        self._alerts_primed = False

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="train-head"):
            yield Static("", id="plan")
            yield Static("", id="status")
            yield StageLine("", id="stages")
            yield Static("", id="hw")
            yield AgentPanel("", id="agent")  # agent runs: task completion, tool format, tool calls/task
        with Horizontal(id="charts"):
            yield MetricChart("Φ  (σ = 3/16)", sigma=SIGMA, id="chart-phi")
            yield MetricChart("reward: task vs CARL", id="chart-reward")
            yield MetricChart("entropy (nats)", id="chart-entropy")
        with Horizontal(id="bottom"):
            yield Static("", id="samples")
            yield Static("", id="log")
        yield Footer()

    def on_mount(self) -> None:
        ctx = context_of(self)
        self.query_one("#samples", Static).border_title = "recent completions"
        self.query_one("#log", Static).border_title = "worker log"
        from engine.runs import RunStore

        self.store = RunStore(ctx.home)
        ref = ctx.screen_args.get("run")
        run_id = None
        try:
            if ref:
                run_id = self.store.resolve(ref)
            else:  # re-attach to a run that is already going
                running = [r for r in self.store.list() if r["status"] == "running"]
                run_id = running[0]["run_id"] if running else None
        except Exception as exc:  # a bad --run is shown, never raised
            self.message_text = f"[red]{getattr(exc, 'message', exc)}[/red]"
        if run_id:
            self.open_run(run_id)
        else:
            self.resolve_plan()
            self.sample_machine()
        self.refresh_text()

    @work(thread=True, exclusive=True, group="machine")
    def sample_machine(self) -> None:
        from engine.system import SystemSampler

        s = SystemSampler().sample()
        self.post_message(MachineSampled({k: v for k, v in s.items() if k not in ("pid", "cpu_pct", "rss_mb")}))

    def on_machine_sampled(self, msg: MachineSampled) -> None:
        self.machine_system = msg.system
        self.refresh_text()

    def on_screen_resume(self) -> None:
        """Back on train with no run open: the plan line is read again (the project may have been saved)."""
        if self.run_id is None and self.is_mounted and self.plan is not None:
            self.resolve_plan()

    # ---- plan
    @work(thread=True, exclusive=True, group="plan")
    def resolve_plan(self) -> None:
        ctx = context_of(self)
        try:
            from engine.config import load_config
            from engine.trainer.plan import plan

            cfg, path = load_config(ctx.config_path, ctx.screen_args.get("sets") or [], cwd=ctx.cwd)
            self.post_message(PlanReady(plan(cfg, path), None))
        except Exception as exc:
            self.post_message(PlanReady(None, getattr(exc, "message", str(exc))))

    def on_plan_ready(self, msg: PlanReady) -> None:
        self.plan = msg.plan
        if msg.error:
            self.message_text = f"[red]config: {msg.error}[/red]"
        elif self.run_id is None:
            self.message_text = "press [b]s[/b] to start a run"
        self.refresh_text()

    # ---- runs
    def open_run(self, run_id: str) -> None:
        """Load a run's whole history now (file reads only), then follow it on a thread if it is live."""
        from engine.runs import JsonlTail, read_json

        self.run_id = run_id
        d = self.store.run_dir(run_id)
        self.frames = []
        self.events = []
        self.live_system = None
        self.samples.clear()
        self.summary, self._summary_at, self._summary_stale = None, 0.0, False
        self.alerts.reset()
        self._alerts_primed = False
        for chart in self.query(MetricChart):
            chart.clear()
        self.query_one(AgentPanel).set_frames([])
        self.plan = read_json(d / "plan.json") or self.plan
        self._tails = (JsonlTail(d / "frames.jsonl"), JsonlTail(d / "events.jsonl"))
        meta = self.store.meta(run_id)
        self.apply(self._tails[0].read(), self._tails[1].read(), meta, _log_tail(d / "stdout.log"))
        self._alerts_primed = True  # what was there at opening is on the badge; from now on a new finding rings
        if meta.get("status") in ("running", "created"):
            self.following = True
            self.follow(run_id)

    @work(thread=True, exclusive=True, group="tail")
    def follow(self, run_id: str) -> None:
        worker = get_current_worker()
        d = self.store.run_dir(run_id)
        frames_t, events_t = self._tails
        sampler = None
        while not worker.is_cancelled:
            meta = self.store.meta(run_id)
            fr, ev = frames_t.read(), events_t.read()
            system = None
            if meta.get("pid") and (meta.get("backend") or "local") == "local":
                from engine.system import SystemSampler

                if sampler is None or sampler.pid != meta["pid"]:
                    sampler = SystemSampler(int(meta["pid"]))
                system = sampler.sample()
            self.post_message(RunUpdate(run_id, fr, ev, meta, _log_tail(d / "stdout.log"), system))
            if meta.get("status") in ("completed", "failed", "stopped"):
                return
            time.sleep(POLL_S)

    def on_run_update(self, msg: RunUpdate) -> None:
        if msg.run_id == self.run_id:
            if msg.system is not None:
                self.live_system = msg.system
            self.apply(msg.frames, msg.events, msg.meta, msg.log)

    def apply(self, frames: list[dict], events: list[dict], meta: dict, log: list[str]) -> None:
        new = [Frame.from_dict(f) for f in frames if "step" in f]
        self.frames.extend(new)
        self.events.extend(events)
        self.meta = meta
        self.log_lines = clean_log(log)
        if meta.get("status") in ("completed", "failed", "stopped"):
            self.following = False
            self.live_system = None  # the worker is gone: show what its last frame recorded
        if new:
            charts = {c.id: c for c in self.query(MetricChart)}

            def put(chart: str, name: str, attr: str) -> None:
                pts = [(f.step, getattr(f, attr)) for f in new if isinstance(getattr(f, attr), (int, float))]
                if pts:
                    charts[chart].append(name, [p[0] for p in pts], [p[1] for p in pts])

            put("chart-phi", "phi", "phi")
            put("chart-reward", "task", "task_reward")
            put("chart-reward", "CARL", "carl_reward")
            put("chart-entropy", "entropy", "entropy")
            for f in new:
                if f.sample:
                    self.samples.append(f"{f.step:>4}  {f.sample}")
            self.query_one(AgentPanel).set_frames(self.frames)
            self._summary_stale = True
        self._summarize(final=not self.following)
        self.refresh_text()

    def _summarize(self, *, final: bool = False) -> None:
        """Observe's summary of the frames (phase, its reason, health findings), throttled; then the alerts: a
        new warn/bad finding while the run is watched rings once, a recovery is said."""
        now = time.monotonic()
        if not self.frames or not self._summary_stale or (not final and now - self._summary_at < SUMMARY_S):
            return
        from engine.observe.analysis import summarize

        self.summary = summarize(self.frames, source=self.run_id or "train", run=self.run_id)
        self._summary_at, self._summary_stale = now, False
        self.alerts.announce(self, self.summary, self.run_id,
                             prime=not (self._alerts_primed and (self.following or final)))
        self._alerts_primed = True

    # ---- text
    def _room(self) -> int:
        """Columns one header line has (the screen less the head's padding); wide when not laid out yet."""
        return (self.size.width - 2) if self.size.width > 20 else 200

    def gate_text(self) -> str:
        opened = next((e for e in self.events if e.get("name") == "gate_open"), None)
        if opened:
            if self._room() < 100:  # one line at 80 columns: the step the gate opened at, not the rule's name
                return f"[b]gate B[/b] since step {opened.get('step')}"
            return f"[b]gate B[/b] (opened at step {opened.get('step')}, {opened.get('mode')})"
        mode = (self.plan or {}).get("cascade", {}).get("mode", "evidence")
        return f"gate A (task only; {mode} gate closed)"

    def refresh_text(self) -> None:
        p = self.plan or {}
        if p:
            g = p.get("grpo", {})
            where = p.get("config")
            if where and self._room() < 100:  # at 80 columns the file's name: the path would push the rest off
                where = Path(where).name
            plan = (f"{where or 'preset ' + str(p.get('preset'))} · {p.get('model')} · {p.get('dataset')} · "
                    f"{g.get('max_steps')} steps × {g.get('per_device_train_batch_size')}/"
                    f"{g.get('num_generations')} gen · lr {g.get('learning_rate')} · {p.get('device')}"
                    f"{' ×' + str(p.get('gpus')) if (p.get('gpus') or 1) > 1 else ''} · cascade {p.get('cascade', {}).get('mode')}")
            if g.get("seed") is not None:  # identical config → identical numbers: say so, and how to vary it
                plan += f" · seed {g['seed']} (fixed: same config, same numbers; --set grpo.seed=N)"
        else:
            plan = "resolving the plan…"
        self.query_one("#plan", Static).update(plan)
        if self.run_id:
            st = self.meta.get("status", "?")
            step = self.frames[-1].step if self.frames else 0
            total = self.meta.get("max_steps") or (p.get("grpo") or {}).get("max_steps")
            times = [f.step_time for f in self.frames[-10:] if isinstance(f.step_time, (int, float))]
            eta = ""
            if st == "running" and times and total:
                eta = f" · ETA {max(0.0, (total - step) * sum(times) / len(times)):.0f}s"
            last = self.frames[-1] if self.frames else None
            ev = self.meta.get("eval") or {}
            acc = ""
            if ev.get("before"):
                acc = f" · held-out {_fmt(ev['before'].get('task_metric'))}"
                if ev.get("after"):
                    acc += f" → {_fmt(ev['after'].get('task_metric'))}"
            status = (f"run [b]{self.run_id}[/b] {st} · step {step}/{total or '?'}{eta} · {self.gate_text()}\n"
                      f"Φ {_fmt(last.phi if last else None)} · task {_fmt(last.task_reward if last else None)} · "
                      f"CARL {_fmt(last.carl_reward if last else None)} · entropy {_fmt(last.entropy if last else None)}"
                      f"{acc}")
            if self.summary:  # the same words as observe: the phase, its reason, the open and recovered findings
                label, reason = phase_words(self.summary)
                badge = health_badge(self.summary)
                head = f"{Text.from_markup(badge).plain} · phase {label}: "
                room = self._room() - len(head)
                if len(reason) > room:  # one line: the reason is cut, the words before it never are
                    reason = reason[: max(0, room - 1)] + "…"
                status += f"\n{badge} · phase [b]{label}[/b]: {escape(reason)}"
            onset = next((e for e in self.events if e.get("name") == "collapse_onset"), None)
            if onset is not None:
                status += (f"\n[b red]⚠ collapse onset at step {onset.get('step')}[/] "
                           f"(cascade.on_collapse: {onset.get('action')}) — see observe's health tab")
            if self.meta.get("error") and st == "failed":
                status += f"\n[red]{self.meta['error']}[/red]"
        else:
            status = "no run"
        if self.message_text:
            status += f"\n{self.message_text}"
        self.query_one("#status", Static).update(status)
        self.query_one("#stages", StageLine).show(self.meta.get("pipeline") if self.run_id else None)
        self.query_one("#hw", Static).update(escape(self.hardware_text()))
        self.query_one("#samples", Static).update("\n".join(self.samples) or "–")
        self.query_one("#log", Static).update("\n".join(ln[-120:] for ln in self.log_lines) or "–")

    def hardware_text(self) -> str:
        """The worker's CPU/RAM and the GPUs: live from the worker process while it runs here, else as the
        run's last frame recorded them, else this machine's (no run open). Never a number nobody measured."""
        from engine.system import system_text

        if self.run_id and self.live_system is not None:
            return "hw: " + system_text(self.live_system)
        if self.run_id:
            rec = next((f for f in reversed(self.frames) if f.system), None)
            if rec is None:
                return "hw: not recorded in this run's frames"
            if rec.system.get("error"):
                return f"hw at step {rec.step}: unmeasured ({rec.system['error']})"
            return f"hw at step {rec.step}: " + system_text(rec.system)
        m = self.machine_system
        if m is None:
            return "hw: measuring…"
        return "hw (this machine): " + system_text(m)

    # ---- actions
    def action_export(self) -> None:
        from screens.export_key import export_frames

        export_frames(self, self.frames, self.run_id or "train")

    def action_start(self) -> None:
        if self.run_id and self.following:
            self.message_text = "a run is being followed: stop (x) or detach (d) first"
            self.refresh_text()
            return
        self.message_text = "starting…"
        self.refresh_text()
        self.start_run()

    @work(thread=True, exclusive=True, group="start")
    def start_run(self) -> None:
        ctx = context_of(self)
        try:
            from engine.config import load_config
            from engine.trainer.plan import plan

            cfg, path = load_config(ctx.config_path, ctx.screen_args.get("sets") or [], cwd=ctx.cwd)
            the_plan = plan(cfg, path, run_dir=str(self.store.root / "<run_id>"))
            run_id = self.store.create(cfg.to_yaml(), the_plan, config_path=str(path) if path else None)
            self.store.spawn(run_id, gpus=cfg.compute.gpus)
            self.app.call_from_thread(self._started, run_id)
        except Exception as exc:
            self.app.call_from_thread(self._say, f"[red]cannot start: {getattr(exc, 'message', exc)}[/red]")

    def _started(self, run_id: str) -> None:
        self.message_text = ""
        self.open_run(run_id)

    def _say(self, text: str) -> None:
        self.message_text = text
        self.refresh_text()

    def action_stop(self) -> None:
        if not self.run_id or self.meta.get("status") != "running":
            self._say("no running run to stop")
            return
        from engine.errors import CARLError

        try:
            self.store.stop(self.run_id, wait=0)
        except CARLError as exc:  # a remote run: its job is stopped on the jobs panel
            self._say(f"[red]{escape(exc.message)}[/red] — {escape(exc.hint or '')}")
            return
        self._say("stop requested: the worker finishes the step and checkpoints")

    def action_detach(self) -> None:
        if not self.run_id:
            return
        self.workers.cancel_group(self, "tail")
        was = self.run_id
        self.following = False
        self.run_id = None
        self._say(f"detached from {was}; it keeps running — press a to attach again")

    def action_attach(self) -> None:
        runs = self.store.list()
        target = next((r["run_id"] for r in runs if r["status"] == "running"), None) or \
            (runs[0]["run_id"] if runs else None)
        if target is None:
            self._say("no runs yet")
            return
        self.message_text = ""
        self.open_run(target)

    def action_try_run(self) -> None:
        """Open the try panel on this run's model (its final model, else its newest checkpoint)."""
        open_try = getattr(self.app, "open_try", None)
        if not self.run_id:  # no run open: `y` is the try screen, as on every other screen
            if callable(open_try):
                self.app.switch_mode("try")
            else:
                self._say("open a run first (a)")
            return
        # The try screen (its mode), not a screen pushed on train's stack: pushed, it would come back with `t`
        # from any later screen (y, o, t opened try instead of train).
        if callable(open_try):
            open_try(run=self.run_id)
            return
        from screens.try_panel import TryScreen  # outside the shell (a bare App in a test)

        self.app.push_screen(TryScreen(run=self.run_id))

    def action_resume(self) -> None:
        if not self.run_id:
            self._say("open a stopped or failed run first (a)")
            return
        try:
            run_id, step = self.store.prepare_resume(self.run_id)
            import yaml

            cfg = yaml.safe_load((self.store.run_dir(run_id) / "config.yaml").read_text(encoding="utf-8")) or {}
            self.store.spawn(run_id, gpus=int((cfg.get("compute") or {}).get("gpus") or 1), resume=True)
        except Exception as exc:
            self._say(f"[red]cannot resume: {getattr(exc, 'message', exc)}[/red]")
            return
        self.message_text = f"resumed from step {step}"
        self.open_run(run_id)
