"""Jobs screen: remote training jobs (Hugging Face Jobs, RunPod, a managed endpoint) — see docs/jobs_panel.md.

    Backends   each backend's flavor, the cost estimate for the carl.yaml in force and its credential (masked);
               for the managed backend also its platform's entitlement state (from the local cache, no network)
    Jobs       the remote jobs of this CARL_HOME (CARL_HOME/jobs), live status polled at a bounded rate
    Logs       the selected job's logs, followed in a cancellable worker

Keys: ``1``/``2``/``3`` pick hf / runpod / managed, ``s`` submit (credential check → estimate → the approval
modal → submit), ``f`` follow the selected job's logs (``f`` again or ``escape`` stops following), ``x`` stop
the selected job (after a y/n confirm), ``d`` pull (download) the selected job's run from its ``train.output_repo`` into
the local run store (engine.remote.sync.pull_run), ``r`` reload the config, estimates and list and poll now.
Following a job also feeds its local run (engine.remote.mirror), so observe and train follow it live.

Everything that reads files or the network runs on thread workers; the UI thread only renders what they post
(``call_from_thread``). Log lines go through a queue drained by a 10 Hz timer, so a chatty job never causes
more than ten redraws a second. Status polling asks the backends about unfinished jobs only, one round at a
time, at most once per ``poll_interval_s`` (default 5 s). Errors show inline with their code, message and hint.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.worker import get_current_worker
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Header, Log, Static

from engine.errors import CARLError
from screens.approval import ApprovalScreen
from screens.context import context_of

BACKENDS = ("hf", "runpod", "managed")
TERMINAL = ("completed", "failed", "stopped")
def cpu_only_reason(cfg: Any) -> str | None:
    """Why the config in force trains on a CPU (so a GPU flavor buys nothing it needs), or None."""
    if getattr(cfg.compute, "device", "auto") == "cpu":
        return "compute.device is cpu"
    if str(cfg.model.name_or_path).startswith("builtin:"):
        return f"its model {cfg.model.name_or_path} is the built-in CPU demo"
    return None


def is_gpu_flavor(backend: str, flavor: Any) -> bool:
    f = str(flavor or "").lower()
    if backend == "runpod":
        return True  # RunPod prices GPUs
    if backend == "hf":
        return bool(f) and not f.startswith("cpu")
    return "gpu" in f


def gpu_for_cpu_text(backend: str, flavor: Any, reason: str) -> str:
    """The plain word the estimate owes a CPU-only config when the backend would rent it a GPU."""
    fix = "remote.hf.flavor: cpu-upgrade" if backend == "hf" else f"another backend or flavor (remote.{backend})"
    return (f"Note: this config runs on a CPU ({reason}); {backend}'s {flavor} is a GPU it does not need and is what "
            f"the estimate prices. Train it here (t) or set {fix}.")


JOB_COLUMNS = (("run id", "run_id"), ("status", "status"), ("flavor", "flavor"), ("cost", "cost"),
               ("step", "step"))
STATUS_STYLE = {"queued": "yellow", "running": "bold green", "completed": "bold", "failed": "bold red",
                "stopped": "dim", "unknown": "dim"}
LOG_DRAIN_S = 0.1  # the log queue is drained (one redraw) at most 10 times a second
MIN_POLL_S = 0.2



def typed(exc: BaseException) -> CARLError:
    """A worker thread's failure as a typed error (a paid submit or a pull must never end the app)."""
    if isinstance(exc, CARLError):
        return exc
    return CARLError(f"internal error: {type(exc).__name__}: {exc}",
                     hint="This is a bug in carl; the batch verb with CARL_DEBUG=1 shows the traceback.")

class _Cancelled(Exception):
    """Raised inside a log follow's sleep when the follow is cancelled (stops the engine's poll loop)."""


def usd(v: Any) -> str:
    return f"${float(v):,.2f}" if isinstance(v, (int, float)) else "—"


def short_time(iso: Any) -> str:
    """``2025-06-15T15:06:40Z`` → ``2025-06-15 15:06`` (UTC, as stored)."""
    s = str(iso or "")
    return s[:16].replace("T", " ") if len(s) >= 16 else (s or "—")


def clip(text: Any, n: int) -> str:
    s = str(text if text is not None else "—")
    return s if len(s) <= n else s[: n - 1] + "…"


