"""Project screen: the carl.yaml in force — pick a preset when there is none, edit common fields, validate live,
preview the YAML, save atomically.

The file in force is ``ctx.config_path`` (``--config``), else ``ctx.cwd/carl.yaml``. Edits change only the
fields touched; everything else in the file is kept. Validation runs on every change with the same pydantic
models as ``carl --batch project validate``; errors show under their field and in the side panel with their
full path. ``ctrl+s`` saves (only when valid) through :func:`engine.config.save_config` (temp file + rename).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from rich.markup import escape
from rich.syntax import Syntax
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, OptionList, Select, Static, Switch
from textual.widgets.option_list import Option

from engine.config import (CONFIG_FILENAME, CascadeSection, Config, apply_overrides, check_dict, describe_error,
                           changed_fields, config_hash, parse_yaml_text, preset, preset_summaries, save_config)
from engine.errors import CARLError
from engine.ledger import record_nowait
from screens.context import context_of


@dataclass(frozen=True)
class FormField:
    path: str  # dotted path in carl.yaml
    label: str
    kind: str  # "str" | "int" | "float" | "bool" | "choice"
    choices: tuple[str, ...] = ()

    @property
    def widget_id(self) -> str:
        return "f-" + self.path.replace(".", "-").replace("_", "-")


FIELDS: tuple[FormField, ...] = (
    FormField("project.name", "Project name", "str"),
    FormField("model.name_or_path", "Model", "str"),
    FormField("dataset.source", "Dataset", "str"),
    FormField("grpo.max_steps", "Max steps", "int"),
    FormField("grpo.learning_rate", "Learning rate", "float"),
    FormField("grpo.batch_size", "Batch size", "int"),
    FormField("grpo.num_generations", "Generations", "int"),
    FormField("lora.enabled", "LoRA", "bool"),
    FormField("rewards.carl.enabled", "CARL reward", "bool"),
    FormField("cascade.mode", "Cascade mode", "choice",
              tuple(get_args(CascadeSection.model_fields["mode"].annotation))),
)

NARROW_WIDTH = 100  # below this the side panel goes under the form


def _get(data: Any, path: str) -> tuple[bool, Any]:
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if abs(value) >= 1e-3 or value == 0 else f"{value:g}"
    return str(value)


def parse_field(field: FormField, text: str) -> Any:
    """Text from an Input to the value carl.yaml gets; unparseable text is passed on as a string so the
    validator names it (``grpo.max_steps: … (got 'abc')``)."""
    text = text.strip()
    if field.kind == "int":
        try:
            return int(text)
        except ValueError:
            return text
    if field.kind == "float":
        try:
            return float(text)
        except ValueError:
            return text
    return text


class ProjectScreen(Screen):
    """carl.yaml: presets when there is none; a live-validated form, field errors and a YAML preview otherwise."""

    TITLE = "carl · project"  # the header names the screen
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+r", "reload", "Reload"),
        Binding("escape", "leave_field", "Leave field"),
    ]

    DEFAULT_CSS = """
    ProjectScreen #status { height: auto; padding: 0 1; background: $boost; }
    ProjectScreen #status.-invalid { color: $text-error; }
    ProjectScreen #status.-valid { color: $text-success; }
    ProjectScreen #presets-view { padding: 1 2; }
    ProjectScreen #presets-intro { margin-bottom: 1; }
    ProjectScreen #presets { height: auto; max-height: 12; }
    ProjectScreen #presets-help { margin-top: 1; color: $text-muted; }
    ProjectScreen #body { height: 1fr; }
    ProjectScreen #form { width: 1fr; padding: 0 1; }
    ProjectScreen #side { width: 1fr; padding: 0 1; border-left: vkey $primary-background; }
    ProjectScreen.-narrow #body { layout: vertical; overflow-y: auto; }
    ProjectScreen.-narrow #form, ProjectScreen.-narrow #side { width: 1fr; height: auto; overflow-y: hidden; }
    ProjectScreen.-narrow #side { border-left: none; border-top: hkey $primary-background; }
    ProjectScreen .row { height: 1; margin-bottom: 0; }
    ProjectScreen .row Label { width: 16; padding: 0 1 0 0; }
    ProjectScreen .row Input, ProjectScreen .row Select { width: 1fr; }
    ProjectScreen .row Switch { width: auto; height: 1; border: none; padding: 0; }
    ProjectScreen .row Switch:focus { background-tint: $foreground 10%; }
    ProjectScreen .row .switch-state { width: 4; height: 1; margin-left: 1; }
    ProjectScreen .row Input.-invalid { background: $error 20%; }
    ProjectScreen .field-error { color: $text-error; padding-left: 16; height: auto; }
    ProjectScreen #form-help { color: $text-muted; margin-top: 1; height: auto; }
    ProjectScreen .field-error.-empty { display: none; }
    ProjectScreen .heading { text-style: bold; color: $accent; margin-top: 1; }
    ProjectScreen #errors { height: auto; }
    ProjectScreen #preview { height: auto; }
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data: dict[str, Any] = {}  # the file as parsed, with the form's edits applied
        self._saved: dict[str, Any] | None = None  # what is on disk (None: no file / unparseable)
        self._errors: list[dict[str, Any]] = []
        self._config: Config | None = None
        self._yaml_error: str | None = None
        self._message = ""

    # ------------------------------------------------------------------------------------------ layout
    @property
    def path(self) -> Path:
        ctx = context_of(self)
        return Path(ctx.config_path) if ctx.config_path else Path(ctx.cwd) / CONFIG_FILENAME

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="status")
        with Vertical(id="presets-view"):
            yield Static("", id="presets-intro")
            yield OptionList(*[Option(f"[b]{escape(p['name'])}[/b]  {escape(p['description'])}", id=p["name"])
                               for p in preset_summaries()], id="presets")
            yield Static("↑/↓ choose a preset · Enter creates carl.yaml from it", id="presets-help")
        with Horizontal(id="body"):
            with VerticalScroll(id="form"):
                for field in FIELDS:
                    with Horizontal(classes="row"):
                        yield Label(field.label, id=f"label-{field.widget_id}")
                        yield self._widget(field)
                        if field.kind == "bool":  # the state in words: a switch alone reads the same under NO_COLOR
                            yield Static("", id=f"state-{field.widget_id}", classes="switch-state")
                    yield Static("", id=f"err-{field.widget_id}", classes="field-error -empty")
                yield Static("tab/shift+tab move · space toggles · enter opens a choice · ctrl+s saves · "
                             "esc leaves the field (then p t o c l switch screens)", id="form-help")
            with VerticalScroll(id="side"):
                yield Static("Problems", classes="heading")
                yield Static("", id="errors")
                yield Static("YAML preview", classes="heading")
                yield Static("", id="preview")
        yield Footer()

    def _widget(self, field: FormField) -> Any:
        if field.kind == "bool":
            return Switch(id=field.widget_id, animate=False)
        if field.kind == "choice":
            return Select([(c, c) for c in field.choices], id=field.widget_id, allow_blank=False,
                          value=field.choices[0], compact=True)
        widget = Input(id=field.widget_id, placeholder=field.path, compact=True)
        widget.cursor_blink = False
        return widget

    def on_mount(self) -> None:
        self._narrow(self.size.width or self.app.size.width)
        self.load()

    def on_resize(self, event: Any) -> None:
        self._narrow(event.size.width)

    def _narrow(self, width: int) -> None:
        self.set_class(width < NARROW_WIDTH, "-narrow")

    # ------------------------------------------------------------------------------------------ state
    def load(self) -> None:
        """(Re)read the file in force: presets when missing, the form otherwise."""
        path = self.path
        self._yaml_error = None
        self._message = ""
        if not path.is_file():
            self._saved = None
            self._show_presets(True)
            return
        self._show_presets(False)
        try:
            self._data = parse_yaml_text(path.read_text(encoding="utf-8"), source=str(path))
            self._saved = copy.deepcopy(self._data)
        except (CARLError, OSError) as exc:
            self._data, self._saved = {}, None
            self._yaml_error = exc.message if isinstance(exc, CARLError) else str(exc)
        self._fill_form()
        self._validate()

    def _show_presets(self, on: bool) -> None:
        self.query_one("#presets-view").display = on
        self.query_one("#body").display = not on
        self.refresh_bindings()
        if on:
            intro = (f"No {CONFIG_FILENAME} in {self.path.parent}.\nStart a project from a preset; you can "
                     "edit every field afterwards (here or in the file).")
            self.query_one("#presets-intro", Static).update(escape(intro))
            self._set_status(f"no {CONFIG_FILENAME}: choose a preset", None)
            self.query_one("#presets", OptionList).focus()
        else:
            self.query_one("#form").focus()  # tab enters the first field; screen keys never type into one

    def _fill_form(self) -> None:
        defaults = Config().model_dump(mode="json")
        for field in FIELDS:
            found, value = _get(self._data, field.path)
            if not found:
                value = _get(defaults, field.path)[1]
            widget = self.query_one(f"#{field.widget_id}")
            with widget.prevent(Input.Changed, Switch.Changed, Select.Changed):
                if isinstance(widget, Switch):
                    widget.value = bool(value)
                    self._show_switch(field.widget_id, bool(value))
                elif isinstance(widget, Select):
                    widget.value = value if value in field.choices else field.choices[0]
                else:
                    widget.value = _display(value)
                    widget.cursor_position = 0
            widget.disabled = self._yaml_error is not None

    def set_field(self, field: FormField, value: Any) -> None:
        """Apply one edit and re-validate (every change)."""
        if self.query_one("#presets-view").display or self._yaml_error is not None:
            return  # no form in force (widgets announce their initial values on mount)
        found, current = _get(self._data, field.path)
        if not found:
            current = _get(Config().model_dump(mode="json"), field.path)[1]
        if current == value and type(current) is type(value):
            return
        self._data = apply_overrides(self._data, [])  # a copy
        node = self._data
        parts = field.path.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
        self._message = ""
        self._validate()

    def _validate(self) -> None:
        if self._yaml_error is not None:
            self._config, self._errors = None, []
            self._set_status(f"✗ {self._yaml_error} — fix the file, then ctrl+r", False)
            self.query_one("#errors", Static).update(escape(self._yaml_error))
            try:
                raw = self.path.read_text(encoding="utf-8")
            except OSError:
                raw = ""
            self.query_one("#preview", Static).update(escape(raw))
            return
        self._config, self._errors = check_dict(self._data)
        shown = {f.path for f in FIELDS}
        per_field: dict[str, list[str]] = {}
        for err in self._errors:
            path = err["field"]
            if path in shown:
                per_field.setdefault(path, []).append(err["message"])
        for field in FIELDS:
            box = self.query_one(f"#err-{field.widget_id}", Static)
            msgs = per_field.get(field.path)
            box.update(escape("↳ " + "; ".join(msgs)) if msgs else "")
            box.set_class(not msgs, "-empty")
            self.query_one(f"#{field.widget_id}").set_class(bool(msgs), "-invalid")
        errors = self.query_one("#errors", Static)
        if self._errors:
            errors.update("\n".join(f"[b]{escape(e['field'])}[/b]: {escape(describe_error(e).split(': ', 1)[1])}"
                                    for e in self._errors))
        else:
            errors.update("none — the config is valid")
        preview = self._config.to_yaml() if self._config else yaml.safe_dump(self._data, sort_keys=False)
        self.query_one("#preview", Static).update(Syntax(preview.rstrip("\n"), "yaml", theme="ansi_dark",
                                                         background_color="default", word_wrap=True))
        self._refresh_status()

    def _refresh_status(self) -> None:
        dirty = self._saved is None or self._data != self._saved
        state = "unsaved changes" if dirty else "saved"
        if self._errors:
            n = len(self._errors)
            first = describe_error(self._errors[0])
            self._set_status(f"✗ {n} problem{'s' if n > 1 else ''} · {first} · {state}", False)
        else:
            extra = f" · {self._message}" if self._message else ""
            self._set_status(f"✓ valid · {self.path} · {state}{extra}", True)

    def _set_status(self, text: str, valid: bool | None) -> None:
        status = self.query_one("#status", Static)
        status.update(escape(text))
        status.set_class(valid is False, "-invalid")
        status.set_class(valid is True, "-valid")

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self._errors)

    # ------------------------------------------------------------------------------------------ events
    def _field_for(self, widget_id: str | None) -> FormField | None:
        return next((f for f in FIELDS if f.widget_id == widget_id), None)

    @on(Input.Changed)
    def _input_changed(self, event: Input.Changed) -> None:
        field = self._field_for(event.input.id)
        if field is not None:
            self.set_field(field, parse_field(field, event.value))

    @on(Switch.Changed)
    def _switch_changed(self, event: Switch.Changed) -> None:
        field = self._field_for(event.switch.id)
        self._show_switch(event.switch.id or "", bool(event.value))
        if field is not None:
            self.set_field(field, bool(event.value))

    def _show_switch(self, widget_id: str, on: bool) -> None:
        try:
            self.query_one(f"#state-{widget_id}", Static).update("ON" if on else "OFF")
        except Exception:  # no state label (not a form switch)
            pass

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        field = self._field_for(event.select.id)
        if event.value != event.select.value:
            return  # a stale event (e.g. the initial value announced on mount, after load set the real one)
        if field is not None and event.value is not Select.BLANK:
            self.set_field(field, event.value)

    @on(OptionList.OptionSelected, "#presets")
    def _preset_chosen(self, event: OptionList.OptionSelected) -> None:
        self.create_from_preset(str(event.option.id))

    def create_from_preset(self, name: str) -> None:
        path = self.path
        if path.exists():  # appeared meanwhile: never overwrite from here
            self.notify(f"{path} already exists; reloading it", severity="warning")
            self.load()
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            cfg = preset(name)
            save_config(cfg, path)
        except (CARLError, OSError) as exc:
            self.notify(str(exc), severity="error", title="cannot create carl.yaml")
            return
        self._signed(record_nowait("project.init", {"path": str(path.resolve()), "preset": name,
                                                    "project": cfg.project.name, "config_hash": config_hash(cfg),
                                                    "via": "tui"}, home=context_of(self).home),
                     "project.init")
        self.load()
        self._message = f"created from preset {name}"
        self._refresh_status()
        self._update_subtitle()

    class LedgerWriteFailed(Message):
        def __init__(self, action: str, text: str) -> None:
            super().__init__()
            self.action, self.text = action, text

    def _signed(self, fut, action: str) -> None:
        """A ledger write that fails on the writer thread is shown here (the ledger screen lists it too)."""

        def done(f) -> None:
            exc = None if f.cancelled() else f.exception()
            if exc is not None:  # post_message is thread-safe and never blocks the writer thread
                hint = getattr(exc, "hint", "") or ""
                self.post_message(self.LedgerWriteFailed(action, f"{getattr(exc, 'message', exc)}"
                                                                 + (f" — {hint}" if hint else "")))

        fut.add_done_callback(done)

    def on_project_screen_ledger_write_failed(self, event: "ProjectScreen.LedgerWriteFailed") -> None:
        self.notify(event.text, severity="error", title=f"{event.action} not recorded in the ledger",
                    timeout=10)

    def action_save(self) -> None:
        if self.query_one("#presets-view").display:
            self.notify("Choose a preset first (Enter).", severity="warning")
            return
        if self._yaml_error is not None or self._config is None:
            n = len(self._errors)
            self.notify(f"Not saved: {n or 'a'} problem{'s' if n != 1 else ''} to fix first.", severity="error")
            return
        try:
            save_config(self._config, self.path)
        except CARLError as exc:
            self.notify(exc.message, severity="error", title="not saved")
            return
        self._data = self._config.model_dump(mode="json")
        self._signed(record_nowait("project.change", {"path": str(self.path.resolve()),
                                                      "project": self._config.project.name,
                                                      "changed": changed_fields(self._saved, self._data),
                                                      "config_hash": config_hash(self._config), "via": "tui"},
                                   home=context_of(self).home),
                     "project.change")
        self._saved = copy.deepcopy(self._data)
        self._message = "written"
        self._refresh_status()
        self._update_subtitle()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Save and leave-field mean nothing on the preset list: hide them there (the footer follows)."""
        if action in ("save", "leave_field") and self.is_mounted:
            try:
                return not self.query_one("#presets-view").display
            except Exception:
                return True
        return True

    def action_leave_field(self) -> None:
        """Move focus off the field to its scroll container, so single-key screen switching works again."""
        if self.query_one("#body").display:
            self.query_one("#form").focus()

    def action_reload(self) -> None:
        self.load()

    def _update_subtitle(self) -> None:
        refresh = getattr(self.app, "refresh_subtitle", None)
        if callable(refresh) and self._config is not None:
            refresh(self._config.project.name)
