"""The try panel: type a prompt, watch the completion stream in with every token shaded by its Phi.

Each generated token is drawn on a background from dark (Φ 0, the model guessed) to bright (Φ 1, it knew), with a
second line of block glyphs ``▁▂▃▄▅▆▇█`` under it so the field reads without colour (NO_COLOR). A cursor
(←/→, Home/End) on a token shows its numbers: Φ, entropy (nats), the probability of the chosen token, its id. The
sequence's CARL reward components sit under the tokens. ``c`` sets a second model (another checkpoint, run or
path) and the same prompt then runs on both, side by side, with one cursor for both.

``b`` runs best-of-N on model A (engine.bestof; N cycles 4 → 8 → 16 with ``n``, the selection through
engine.bestof.SELECTIONS with ``s``; default 8 by ``logprob``): N sampled candidates (seeds seed, seed+1 …,
sampling even when the panel is greedy), listed beside the tokens with every score, the chosen one marked ▶;
pane A then shows the chosen candidate's tokens. Enter goes back to a single generation.

Generation runs in a worker thread (engine.infer: the model is loaded once and kept warm) and posts one message per
token; Esc cancels between two tokens. Models are named as in :func:`engine.infer.parse_spec`: ``run:RUN``, a run
id prefix, a path, a Hub id, ``builtin:tiny``, or ``BASE + ADAPTER``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Header, Input, Static

from engine.bestof import DEFAULT_SELECT, SELECTIONS
from engine.errors import CARLError
from engine.infer import InferResult, ModelRef, Sampling, TokenStep
from screens.context import context_of
from screens.widgets.phi_strip import glyph, phi_color

DEFAULT_MAX_NEW_TOKENS = 32
BEST_OF_NS = (4, 8, 16)
DEFAULT_BEST_OF = 8


def fit_label(label: str, width: int) -> str:
    """``label`` cut from the LEFT to ``width`` cells (``…`` + the tail): two checkpoints of one run differ at the
    end (``RUN/checkpoint-20`` vs ``RUN/final``), so the tail is what must stay visible."""
    if width <= 0:
        return ""
    if cell_len(label) <= width:
        return label
    if width == 1:
        return "…"
    tail = ""
    for ch in reversed(label):
        if cell_len(tail) + cell_len(ch) > width - 1:
            break
        tail = ch + tail
    return "…" + tail


def token_label(token: str) -> str:
    """How one token's text shows in a cell: newlines ⏎, tabs ⇥, all-space tokens ␣, empty pieces ∅."""
    if token == "":
        return "∅"
    t = token.replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")
    if not t.strip():
        return "␣" * len(t) if t else "⏎"
    return "".join(c if c.isprintable() else "·" for c in t)


