"""Probe panel: the per-token Phi field and CARL reward components of a logits file, or of a model on a prompt.

The first box takes either a logits file or a model name. A model (anything the resolver accepts: ``RUN``,
``RUN/checkpoint-N``, ``RUN@N``, ``run:ID``, a directory, ``builtin:tiny``, a Hub id) needs a prompt (second box);
with a text (third box) the text is scored after the prompt (teacher-forced, ``LoadedModel.score``), without one
the model's greedy completion is (``LoadedModel.generate``) — both with ``keep_logits``, so the panel measures the
model's own logits; the model loads through engine.infer (the try panel's cache). The try panel's ``p`` key saves
its pane A completion's logits to ``CARL_HOME/probe/*.npz`` and opens them here.

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

from engine.errors import CARLError, ValidationError
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


LOGITS_SUFFIXES = (".npy", ".npz", ".safetensors")
PROBE_MAX_NEW_TOKENS = 32


def is_logits_file(raw: str, cwd: Path) -> bool:
    """A logits file (by its suffix, or an existing file), not a model name."""
    p = Path(raw).expanduser()
    p = p if p.is_absolute() else cwd / p
    return p.suffix.lower() in LOGITS_SUFFIXES or p.is_file()


def model_logits(name: str, prompt: str, text: str | None = None, *, home: Any = None, cwd: Path | None = None,
                 config_path: Any = None, max_new_tokens: int = PROBE_MAX_NEW_TOKENS) -> tuple[Any, Any, Any, Any]:
    """``(logits [T, V] float32 numpy, token ids [T], InferResult, settings)`` of ``name`` on ``prompt``: ``text``
    scored after the prompt when given, else the greedy completion. The model is resolved and loaded the way
    infer and the try panel do (engine.infer.parse_spec / load); the weights and prompt format are its run's."""
    import numpy as np

    from engine import infer

    if not prompt:
        raise ValidationError("a model needs a prompt to probe", hint="Type a prompt in the Prompt box (/ then Tab).")
    ref = infer.parse_spec(name, home=home)
    st = infer.settings_for(ref, config_path=config_path, cwd=cwd, home=home)
    lm = infer.load(ref)
    if text:
        res = lm.score(prompt, text, keep_logits=True, fmt=st.prompt_format(), weights=st.weights)
    else:
        res = lm.generate(prompt, infer.Sampling(max_new_tokens=max_new_tokens, greedy=True), keep_logits=True,
                          fmt=st.prompt_format(), weights=st.weights)
    if res.logits is None or not res.token_ids:
        raise ValidationError(f"{ref.label or name} produced no tokens for this prompt",
                              hint="Give a text to score, or a prompt the model continues.")
    logits = res.logits
    logits = logits.float().numpy() if hasattr(logits, "numpy") else np.asarray(logits, dtype=np.float32)
    if logits.ndim == 3:
        logits = logits[0]
    return logits, np.asarray(res.token_ids, dtype=np.int64), res, st


def save_logits(path: Path, logits: Any, tokens: Any, **meta: str) -> Path:
    """The ``.npz`` the probe (screen and ``--batch probe --logits``) opens: keys ``logits``, ``tokens`` (+ text
    metadata: model, prompt, text)."""
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, logits=np.asarray(logits, dtype=np.float32), tokens=np.asarray(tokens, dtype=np.int64),
             **{k: np.asarray(v) for k, v in meta.items() if v is not None})
    return path