def error_text(exc: CARLError, prefix: str = "") -> str:
    """Markup for an inline error: code, message and hint (all escaped; the message is already redacted)."""
    head = f"{prefix}: " if prefix else ""
    hint = f"\n  [dim]hint:[/dim] {escape(exc.hint)}" if exc.hint else ""
    return f"[b]✗ {escape(exc.code)}[/b] {escape(head)}{escape(str(exc))}{hint}"


def credential_cell(row: dict[str, Any]) -> Text:
    """``✓ HF_TOKEN hf_…abcd`` / ``✗ HF_TOKEN unset`` from engine's masked credential status (never more of
    the value than ``engine.errors.mask_secret`` shows: a known prefix and the last 4 characters)."""
    shown = str(row.get("shown") or "not set")
    if row.get("present"):
        inner = shown[len("set ("):-1] if shown.startswith("set (") and shown.endswith(")") else shown
        return Text.assemble(("✓ ", "green"), f"{row.get('env_var')} ", (inner.split(",")[0], "dim"))
    return Text.assemble(("✗ ", "red"), f"{row.get('env_var')} ", ("unset", "dim"))


ENTITLEMENT_STYLE = {"fresh": "green", "offline_grace": "yellow", "stale": "yellow", "missing": "yellow"}


def entitlement_cell(ent: dict[str, Any]) -> Text:
    """``grants fresh · `` (green) … ``grants offline_grace_expired · `` (red), from engine's cached summary."""
    status = str(ent.get("status"))
    return Text.assemble(("grants ", "dim"), (status, ENTITLEMENT_STYLE.get(status, "bold red")), (" · ", "dim"))


def log_text(line: str) -> str:
    """A log line as shown: carl frames compactly (``step 7 · phi 0.3000 · …``), anything else verbatim."""
    from engine.remote.jobs import parse_frame

    fr = parse_frame(line)
    if fr is None:
        return line.rstrip("\n")
    parts = [f"step {fr['step']}"]
    for k in ("phi", "entropy", "reward_mean", "loss", "gate"):
        v = fr.get(k)
        if isinstance(v, float):
            parts.append(f"{k} {v:.4f}")
        elif v is not None:
            parts.append(f"{k} {v}")
    return "frame · " + " · ".join(parts)


class ConfirmStopScreen(ModalScreen[bool]):
    """y stops the job; n / escape keeps it running."""

    BINDINGS = [Binding("y", "yes", "Stop job"), Binding("n", "no", "Keep"), Binding("escape", "no", "Keep",
                                                                                   show=False)]
    DEFAULT_CSS = """
    ConfirmStopScreen { align: center middle; }
    ConfirmStopScreen > #confirm-box {
        width: 64; max-width: 100%; height: auto; border: thick $error; background: $surface; padding: 0 1;
    }
    ConfirmStopScreen #confirm-title { text-style: bold; padding-bottom: 1; }
    ConfirmStopScreen #confirm-keys { padding-top: 1; color: $text-muted; }
    """

    def __init__(self, job: dict[str, Any]):
        super().__init__()
        self.job = dict(job)

    def compose(self) -> ComposeResult:
        j = self.job
        with Vertical(id="confirm-box"):
            yield Static("Stop this remote job?", id="confirm-title")
            body = (f"Job           {j.get('run_id')}\n"
                    f"Backend       {j.get('backend')} ({clip(j.get('flavor'), 40)})\n"
                    f"Status        {j.get('status')}\n"
                    f"Cost so far   {usd(j.get('cost_so_far'))}")
            yield Static(body, id="confirm-body", markup=False)
            yield Static("y  stop it      n / esc  keep it running", id="confirm-keys", markup=False)

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)