def _ink(bg: Color) -> Color:
    """Black or white text, whichever reads on ``bg``."""
    r, g, b = bg.get_truecolor()
    return Color.from_rgb(0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else Color.from_rgb(255, 255, 255)


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None or v != v else format(v, spec)


# ----------------------------------------------------------------------------------------------------------
# The token field
# ----------------------------------------------------------------------------------------------------------

class TokenView(Widget, can_focus=True):
    """Tokens wrapped over rows; each row of tokens is followed by a row of Phi glyphs under them."""

    DEFAULT_CSS = """
    TokenView { height: auto; min-height: 2; width: 1fr; }
    TokenView:focus { background: $boost; }
    """
    BINDINGS = [
        Binding("left", "move(-1)", "◀ token", show=False),
        Binding("right", "move(1)", "token ▶", show=False),
        Binding("home", "move_to(0)", "First", show=False),
        Binding("end", "move_to(-1)", "Last", show=False),
    ]

    cursor: reactive[int] = reactive(-1)

    class CursorMoved(Message):
        def __init__(self, view: "TokenView", index: int) -> None:
            super().__init__()
            self.view, self.index = view, index

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.steps: list[TokenStep] = []
        self.placeholder = ""

    # ---- data
    def clear(self, placeholder: str = "") -> None:
        self.steps = []
        self.placeholder = placeholder
        self.cursor = -1
        self.refresh(layout=True)

    def append(self, step: TokenStep) -> None:
        self.steps.append(step)
        self.cursor = len(self.steps) - 1  # follow the newest token while streaming
        self.refresh(layout=True)

    def set_placeholder(self, text: str) -> None:
        self.placeholder = text
        self.refresh(layout=True)

    @property
    def current(self) -> TokenStep | None:
        return self.steps[self.cursor] if 0 <= self.cursor < len(self.steps) else None

    # ---- keys
    def action_move(self, delta: int) -> None:
        if self.steps:
            self.set_cursor(max(0, min(len(self.steps) - 1, (self.cursor if self.cursor >= 0 else 0) + delta)))

    def action_move_to(self, index: int) -> None:
        if self.steps:
            self.set_cursor(index % len(self.steps))

    def set_cursor(self, index: int) -> None:
        self.cursor = index
        self.post_message(self.CursorMoved(self, index))

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh()

    # ---- layout
    def _rows(self, width: int) -> list[list[tuple[int, str]]]:
        width = max(2, width)
        rows: list[list[tuple[int, str]]] = [[]]
        x = 0
        for i, step in enumerate(self.steps):
            label = token_label(step.token)
            if cell_len(label) > width:
                label = Text(label).truncate(width, overflow="ellipsis") or label[:width]
                label = str(label)
            w = cell_len(label)
            if x and x + w > width:
                rows.append([])
                x = 0
            rows[-1].append((i, label))
            x += w + 1
        return rows

    def get_content_height(self, container: Any, viewport: Any, width: int) -> int:  # type: ignore[override]
        if not self.steps:
            return 2
        return 2 * len(self._rows(width))

    def render(self) -> Text:
        width = self.content_size.width or self.size.width
        if not self.steps:
            return Text(self.placeholder or " ", style="dim")
        out = Text(no_wrap=True, overflow="crop")
        rows = self._rows(width)
        for r, row in enumerate(rows):
            for i, label in row:
                phi = self.steps[i].phi
                bg = phi_color(phi)
                style = Style(bgcolor=bg, color=_ink(bg))
                if i == self.cursor:  # the shade stays; the cursor is underlined here, inverted in the glyph row
                    style += Style(bold=True, underline=True)
                out.append(label, style)
                out.append(" ")
            out.append("\n")
            for i, label in row:
                g = glyph(self.steps[i].phi) * cell_len(label)
                out.append(g, Style(color=phi_color(self.steps[i].phi), reverse=i == self.cursor))
                out.append(" ")
            if r < len(rows) - 1:
                out.append("\n")
        return out


def token_details(step: TokenStep | None, total: int) -> Text:
    """Two lines on the token under the cursor: which token, then its numbers."""
    if step is None:
        return Text(" \n ", style="dim")
    t = Text()
    t.append(f"▸ token {step.index + 1}/{total} ", style="bold")
    t.append(f"{step.token!r} · id {step.token_id}\n")
    t.append(f"Φ {step.phi:.3f}", style="bold")
    t.append(f" · H {step.entropy:.3f} nats · p {step.selected_prob:.3f}")
    return t


def rewards_line(result: InferResult | None, steps: list[TokenStep]) -> Text:
    """Two lines on the whole sequence: CARL, mean Phi, how it ended; then the three components."""
    if result is None:
        if not steps:
            return Text(" \n ")
        mean = sum(s.phi for s in steps) / len(steps)
        return Text(f"Φ mean {mean:.3f} over {len(steps)} tokens …\n ", style="dim")
    r, s = result.rewards, result.summary()
    t = Text()
    t.append(f"CARL {r['carl']:.3f}", style="bold")
    t.append(f" · Φ mean {_fmt(s['phi_mean'])} · {result.finish_reason}\n")
    t.append(f"coh {r['coherence']:.3f} cloud {r['cloud']:.3f} disc {r['discontinuity']:.3f}", style="dim")
    return t


def legend(no_color: bool) -> Text:
    t = Text()
    t.append("Φ 0 ", style="dim")
    for k in range(8):
        v = (k + 0.5) / 8
        if no_color:
            t.append(glyph(v))
        else:
            t.append(glyph(v), Style(color=phi_color(v)))
    if not no_color:
        t.append(" ")
        for v in (0.0, 0.25, 0.5, 0.75, 1.0):
            t.append("  ", Style(bgcolor=phi_color(v)))
    t.append(" Φ 1", style="dim")
    t.append(" · low Φ = guessing, high Φ = knowing", style="dim")
    return t


def candidates_table(cands: list[Any], chosen: int | None, select: str) -> Table:
    """The best-of-N candidates: answer and every score; the chosen row marked ▶ and bold, the column of the
    selection that chose it underlined."""
    table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, expand=True, header_style="dim")
    key_of = {"logp": "logprob", "Φ": "phi", "CARL": "carl", "vote": "majority"}  # borda/deepconf/SC: docs/infer.md
    num = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731  (an empty candidate has no score)
    for name, width in (("", 1), ("#", 2), ("answer", None), ("logp", 5), ("Φ", 5), ("CARL", 5), ("vote", 4)):
        hs = "bold underline" if key_of.get(name) == select else "dim"
        table.add_column(Text(name, style=hs), justify="left" if name in ("", "answer") else "right",
                         no_wrap=True, overflow="ellipsis", ratio=1 if width is None else None,
                         min_width=6 if width is None else width)
    for c in cands:
        mine = c.index == chosen
        sc = c.scores
        row = [Text("▶" if mine else " "), str(c.index), Text(token_label(c.answer) if c.answer else "∅"),
               num(sc['logprob'], ".2f"), num(sc['phi'], ".3f"), num(sc['carl'], ".3f"), num(sc['votes'], ".0f")]
        table.add_row(*row, style="bold" if mine else None)
    return table