class ProbeScreen(Screen):
    TITLE = "carl · probe"  # the header names the screen
    """The probe panel (mode key ``b``)."""

    DEFAULT_CSS = """
    ProbeScreen #probe-body { padding: 0 1; }
    ProbeScreen #probe-path-row { height: 3; }
    ProbeScreen #probe-path-label { width: auto; padding: 1 1 0 0; }
    ProbeScreen #probe-path { width: 1fr; }
    ProbeScreen #probe-prompt-row { height: 3; }
    ProbeScreen .probe-label { width: 13; padding: 1 1 0 0; }
    ProbeScreen #probe-prompt, ProbeScreen #probe-text { width: 1fr; }
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
                yield Static("Logits/model", id="probe-path-label")
                path = Input(value=str(logits or ctx.screen_args.get("model") or ""),
                             placeholder="a .npy/.npz/.safetensors file, or a model (RUN, RUN@N, path …)",
                             id="probe-path")
                path.cursor_blink = False
                yield path
            with Horizontal(id="probe-prompt-row"):
                yield Static("Prompt", classes="probe-label")
                prompt = Input(value=ctx.screen_args.get("prompt") or "", placeholder="a model's prompt",
                               id="probe-prompt")
                text = Input(value=ctx.screen_args.get("text") or "",
                             placeholder="text to score (empty: its greedy completion)", id="probe-text")
                prompt.cursor_blink = text.cursor_blink = False
                yield prompt
                yield text
            yield Static("Open a logits file ([T, V] or [B, T, V]), or name a model and a prompt, to see the "
                         "per-token Phi field. / enters the box, Tab the next, Enter measures.", id="probe-status")
            yield Static("Φ per token", classes="probe-title hidden", id="probe-strip-title")
            yield PhiStrip(id="probe-strip", classes="hidden")
            yield PhiPlot(SIGMA, id="probe-plot", classes="hidden")
            with Horizontal(id="probe-numbers", classes="hidden"):
                yield Static(id="probe-rewards")
                yield Static(id="probe-stats")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#probe-body").focus()  # `/` enters the path box; screen keys never type into it
        args = context_of(self).screen_args
        if self.take_request():
            return
        if args.get("logits") or (args.get("model") and args.get("prompt")):
            self.action_reload()

    def on_screen_resume(self) -> None:
        self.take_request()

    def take_request(self) -> bool:
        """Try's `P`: open the logits file it saved (the prompt and text boxes are emptied: a file needs none)."""
        ctx = context_of(self)
        request, ctx.probe_request = getattr(ctx, "probe_request", None), None
        if not request:
            return False
        self.query_one("#probe-path", Input).value = request["logits"]
        self.query_one("#probe-prompt", Input).value = ""
        self.query_one("#probe-text", Input).value = ""
        self.action_reload()
        return True

    # ── actions ──────────────────────────────────────────────────────────────────────────────────────
    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.query_one("#probe-body").focus()  # Enter measures and leaves the box: letters are screen keys again
        self.action_reload()

    def action_reload(self) -> None:
        raw = self.query_one("#probe-path", Input).value.strip()
        if not raw:
            self._show_error(CARLError("no logits file or model given", code="carl.validation",
                                       hint="Type the path of a .npy, .npz or .safetensors file, or a model name "
                                            "and a prompt, and press Enter."))
            return
        ctx = context_of(self)
        if not is_logits_file(raw, ctx.cwd):
            prompt = self.query_one("#probe-prompt", Input).value
            text = self.query_one("#probe-text", Input).value
            self._set_status(f"loading {raw} and {'scoring the text' if text else 'generating'} …")
            self._measure_model(raw, prompt, text or None, self.allow_masked, ctx)
            return
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

    @work(thread=True, exclusive=True, group="probe")
    def _measure_model(self, name: str, prompt: str, text: str | None, allow_masked: bool, ctx: Any) -> None:
        worker = get_current_worker()
        try:
            logits, toks, res, st = model_logits(name, prompt, text, home=ctx.home, cwd=ctx.cwd,
                                                 config_path=ctx.config_path)
            snap = CoherenceProbe(weights=st.weights).measure(logits, toks, allow_masked=allow_masked)
        except CARLError as exc:
            self.app.call_from_thread(self._show_error, exc)
            return
        except Exception as exc:  # a model that fails: shown inline rather than crashing the workbench
            self.app.call_from_thread(self._show_error, CARLError(f"internal error: {type(exc).__name__}: {exc}"))
            return
        if not worker.is_cancelled:
            label = res.ref.label or name
            what = "scored text" if text else "greedy completion"
            self.app.call_from_thread(self._show, snap, Path(label), st, f"{label} · {what} {res.text!r}")

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

    def _show(self, snap: Snapshot, path: Path, st: Any = None, source: str | None = None) -> None:
        self.error, self.snapshot = None, snap
        self.settings = st
        masked = " · masked −inf" if self.allow_masked else ""
        self._set_status(f"✓ {escape(source or path.name)}: {snap.n_tokens} tokens · V {snap.vocab_size}{masked}")
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