class JobsScreen(Screen):
    TITLE = "carl · jobs"  # the header names the screen
    """Backends, estimate, submit with approval, remote jobs with live status, logs and stop. Keyboard only."""

    DEFAULT_CSS = """
    JobsScreen #jobs-backends { height: auto; padding: 0 1; }
    JobsScreen #jobs-message { height: auto; max-height: 4; padding: 0 1; color: $text-muted; }
    JobsScreen #jobs-message.error { color: $error; }
    JobsScreen #jobs-message.ok { color: $success; }
    JobsScreen #jobs-table { height: 1fr; min-height: 3; }
    JobsScreen #jobs-detail { height: 1; padding: 0 1; color: $text-muted; background: $boost; }
    JobsScreen #jobs-log-title { height: 1; padding: 0 1; text-style: bold; border-top: none; }
    JobsScreen #jobs-log { height: 1fr; min-height: 3; padding: 0 1; }
    """

    BINDINGS = [
        Binding("s", "submit", "Submit"),
        Binding("f", "logs", "Logs"),
        Binding("x", "stop", "Stop job"),
        Binding("r", "refresh", "Refresh"),
        Binding("d", "pull", "Pull"),
        Binding("1", "backend('hf')", "hf", show=False),
        Binding("2", "backend('runpod')", "runpod", show=False),
        Binding("3", "backend('managed')", "managed", show=False),
        Binding("escape", "unfollow", "Stop following", show=False),
    ]

    def __init__(self, *, poll_interval_s: float = 5.0, backend: str | None = None, **kwargs: Any):
        """``poll_interval_s``: seconds between status rounds for unfinished jobs (0 turns polling off;
        values under 0.2 s are raised to 0.2 s). ``backend``: the one picked at first (default:
        ``remote.default_backend`` of the carl.yaml in force)."""
        super().__init__(**kwargs)
        self.poll_interval_s = 0.0 if poll_interval_s <= 0 else max(MIN_POLL_S, float(poll_interval_s))
        self.backend = backend if backend in BACKENDS else None
        self._backend_pinned = self.backend is not None
        self.backend_rows: dict[str, dict[str, Any]] = {}
        self.cpu_only: str | None = None  # why the config in force trains on a CPU (cpu_only_reason)
        self.backend_errors: dict[str, CARLError] = {}
        self.budget: dict[str, Any] | None = None
        self.load_error: CARLError | None = None
        self.jobs: list[dict[str, Any]] = []
        self.poll_errors: dict[str, CARLError] = {}
        self.loaded = False
        self.busy: str | None = None  # "submit" / "stop" while one is in flight
        self.following: str | None = None  # run id whose logs are followed
        self._follow_cancel: threading.Event | None = None
        self._log_queue: deque[str] = deque()
        self._log_lines = 0
        self._polling = False
        self.messages: list[str] = []  # every inline message shown, newest last (tests read it)

    # ------------------------------------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Loading backends…", id="jobs-backends")
        yield Static("", id="jobs-message")
        table: DataTable = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="jobs-detail")
        yield Static("Logs — select a job and press f to follow its logs", id="jobs-log-title")
        yield Log(id="jobs-log", max_lines=5000, auto_scroll=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for label, key in JOB_COLUMNS:
            table.add_column(label, key=key)
        table.focus()
        self.set_interval(LOG_DRAIN_S, self._drain_logs)
        if self.poll_interval_s:
            self.set_interval(self.poll_interval_s, self._poll_tick)
        self.reload()

    def on_unmount(self) -> None:
        self._cancel_follow()

    # ------------------------------------------------------------------------------------------ engine access
    def _ctx(self):
        return context_of(self)

    def _config(self):
        """(Config, path found) for the carl.yaml in force — read fresh each time, so edits apply."""
        from engine.config import load_config

        ctx = self._ctx()
        return load_config(ctx.config_path, cwd=ctx.cwd)

    def _now(self) -> float:
        return float(self._ctx().clock())

    def _entitlements(self, rs: Any) -> dict[str, Any]:
        """The managed platform's cached entitlement summary (engine; no network)."""
        from engine.platform.entitlements import summary

        try:
            return summary(rs.managed, self._ctx().home, self._now)
        except CARLError as exc:
            return {"status": exc.code, "admits": False}

    def _list_jobs(self) -> list[dict[str, Any]]:
        from engine.remote.store import list_jobs

        return list_jobs(self._ctx().home, now=self._now())

    def _post(self, fn: Any, *args: Any) -> None:
        """From a worker thread: run ``fn(*args)`` on the UI thread, unless the screen has gone meanwhile
        (popped, or the app is closing) — a late answer from the network is then dropped, never applied."""

        def apply() -> None:
            if self.is_attached:
                fn(*args)

        try:
            self.app.call_from_thread(apply)
        except RuntimeError:  # the app is no longer running
            pass

    # ------------------------------------------------------------------------------------------ loading
    @work(thread=True, exclusive=True, group="jobs-load")
    def reload(self) -> None:
        """Config → credential status and one estimate per backend; the job list (no network)."""
        from engine.remote.config import remote_settings
        from engine.remote.jobs import credential_status, estimate_job

        rows: dict[str, dict[str, Any]] = {}
        errors: dict[str, CARLError] = {}
        load_error: CARLError | None = None
        default = None
        cpu_only = None
        try:
            cfg, _ = self._config()
            cpu_only = cpu_only_reason(cfg)
            rs = remote_settings(cfg)
            default = rs.default_backend
            creds = {c["backend"]: c for c in credential_status(rs)}
            for b in BACKENDS:
                gpus = rs.runpod.gpu_count if b == "runpod" else 1
                rows[b] = {"backend": b, "flavor": rs.flavor_for(b), "gpu_count": gpus, "cred": creds.get(b, {}),
                           "estimate": None}
                if b == "managed" and not rs.managed.url:
                    rows[b]["note"] = "no url"
                elif b == "managed":
                    rows[b]["entitlements"] = self._entitlements(rs)
                try:
                    rows[b]["estimate"] = estimate_job(cfg, b, home=self._ctx().home)
                except CARLError as exc:
                    errors[b] = exc
        except CARLError as exc:
            load_error = exc
        try:
            jobs = self._list_jobs()
        except CARLError as exc:
            jobs = []
            load_error = load_error or exc
        if not get_current_worker().is_cancelled:  # a newer reload replaced this one
            self._post(self._loaded, rows, errors, load_error, default, jobs, cpu_only)

    def _loaded(self, rows: dict[str, dict[str, Any]], errors: dict[str, CARLError], load_error: CARLError | None,
                default: str | None, jobs: list[dict[str, Any]], cpu_only: str | None = None) -> None:
        self.backend_rows, self.backend_errors, self.load_error = rows, errors, load_error
        self.cpu_only = cpu_only
        if not self._backend_pinned:
            self.backend = default or self.backend or "hf"
        ests = [r["estimate"] for r in rows.values() if r.get("estimate")]
        self.budget = ests[0] if ests else None
        self.loaded = True
        self._render_backends()
        self._set_jobs(jobs)
        if load_error is not None:
            self.say(error_text(load_error, "carl.yaml"), "error")
        elif not self.messages:
            self._say_backend_state()

    def _render_backends(self) -> None:
        panel = self.query_one("#jobs-backends", Static)
        if self.load_error is not None and not self.backend_rows:
            panel.update("[b]Backends[/b]  [dim](the config could not be read — see below)[/dim]")
            return
        title = Text.assemble(("Backends", "bold"), (" 1/2/3 · s submit", "dim"))
        if self.budget:
            b = self.budget
            title.append(f"   spent today {usd(b.get('spent_today_usd'))} · cap {usd(b.get('max_usd_per_job'))}"
                         f"/job {usd(b.get('max_usd_per_day'))}/day", style="dim")
        table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
        table.add_column("pick", no_wrap=True, min_width=2)
        table.add_column("backend", no_wrap=True, min_width=7)
        table.add_column("flavor", no_wrap=True, min_width=8, max_width=16, overflow="ellipsis")
        table.add_column("estimate", no_wrap=True, min_width=12)
        table.add_column("credential", no_wrap=True, overflow="ellipsis", ratio=1)
        for i, b in enumerate(BACKENDS, 1):
            row = self.backend_rows.get(b, {"flavor": "—", "cred": {}})
            picked = b == self.backend
            mark = Text(("▶" if picked else " ") + f"{i}", style="bold" if picked else "dim")
            flavor = str(row.get("flavor")) + (f" ×{row['gpu_count']}" if (row.get("gpu_count") or 1) > 1 else "")
            est = row.get("estimate")
            if est is not None:
                cell = Text(f"{usd(est.get('estimated_usd'))} ≤{float(est.get('hours') or 0):g} h")
                if est.get("decision") == "deny":
                    cell.append(" refused", style="bold red")
            elif b in self.backend_errors:
                cell = Text(f"✗ {self.backend_errors[b].code}", style="red")
            else:
                cell = Text("—", style="dim")
            cred = credential_cell(row.get("cred") or {})
            if row.get("note"):
                cred.append(f" · {row['note']}", style="yellow")
            if row.get("entitlements"):  # first, so a narrow terminal clips the token's tail, not the state
                cred = Text.assemble(entitlement_cell(row["entitlements"]), cred)
            table.add_row(mark, Text(b, style="bold" if picked else ""), flavor, cell, cred)
        from rich.console import Group

        note = self.cpu_gpu_note(self.backend or "hf")
        panel.update(Group(title, table, Text(note, style="yellow")) if note else Group(title, table))

    def cpu_gpu_note(self, backend: str) -> str | None:
        """The note when ``backend`` would rent a GPU for a config that trains on a CPU, else None."""
        flavor = (self.backend_rows.get(backend) or {}).get("flavor")
        if self.cpu_only and is_gpu_flavor(backend, flavor):
            return gpu_for_cpu_text(backend, flavor, self.cpu_only)
        return None

    def _say_backend_state(self) -> None:
        """The picked backend's estimate error (inline, with hint), or a one-line prompt."""
        b = self.backend or "hf"
        ent = (self.backend_rows.get(b) or {}).get("entitlements") or {}
        if b in self.backend_errors:
            self.say(error_text(self.backend_errors[b], f"{b} estimate"), "error")
        elif ent and not ent.get("admits"):
            self.say(f"managed: cached grants are [b]{escape(str(ent.get('status')))}[/b] — a submit asks the platform "
                     "first (carl --batch entitlements show --refresh)")
        elif not self.jobs:
            self.say(f"No remote jobs yet. s submits carl.yaml to {escape(b)} once you approve the cost.")
        else:
            self.say(f"{len(self.jobs)} remote job{'s' if len(self.jobs) != 1 else ''} · f logs · x stop · "
                     "r refresh")

    def say(self, markup: str, cls: str = "") -> None:
        msg = self.query_one("#jobs-message", Static)
        msg.set_classes(cls)
        msg.update(markup)
        self.messages.append(markup)

    # ------------------------------------------------------------------------------------------ the job list
    def _set_jobs(self, jobs: list[dict[str, Any]], select: str | None = None) -> None:
        table = self.query_one(DataTable)
        keep = select or self.selected_run_id()
        self.jobs = list(jobs)
        table.clear()
        for j in self.jobs:
            st = str(j.get("status") or "unknown")
            step = j.get("last_step")
            table.add_row(Text(str(j["run_id"])), Text(st, style=STATUS_STYLE.get(st, "")),
                          clip(j.get("flavor"), 14), Text(usd(j.get("cost_so_far")), justify="right"),
                          Text("—" if step is None else str(step), justify="right"), key=str(j["run_id"]))
        if self.jobs:
            ids = [j["run_id"] for j in self.jobs]
            table.move_cursor(row=ids.index(keep) if keep in ids else len(ids) - 1)
        self._show_detail()

    def selected_job(self) -> dict[str, Any] | None:
        table = self.query_one(DataTable)
        if not self.jobs or not (0 <= table.cursor_row < len(self.jobs)):
            return None
        return self.jobs[table.cursor_row]

    def selected_run_id(self) -> str | None:
        j = self.selected_job()
        return None if j is None else str(j["run_id"])

    def _show_detail(self) -> None:
        detail = self.query_one("#jobs-detail", Static)
        j = self.selected_job()
        if j is None:
            detail.update("")
            return
        parts = [f"{j.get('backend')} {clip(j.get('remote_id'), 14)}", f"started {short_time(j.get('started_at'))}",
                 f"est {usd(j.get('estimated_usd'))}"]
        err = self.poll_errors.get(str(j["run_id"]))
        text = escape(" · ".join(parts))
        if err is not None:
            text += f" · [red]⚠ {escape(err.code)}: {escape(str(err))}[/red]"
        detail.update(text)

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail()

    # ------------------------------------------------------------------------------------------ live status
    def _poll_tick(self) -> None:
        if self._polling or not self.loaded or self.app.screen is not self:
            return  # one round at a time, and none while another screen (or a modal) is in front
        if not any(j.get("status") not in TERMINAL and j.get("remote_id") and j["run_id"] != self.following
                   for j in self.jobs):
            return
        self._polling = True
        self.poll(self.following)

    @work(thread=True, group="jobs-poll")
    def poll(self, skip: str | None = None) -> None:
        """One status round: every unfinished job, one request each (with the engine's retries). The job whose
        logs are being followed is skipped: the follow owns its record until it ends (a status write racing
        the follow's would drop its ``last_step``)."""
        from engine.remote.jobs import job_status

        errors: dict[str, CARLError] = {}
        try:
            cfg, _ = self._config()
            home = self._ctx().home
            for j in self._list_jobs():
                if j.get("status") in TERMINAL or not j.get("remote_id") or j["run_id"] == skip:
                    continue
                try:
                    job_status(j["run_id"], cfg, home=home)
                except CARLError as exc:
                    errors[j["run_id"]] = exc
            jobs = self._list_jobs()
        except CARLError as exc:
            self._post(self._polled, None, {"*": exc})
            return
        self._post(self._polled, jobs, errors)

    def _polled(self, jobs: list[dict[str, Any]] | None, errors: dict[str, CARLError]) -> None:
        self._polling = False
        if "*" in errors:
            self.say(error_text(errors["*"], "status refresh"), "error")
            return
        new = {rid: e for rid, e in errors.items()
               if rid not in self.poll_errors or self.poll_errors[rid].code != e.code}
        self.poll_errors = errors
        self._set_jobs(jobs or [])
        for rid, exc in new.items():  # say each new status failure once, with its hint; the detail line keeps it
            self.say(error_text(exc, f"status of {rid}"), "error")

    # ------------------------------------------------------------------------------------------ actions
    def action_backend(self, name: str) -> None:
        if name not in BACKENDS:
            return
        self.backend = name
        self._backend_pinned = True
        self._render_backends()
        self._say_backend_state()

    def action_refresh(self) -> None:
        self.poll_errors = {}
        self.messages.clear()
        self.reload()
        if not self._polling:
            self._polling = True
            self.poll(self.following)

    # -- submit: credentials and client → estimate → approval modal → submit (worker)
    def action_submit(self) -> None:
        if self.busy:
            self.app.bell()
            self.say(f"Busy: a {self.busy} is in flight.")
            return
        backend = self.backend or "hf"
        self.busy = "submit"
        self.say(f"Estimating the cost on {escape(backend)}…")
        self.prepare_submit(backend)

    @work(thread=True, exclusive=True, group="jobs-submit")
    def prepare_submit(self, backend: str) -> None:
        from engine.remote.config import remote_settings
        from engine.remote.jobs import credentials, estimate_job, make_client

        try:
            cfg, _ = self._config()
            rs = remote_settings(cfg)
            credentials(backend, rs)  # carl.credential before asking anyone to approve a cost
            make_client(backend, rs)  # carl.config (e.g. no managed url) likewise; builds nothing remote
            est = estimate_job(cfg, backend, home=self._ctx().home)
        except Exception as exc:  # any failure is shown typed; the screen is never left busy
            exc = typed(exc)
            self._post(self._submit_failed, exc, backend, None)
            return
        self._post(self._ask_approval, backend, est)

    def _ask_approval(self, backend: str, est: dict[str, Any]) -> None:
        paid = float(est.get("estimated_usd") or 0) > 0
        if est.get("decision") == "allow" and not paid:
            self.say(f"Free on {escape(backend)} under the policy: submitting…")
            self.do_submit(backend, False)
            return
        gpu = " — a GPU for a CPU-only config (see the note)" if self.cpu_gpu_note(backend) else ""
        self.say(f"Approve {usd(est.get('estimated_usd'))} on {escape(backend)}{gpu}? (y approve · n deny)")
        self.app.push_screen(ApprovalScreen(est), lambda ok: self._decided(backend, bool(ok)))

    def _decided(self, backend: str, approved: bool) -> None:
        if not approved:
            self.busy = None
            self.say("Not submitted: the approval was denied.")
            return
        self.say(f"Approved. Submitting to {escape(backend)}…")
        self.do_submit(backend, True)

    @work(thread=True, exclusive=True, group="jobs-submit")
    def do_submit(self, backend: str, approve: bool) -> None:
        from engine.remote.jobs import submit_job

        try:
            cfg, found = self._config()
            out = submit_job(cfg, backend, approve=approve, via="tui", config_path=found, home=self._ctx().home)
            jobs = self._list_jobs()
        except Exception as exc:  # any failure is shown typed; the screen is never left busy
            exc = typed(exc)
            # a submit that failed after its approval leaves a record with status failed: show it
            self._post(self._submit_failed, exc, backend, self._list_jobs())
            self._after_managed_submit(backend)
            return
        self._post(self._submitted, out, jobs)
        self._after_managed_submit(backend)

    def _after_managed_submit(self, backend: str) -> None:
        """A managed submit may have refreshed the entitlements: show their new state (from the cache)."""
        if backend != "managed" or "managed" not in self.backend_rows:
            return
        from engine.remote.config import remote_settings

        try:
            ent = self._entitlements(remote_settings(self._config()[0]))
        except CARLError:
            return
        self._post(self._set_entitlements, ent)

    def _set_entitlements(self, ent: dict[str, Any]) -> None:
        if "managed" in self.backend_rows and self.backend_rows["managed"].get("entitlements") is not None:
            self.backend_rows["managed"]["entitlements"] = ent
            self._render_backends()

    def _submit_failed(self, exc: CARLError, backend: str, jobs: list[dict[str, Any]] | None) -> None:
        self.busy = None
        self.say(error_text(exc, "submit"), "error")
        if jobs is not None:
            self._set_jobs(jobs)

    def _submitted(self, out: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        self.busy = None
        self._set_jobs(jobs, select=str(out["run_id"]))
        dedup = " (same idempotency key: existing job)" if out.get("deduplicated") else ""
        self.say(f"✓ submitted {escape(str(out['run_id']))} to {escape(str(out['backend']))} "
                 f"({escape(str(out.get('status')))}) · est {usd(out.get('estimated_usd'))}{dedup}", "ok")

    # -- stop: confirm → stop (worker)
    def action_stop(self) -> None:
        job = self.selected_job()
        if job is None:
            self.app.bell()
            self.say("No job selected.")
            return
        if job.get("status") in TERMINAL:
            self.app.bell()
            self.say(f"{escape(str(job['run_id']))} is already {escape(str(job.get('status')))}.")
            return
        if self.busy:
            self.app.bell()
            self.say(f"Busy: a {self.busy} is in flight.")
            return
        self.app.push_screen(ConfirmStopScreen(job), lambda ok: self._stop_decided(str(job["run_id"]), bool(ok)))

    def _stop_decided(self, run_id: str, yes: bool) -> None:
        if not yes:
            self.say(f"{escape(run_id)} keeps running.")
            return
        self.busy = "stop"
        self.say(f"Stopping {escape(run_id)}…")
        self.do_stop(run_id)

    @work(thread=True, exclusive=True, group="jobs-stop")
    def do_stop(self, run_id: str) -> None:
        from engine.remote.jobs import stop_job

        try:
            cfg, _ = self._config()
            out = stop_job(run_id, cfg, home=self._ctx().home)
            jobs = self._list_jobs()
        except Exception as exc:  # any failure is shown typed; the screen is never left busy
            exc = typed(exc)
            self._post(self._stop_failed, exc, run_id)
            return
        self._post(self._stopped, out, jobs)

    def _stop_failed(self, exc: CARLError, run_id: str) -> None:
        self.busy = None
        self.say(error_text(exc, f"stop {run_id}"), "error")

    def _stopped(self, out: dict[str, Any], jobs: list[dict[str, Any]]) -> None:
        self.busy = None
        self._set_jobs(jobs, select=str(out["run_id"]))
        self.say(f"✓ {escape(str(out['run_id']))} {escape(str(out['status']))} · cost so far "
                 f"{usd(out.get('cost_so_far'))}", "ok")

    # -- pull: the job's run from train.output_repo into the local run store (worker)
    def action_pull(self) -> None:
        job = self.selected_job()
        if job is None:
            self.app.bell()
            self.say("No job selected.")
            return
        if self.busy:
            self.app.bell()
            self.say(f"Busy: a {self.busy} is in flight.")
            return
        self.busy = "pull"
        self.say(f"Pulling {escape(str(job['run_id']))} from its output repo…")
        self.do_pull(str(job["run_id"]))

    @work(thread=True, exclusive=True, group="jobs-pull")
    def do_pull(self, run_id: str) -> None:
        from engine.remote.sync import pull_run

        try:
            out = pull_run(run_id, home=self._ctx().home)
        except Exception as exc:  # any failure is shown typed; the screen is never left busy
            exc = typed(exc)
            self._post(self._pull_failed, exc, run_id)
            return
        self._post(self._pulled, out)

    def _pull_failed(self, exc: CARLError, run_id: str) -> None:
        self.busy = None
        self.say(error_text(exc, f"pull {run_id}"), "error")

    def _pulled(self, out: dict[str, Any]) -> None:
        self.busy = None
        model = "final model" if out.get("has_final") else (
            f"checkpoint {out['last_checkpoint']}" if out.get("last_checkpoint") is not None else "no model yet")
        self.say(f"✓ pulled {escape(str(out['run_id']))} from {escape(str(out['repo_id']))} · {out['files']} files · "
                 f"{escape(str(out['status']))} · step {out.get('last_step')} · {model} — observe and try open it "
                 f"like a local run", "ok")

    # -- logs: follow in a cancellable worker; lines queued, drained at ≤ 10 Hz
    def action_logs(self) -> None:
        job = self.selected_job()
        if job is None:
            self.app.bell()
            self.say("No job selected.")
            return
        run_id = str(job["run_id"])
        if self.following == run_id:
            self.action_unfollow()
            return
        self._cancel_follow()
        log = self.query_one(Log)
        log.clear()
        self._log_queue.clear()
        self._log_lines = 0
        self.following = run_id
        cancel = threading.Event()
        self._follow_cancel = cancel
        self._log_title(f"Logs — {run_id} · following (f / esc stops)")
        self.follow_logs(run_id, cancel)

    def action_unfollow(self) -> None:
        if self.following is None:
            return
        run_id = self.following
        self._cancel_follow()
        self._log_title(f"Logs — {run_id} · not following (f follows again)")

    def _cancel_follow(self) -> None:
        if self._follow_cancel is not None:
            self._follow_cancel.set()
        self._follow_cancel = None
        self.following = None

    def _log_title(self, text: str) -> None:
        self.query_one("#jobs-log-title", Static).update(escape(text))

    @work(thread=True, exclusive=True, group="jobs-logs")
    def follow_logs(self, run_id: str, cancel: threading.Event) -> None:
        from engine.remote.jobs import job_logs, job_status

        def sleep(seconds: float) -> None:  # the engine's poll/retry sleep, cut short by a cancel
            if cancel.wait(seconds):
                raise _Cancelled

        lines = None
        err: CARLError | None = None
        try:
            cfg, _ = self._config()
            _, lines = job_logs(run_id, cfg, follow=True, home=self._ctx().home, sleep=sleep)
            for line in lines:
                if cancel.is_set():
                    break
                self._log_queue.append(log_text(line))
        except _Cancelled:
            pass
        except CARLError as exc:
            err = exc
        finally:
            if lines is not None:
                lines.close()  # runs the engine's finally: last_step saved to the record
        if cancel.is_set():
            return
        jobs = None
        try:
            if err is None:  # the log stream ended: the job did, so ask for its final status (as `jobs logs` does)
                job_status(run_id, cfg, home=self._ctx().home)
            jobs = self._list_jobs()
        except CARLError as exc:
            err = exc
        self._post(self._follow_ended, run_id, err, cancel, jobs)

    def _drain_logs(self) -> None:
        if not self._log_queue:
            return
        batch = []
        while self._log_queue:
            batch.append(self._log_queue.popleft())
        self._log_lines += len(batch)
        self.query_one(Log).write_lines(batch)

    def _follow_ended(self, run_id: str, err: CARLError | None, cancel: threading.Event,
                      jobs: list[dict[str, Any]] | None) -> None:
        if self._follow_cancel is not cancel:
            return  # a newer follow replaced this one
        self._drain_logs()
        self.following = None
        self._follow_cancel = None
        if err is not None:
            self._log_title(f"Logs — {run_id} · not available")
            self.say(error_text(err, f"logs of {run_id}"), "error")
            return
        self._log_title(f"Logs — {run_id} · ended ({self._log_lines} lines; f reads them again)")
        if jobs is not None:
            self._set_jobs(jobs)