# ----------------------------------------------------------------------------------------------------------
# Messages from the worker
# ----------------------------------------------------------------------------------------------------------

@dataclass
class _Run:
    gen: int
    pane: int


class TryScreen(Screen):
    TITLE = "carl · try"  # the header names the screen
    """The try panel (mode key ``y``)."""

    DEFAULT_CSS = """
    TryScreen #try-body { padding: 0 1; height: 1fr; }
    TryScreen .try-row { height: 3; }
    TryScreen .try-label { width: 9; padding: 1 1 0 0; }
    TryScreen #try-prompt, TryScreen #try-model-input { width: 1fr; }
    TryScreen #try-model-row.hidden { display: none; }
    TryScreen #try-models { height: 1; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    TryScreen #try-status { height: 1; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis; }
    TryScreen #try-status.error { color: $error; }
    TryScreen #try-panes { height: 1fr; }
    TryScreen .try-pane { width: 1fr; height: 1fr; border: round $panel; padding: 0 1; }
    TryScreen .try-pane:focus-within { border: round $accent; }
    TryScreen .try-pane.hidden { display: none; }
    TryScreen .try-title { height: 1; color: $accent; text-style: bold; text-wrap: nowrap;
                           text-overflow: ellipsis; }
    TryScreen .try-tokens { height: auto; max-height: 1fr; overflow-y: auto; }
    TryScreen .try-detail { height: auto; }
    TryScreen .try-rewards { height: auto; }
    TryScreen #try-legend { height: 1; }
    TryScreen #try-pane-best { width: 1fr; height: 1fr; border: round $panel; padding: 0 1; }
    TryScreen #try-pane-best.hidden { display: none; }
    TryScreen #try-best-table { height: auto; max-height: 1fr; overflow-y: auto; }
    """

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("m", "set_model(0)", "Model"),
        # v (versus) and a (all N): c and b are the chat and probe screens' keys, and stay so here
        Binding("v", "set_model(1)", "Compare"),
        Binding("g", "toggle_greedy", "Sampling"),  # greedy ⇄ sample (short: the footer fits at 80)
        Binding("ctrl+r", "generate", "Run again"),
        # pane A's logits → CARL_HOME/probe/*.npz → the probe; the done line says "P probe" (the footer is full at 80)
        Binding("P", "probe_completion", "Probe it", show=False),
        Binding("a", "best_of", "Best-of", show=False),  # the models line says "a best-of N by …"
        Binding("n", "cycle_best_n", "Best-of N", show=False),
        Binding("s", "cycle_select", "Best-of selection", show=False),
        Binding("slash", "focus_prompt", "Prompt", show=False),  # the status line says "/ …": the footer fits at 80
        Binding("enter", "focus_prompt", "Prompt", show=False),
    ]

    class Token(Message):
        def __init__(self, run: _Run, step: TokenStep) -> None:
            super().__init__()
            self.run, self.step = run, step

    class Done(Message):
        def __init__(self, run: _Run, result: InferResult | None, error: CARLError | None = None) -> None:
            super().__init__()
            self.run, self.result, self.error = run, result, error

    class Status(Message):
        def __init__(self, run: _Run, text: str) -> None:
            super().__init__()
            self.run, self.text = run, text

    class BestDone(Message):
        def __init__(self, gen: int, results: list[InferResult], cands: list[Any], chosen: int | None, n: int,
                     select: str, error: CARLError | None = None) -> None:
            super().__init__()
            self.gen, self.results, self.cands, self.chosen = gen, results, cands, chosen
            self.n, self.select, self.error = n, select, error

    def __init__(self, model: str | None = None, *, adapter: str | None = None, run: str | None = None,
                 compare: str | None = None, prompt: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, greedy: bool = True, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, autostart: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self._init = {"model": model, "adapter": adapter, "run": run, "compare": compare, "prompt": prompt}
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=greedy,
                                 seed=seed)
        self.autostart = autostart
        self.specs: list[str | None] = [None, None]
        self.refs: list[ModelRef | None] = [None, None]
        self.results: list[InferResult | None] = [None, None]
        self._gen = 0
        self._cancel = threading.Event()
        self._generating = False
        self._editing: int | None = None
        self.best_n, self.best_select = DEFAULT_BEST_OF, DEFAULT_SELECT
        self.best: dict[str, Any] | None = None  # the last best-of-N: results, candidates, chosen, n, select
        self._best_mode = False  # pane A shows the chosen candidate, the candidates pane is up

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="try-body"):
            with Horizontal(classes="try-row"):
                yield Static("Prompt", classes="try-label")
                prompt = Input(placeholder="type a prompt, Enter generates", id="try-prompt")
                prompt.cursor_blink = False
                yield prompt
            with Horizontal(classes="try-row hidden", id="try-model-row"):
                yield Static("Model", classes="try-label", id="try-model-label")
                model = Input(placeholder="run:RUN · run id · path · Hub id · builtin:tiny · BASE + ADAPTER",
                              id="try-model-input")
                model.cursor_blink = False
                yield model
            yield Static(id="try-models")
            yield Static(" ", id="try-status")
            with Horizontal(id="try-panes"):
                for i, name in enumerate("AB"):
                    with Vertical(classes="try-pane" + (" hidden" if i else ""), id=f"try-pane-{i}"):
                        yield Static(name, classes="try-title", id=f"try-title-{i}")
                        yield TokenView(id=f"try-view-{i}", classes="try-tokens")
                        yield Static(" ", classes="try-detail", id=f"try-detail-{i}")
                        yield Static(" ", classes="try-rewards", id=f"try-rewards-{i}")
                with Vertical(classes="hidden", id="try-pane-best"):
                    yield Static("best-of", classes="try-title", id="try-best-title")
                    yield Static(" ", id="try-best-table")
            yield Static(id="try-legend")
        yield Footer()

    def on_mount(self) -> None:
        args = context_of(self).screen_args
        for k in ("model", "adapter", "run", "compare", "prompt"):
            if self._init.get(k) is None and isinstance(args.get(k), str):
                self._init[k] = args[k]
        request = self._pop_request()
        if request:
            self._init.update(model=None, adapter=None, run=request["run"])
        self.query_one("#try-legend", Static).update(legend(bool(getattr(self.app, "no_color", False))))
        if self._init["prompt"]:
            self.query_one("#try-prompt", Input).value = self._init["prompt"]
        self.query_one("#try-view-0", TokenView).focus()  # `/` or Enter enters the prompt box, never a screen key
        self._show_models()
        self._resolve_initial(dict(self._init), context_of(self).home)

    def _pop_request(self) -> dict[str, Any] | None:
        ctx = context_of(self)
        request, ctx.try_request = getattr(ctx, "try_request", None), None
        return request

    def on_screen_resume(self) -> None:
        self.take_request()

    def take_request(self) -> None:
        """Train's `y` on a run: pane A becomes that run's model (the prompt and pane B stay)."""
        request = self._pop_request()
        if request:
            self._resolve_initial({"run": request["run"], "prompt": None}, context_of(self).home)

    # ---- model choice
    @work(thread=True, exclusive=True, group="try-resolve")
    def _resolve_initial(self, init: dict[str, Any], home: Any) -> None:
        from engine import infer

        refs: list[ModelRef | None] = [None, None]
        specs: list[str | None] = [None, None]
        error: CARLError | None = None
        try:
            if init.get("run") or init.get("model"):
                refs[0] = infer.resolve(init.get("model"), adapter=init.get("adapter"), run=init.get("run"),
                                        home=home)
                specs[0] = f"run:{init['run']}" if init.get("run") else init.get("model")
            else:
                latest = _latest_run_with_model(home)
                if latest:
                    refs[0], specs[0] = infer.resolve(run=latest, home=home), f"run:{latest}"
            if init.get("compare"):
                refs[1], specs[1] = infer.parse_spec(init["compare"], home=home), init["compare"]
        except CARLError as exc:
            error = exc
        self.app.call_from_thread(self._models_resolved, refs, specs, error, bool(init.get("prompt")))

    def _models_resolved(self, refs: list[ModelRef | None], specs: list[str | None], error: CARLError | None,
                         start: bool) -> None:
        for i in range(2):
            if refs[i] is not None:
                self.refs[i], self.specs[i] = refs[i], specs[i]
        self._show_models()
        if error is not None:
            self._set_status(f"{error.code}: {error.message} — {error.hint}", error=True)
        elif self.refs[0] is None:
            self._set_status("No model yet: press m and name one (run:RUN, a path, a Hub id or builtin:tiny).")
        else:
            self._set_status("Press / to type a prompt, then Enter.")
            if start and self.autostart:
                self.action_generate()

    def _show_models(self) -> None:
        s = self.sampling
        mode = "greedy" if s.is_greedy else f"sampling T {s.temperature:g} · top-p {s.top_p:g} · seed {s.seed}"
        labels = [(r.label if r else "no model (m)") for r in self.refs]
        compare = "" if self.refs[1] is not None else " · v compare"
        best = f" · a best-of {self.best_n} by {self.best_select}"
        self.query_one("#try-models", Static).update(f"{mode} · ≤{s.max_new_tokens} new tokens{compare}{best}")
        self._labels = labels
        self._fit_titles()
        self.query_one("#try-pane-1").set_class(self.refs[1] is None or self._best_mode, "hidden")
        self.query_one("#try-pane-best").set_class(not self._best_mode, "hidden")
        self.call_after_refresh(self._fit_titles)  # pane B shown or hidden changes the titles' width

    def _fit_titles(self) -> None:
        """Pane titles ``A · LABEL`` cut from the left to the pane's width, so the differing tail stays visible."""
        labels = getattr(self, "_labels", None) or ["", ""]
        for i in range(2):
            title = self.query_one(f"#try-title-{i}", Static)
            # before the first layout the pane's width is unknown: the screen's share of it
            width = title.size.width or max(10, (self.size.width or 80) // (1 if self.refs[1] is None else 2) - 4)
            title.update(Text(f"{'AB'[i]} · {fit_label(labels[i], width - 4)}"))

    def on_resize(self) -> None:
        self.call_after_refresh(self._fit_titles)

    def action_set_model(self, pane: int) -> None:
        self._editing = pane
        row = self.query_one("#try-model-row")
        row.remove_class("hidden")
        self.query_one("#try-model-label", Static).update("Model A" if pane == 0 else "Compare")
        box = self.query_one("#try-model-input", Input)
        box.value = self.specs[pane] or ""
        box.placeholder = ("run:RUN · run id · path · Hub id · builtin:tiny · BASE + ADAPTER" if pane == 0 else
                           "second model (run:RUN, path …); empty = no comparison")
        box.focus()

    @on(Input.Submitted, "#try-model-input")
    def _model_submitted(self, event: Input.Submitted) -> None:
        pane = self._editing if self._editing is not None else 0
        text = event.value.strip()
        self._close_model_row()
        if not text:
            if pane == 1:
                self.refs[1], self.specs[1], self.results[1] = None, None, None
                self._show_models()
                self._set_status("Comparison off.")
            return
        self._set_status(f"resolving {text} …")
        self._resolve_spec(pane, text, context_of(self).home)

    @work(thread=True, exclusive=True, group="try-resolve")
    def _resolve_spec(self, pane: int, text: str, home: Any) -> None:
        from engine import infer

        try:
            ref = infer.parse_spec(text, home=home)
        except CARLError as exc:
            self.app.call_from_thread(self._set_status, f"{exc.code}: {exc.message} — {exc.hint}", True)
            return
        self.app.call_from_thread(self._model_set, pane, text, ref)

    def _model_set(self, pane: int, text: str, ref: ModelRef) -> None:
        self.refs[pane], self.specs[pane], self.results[pane] = ref, text, None
        view = self.query_one(f"#try-view-{pane}", TokenView)
        view.clear()
        self._update_pane(pane)
        self._show_models()
        if self.query_one("#try-prompt", Input).value.strip():
            self.action_generate()
        else:
            self._set_status(f"{'AB'[pane]} = {ref.label}. Press / to type a prompt, then Enter.")

    def _close_model_row(self) -> None:
        self._editing = None
        self.query_one("#try-model-row").add_class("hidden")
        self.query_one("#try-view-0", TokenView).focus()

    # ---- generation
    @on(Input.Submitted, "#try-prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        self.action_generate()

    def _ready_prompt(self) -> str | None:
        """The prompt, when there is a model and a prompt to run; else None, with the status saying what is missing."""
        prompt = self.query_one("#try-prompt", Input).value
        if self.refs[0] is None:
            self._set_status("No model yet: press m and name one (run:RUN, a path, a Hub id or builtin:tiny).",
                             error=True)
            return None
        if not prompt.strip():
            self._set_status("Type a prompt first (/ enters the box).", error=True)
            return None
        return prompt

    def action_generate(self) -> None:
        prompt = self._ready_prompt()
        if prompt is None:
            return
        self._cancel.set()  # a stale generation stops at its next token
        self._cancel = threading.Event()
        self._gen += 1
        self._generating = True
        if self._best_mode:  # back to a single generation (and the compare pane, if any)
            self._best_mode = False
            self._show_models()
        panes = [i for i in range(2) if self.refs[i] is not None]
        for i in panes:
            self.results[i] = None
            self.query_one(f"#try-view-{i}", TokenView).clear("waiting …")
            self._update_pane(i)
        self._set_status("generating … (esc cancels)")
        self._generate(self._gen, prompt, [(i, self.refs[i]) for i in panes], self.sampling, self._cancel)

    @work(thread=True, exclusive=True, group="try-generate")
    def _generate(self, gen: int, prompt: str, jobs: list[tuple[int, ModelRef]], sampling: Sampling,
                  cancel: threading.Event) -> None:
        from engine import infer

        for pane, ref in jobs:
            run = _Run(gen, pane)
            if cancel.is_set():
                self.post_message(self.Done(run, None, CARLError("cancelled before it started",
                                                                 code="carl.interrupted", hint="Press Enter to run.")))
                continue
            try:
                self.post_message(self.Status(run, f"loading {ref.label} …"))
                ctx = context_of(self)  # the run's (or the project's) CARL weights and prompt format
                st = infer.settings_for(ref, config_path=ctx.config_path, cwd=ctx.cwd, home=ctx.home)
                lm = infer.load(ref)
                self.post_message(self.Status(run, "generating … (esc cancels)"))
                stream = lm.stream(prompt, sampling, cancel=cancel, fmt=st.prompt_format(), weights=st.weights)
                for step in stream:
                    self.post_message(self.Token(run, step))
                self.post_message(self.Done(run, stream.result))
            except CARLError as exc:
                self.post_message(self.Done(run, None, exc))
            except Exception as exc:  # a model that fails mid-generation: say so in the pane, keep the app
                self.post_message(self.Done(run, None, CARLError(f"{type(exc).__name__}: {exc}")))

    def on_try_screen_token(self, message: "TryScreen.Token") -> None:
        if message.run.gen != self._gen:
            return
        view = self.query_one(f"#try-view-{message.run.pane}", TokenView)
        view.append(message.step)
        self._sync_cursor(message.run.pane, view.cursor)

    def on_try_screen_status(self, message: "TryScreen.Status") -> None:
        if message.run.gen == self._gen:
            self.query_one(f"#try-view-{message.run.pane}", TokenView).set_placeholder(message.text)
            if self._generating:
                self._set_status(f"{'AB'[message.run.pane]}: {message.text}")

    def on_try_screen_done(self, message: "TryScreen.Done") -> None:
        if message.run.gen != self._gen:
            return
        pane = message.run.pane
        view = self.query_one(f"#try-view-{pane}", TokenView)
        if message.error is not None:
            view.set_placeholder(f"{message.error.code}: {message.error.message}")
            self._set_status(f"{'AB'[pane]}: {message.error.code}: {message.error.message} — {message.error.hint}",
                             error=True)
        else:
            self.results[pane] = message.result
            self._update_pane(pane)
        last = max(i for i in range(2) if self.refs[i] is not None)
        if pane == last:
            self._generating = False
            done = [r for r in self.results if r is not None]
            if message.error is None and done:
                cancelled = any(r.finish_reason == "cancelled" for r in done)
                summary = " · ".join(f"{'AB'[i]} {len(r.token_ids)} tokens ({r.finish_reason})"
                                     for i, r in enumerate(self.results) if r is not None)
                self._set_status(("cancelled · " if cancelled else "done · ") + summary + " · ←/→ cursor · P probe it")
            if not isinstance(self.focused, Input) or self.focused.id == "try-prompt":
                view0 = self.query_one("#try-view-0", TokenView)
                if view0.steps:
                    view0.focus()

    # ---- probe
    def action_probe_completion(self) -> None:
        """P: pane A's completion, teacher-forced once more with ``keep_logits``, saved to ``CARL_HOME/probe/
        RUN-….npz`` (keys logits, tokens, model, prompt, text) and opened in the probe screen."""
        res, ref = self.results[0], self.refs[0]
        if res is None or ref is None or not res.token_ids or self._generating:
            self._set_status("Nothing to probe yet: run a prompt first (/ then Enter), then P.", error=True)
            return
        self._set_status("saving the completion's logits for the probe …")
        self._save_logits(ref, res, context_of(self))

    @work(thread=True, exclusive=True, group="try-probe")
    def _save_logits(self, ref: ModelRef, res: InferResult, ctx: Any) -> None:
        import re
        import time
        from pathlib import Path

        from engine import infer
        from screens.probe import save_logits

        try:
            st = infer.settings_for(ref, config_path=ctx.config_path, cwd=ctx.cwd, home=ctx.home)
            scored = infer.load(ref).score(res.prompt, token_ids=res.token_ids, keep_logits=True,
                                           fmt=st.prompt_format(), weights=st.weights)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", ref.label or "model").strip("_")[-60:] or "model"
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(ctx.clock() if ctx.clock else time.time()))
            path = Path(ctx.home.root) / "probe" / f"{name}-{stamp}.npz"
            save_logits(path, scored.logits.float().numpy(), scored.token_ids, model=ref.label or ref.model,
                        prompt=res.prompt, text=res.text)
        except CARLError as exc:
            self.app.call_from_thread(self._set_status, f"{exc.code}: {exc.message} — {exc.hint}", True)
            return
        except Exception as exc:  # noqa: BLE001 — shown in the status line, the workbench stays up
            self.app.call_from_thread(self._set_status, f"could not save the logits: {type(exc).__name__}: {exc}",
                                      True)
            return
        self.app.call_from_thread(self._probe_saved, path)

    def _probe_saved(self, path: Path) -> None:
        self.notify(f"logits saved to {path}", timeout=6)
        opener = getattr(self.app, "open_probe", None)
        if opener is not None:
            opener(str(path))

    # ---- best-of-N
    def action_cycle_best_n(self) -> None:
        i = BEST_OF_NS.index(self.best_n) if self.best_n in BEST_OF_NS else -1
        self.best_n = BEST_OF_NS[(i + 1) % len(BEST_OF_NS)]
        self._show_models()

    def action_cycle_select(self) -> None:
        self.best_select = SELECTIONS[(SELECTIONS.index(self.best_select) + 1) % len(SELECTIONS)]
        self._show_models()

    def best_sampling(self) -> Sampling:
        """Best-of-N samples (greedy would give N identical candidates): the panel's temperature and top-p, its
        seed (0 when none), candidate i with seed + i."""
        s = self.sampling
        return Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, greedy=False,
                        seed=s.seed if s.seed is not None else 0)

    def action_best_of(self) -> None:
        prompt = self._ready_prompt()
        if prompt is None:
            return
        self._cancel.set()
        self._cancel = threading.Event()
        self._gen += 1
        self._generating = True
        self._best_mode = True
        self.best = None
        self.results[0] = None
        self.query_one("#try-view-0", TokenView).clear("waiting …")
        self._update_pane(0)
        self.query_one("#try-best-title", Static).update(Text(f"best of {self.best_n} by {self.best_select}"))
        self.query_one("#try-best-table", Static).update(Text(" "))
        self._show_models()
        self._set_status(f"best-of {self.best_n}: sampling … (esc cancels)")
        self._best_of(self._gen, prompt, self.refs[0], self.best_n, self.best_select, self.best_sampling(),
                      self._cancel)

    @work(thread=True, exclusive=True, group="try-generate")
    def _best_of(self, gen: int, prompt: str, ref: ModelRef, n: int, select: str, sampling: Sampling,
                 cancel: threading.Event) -> None:
        from engine import infer
        from engine.bestof import generate_candidates

        run = _Run(gen, 0)
        try:
            self.post_message(self.Status(run, f"loading {ref.label} …"))
            ctx = context_of(self)
            st = infer.settings_for(ref, config_path=ctx.config_path, cwd=ctx.cwd, home=ctx.home)
            lm = infer.load(ref)
            progress = lambda i, r: self.post_message(  # noqa: E731
                self.Status(run, f"best-of {n}: candidate {i + 1}/{n} done (esc cancels)"))
            results, cands, chosen = generate_candidates(lm, prompt, n, select, sampling, weights=st.weights,
                                                         fmt=st.prompt_format(), cancel=cancel, progress=progress)
            self.post_message(self.BestDone(gen, results, cands, chosen, n, select))
        except CARLError as exc:
            self.post_message(self.BestDone(gen, [], [], None, n, select, exc))
        except Exception as exc:  # a model that fails mid-generation: say so, keep the app
            self.post_message(self.BestDone(gen, [], [], None, n, select, CARLError(f"{type(exc).__name__}: {exc}")))

    def on_try_screen_best_done(self, message: "TryScreen.BestDone") -> None:
        if message.gen != self._gen:
            return
        self._generating = False
        view = self.query_one("#try-view-0", TokenView)
        if message.error is not None:
            view.set_placeholder(f"{message.error.code}: {message.error.message}")
            self._set_status(f"best-of: {message.error.code}: {message.error.message} — {message.error.hint}",
                             error=True)
            return
        if message.chosen is None:
            view.set_placeholder("cancelled before the first candidate")
            self._set_status("cancelled · no candidate")
            return
        k = message.chosen
        self.best = {"results": message.results, "candidates": message.cands, "chosen": k, "n": message.n,
                     "select": message.select}
        chosen = message.results[k]
        view.clear()
        for step in chosen.steps:
            view.append(step)
        self.results[0] = chosen
        self._update_pane(0)
        done = len(message.cands)
        of = f"{done} of {message.n} (cancelled)" if done < message.n else f"{message.n}"
        seeds = [c.seed for c in message.cands]
        temp = self.best_sampling().temperature
        self.query_one("#try-best-title", Static).update(
            Text(f"best of {of} by {message.select} · seeds {seeds[0]}–{seeds[-1]} · T {temp:g}"))
        self.query_one("#try-best-table", Static).update(candidates_table(message.cands, k, message.select))
        self._set_status(f"best-of {of}: chosen #{k} by {message.select} ({message.cands[k].answer!r}) · "
                         f"←/→ move the cursor")
        view.focus()

    def action_cancel(self) -> None:
        if self._editing is not None:
            self._close_model_row()
            return
        if self._generating:
            self._cancel.set()  # the worker stops before its next token and reports what it has
            self._set_status("cancelling …")
            return
        prompt = self.query_one("#try-prompt", Input)
        if self.focused is prompt:
            self.query_one("#try-view-0", TokenView).focus()  # letters (m, c, g) act again
        elif len(self.app.screen_stack) > 1 and self.app.screen is self:
            self.app.pop_screen()  # pushed from another screen: back there

    def action_toggle_greedy(self) -> None:
        s = self.sampling
        self.sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                                 greedy=not s.greedy, seed=s.seed)
        self._show_models()

    def action_focus_prompt(self) -> None:
        self.query_one("#try-prompt", Input).focus()

    # ---- cursor and details
    @on(TokenView.CursorMoved)
    def _cursor_moved(self, event: TokenView.CursorMoved) -> None:
        pane = 0 if event.view.id == "try-view-0" else 1
        self._sync_cursor(pane, event.index)

    def _sync_cursor(self, pane: int, index: int) -> None:
        """One cursor for both panes: the other pane's cursor goes to the same position (when it has it)."""
        for i in range(2):
            view = self.query_one(f"#try-view-{i}", TokenView)
            if i != pane and view.steps and not self._generating:
                view.cursor = min(index, len(view.steps) - 1)
            self._update_detail(i)

    def _update_detail(self, pane: int) -> None:
        view = self.query_one(f"#try-view-{pane}", TokenView)
        self.query_one(f"#try-detail-{pane}", Static).update(token_details(view.current, len(view.steps)))
        self.query_one(f"#try-rewards-{pane}", Static).update(rewards_line(self.results[pane], view.steps))

    def _update_pane(self, pane: int) -> None:
        self._update_detail(pane)

    def _set_status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#try-status", Static)
        status.update(Text(text))
        status.set_class(error, "error")


def _latest_run_with_model(home: Any) -> str | None:
    """The newest run that has a model to try (its final/ or a checkpoint), or None."""
    from engine.infer import run_model_dir
    from engine.runs import RunStore

    store = RunStore(home)
    for run_id in reversed(store.ids()):
        try:
            run_model_dir(run_id, home)
            return run_id
        except CARLError:
            continue
    return None
