"""The project screen, driven by keys through Textual's pilot: presets → carl.yaml, live validation, save rules,
single-key navigation of the shell; plus doctor's stored-token check (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from carl_tui.app import CarlApp
from engine.config import Config, preset, save_config
from engine.home import CarlHome
from screens.context import WorkbenchContext
from screens.project import FIELDS, ProjectScreen, parse_field

pytestmark = pytest.mark.anyio


def make_app(cwd: Path, config_path: Path | None = None) -> CarlApp:
    return CarlApp(ctx=WorkbenchContext(home=CarlHome(cwd / "home"), cwd=cwd, config_path=config_path),
                   screen="project")


async def test_preset_list_creates_carl_yaml_on_enter(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, ProjectScreen)
        assert screen.query_one("#presets-view").display and not screen.query_one("#body").display
        await pilot.press("down", "down", "enter")  # tiny-cpu → lora-7b → full-gpu
        await pilot.pause()
        data = yaml.safe_load((tmp_path / "carl.yaml").read_text())
        assert Config.model_validate(data) == preset("full-gpu")
        assert screen.query_one("#body").display and not screen.query_one("#presets-view").display
        assert "carl-full" in app.sub_title
        assert screen.query_one("#f-model-name-or-path").value == "Qwen/Qwen2.5-1.5B-Instruct"


async def test_live_validation_blocks_save_until_fixed(tmp_path):
    save_config(Config(), tmp_path / "carl.yaml")
    before = (tmp_path / "carl.yaml").read_text()
    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert screen.errors == []
        await pilot.press(*["tab"] * 6, "end", "backspace", "0")  # into the form, then batch_size 32 → 30
        await pilot.pause()
        assert [e["field"] for e in screen.errors] == ["grpo.batch_size"]
        assert "num_generations" in str(screen.query_one("#err-f-grpo-batch-size").render())
        assert "grpo.batch_size" in str(screen.query_one("#errors").render())
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert (tmp_path / "carl.yaml").read_text() == before  # invalid: not written
        await pilot.press("backspace", "2")  # 32 again
        await pilot.pause()
        assert screen.errors == []
        await pilot.press("shift+tab", "shift+tab", "end", "backspace", "backspace", "7", "7")  # max_steps 77
        await pilot.pause()
        assert "unsaved" in str(screen.query_one("#status").render())
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = yaml.safe_load((tmp_path / "carl.yaml").read_text())
        assert saved["grpo"]["max_steps"] == 77 and saved["grpo"]["batch_size"] == 32
        assert "saved" in str(screen.query_one("#status").render())


async def test_switches_select_and_text_fields_edit_the_file(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    (path).write_text("project:\n  name: keepme\n  description: kept\ngrpo:\n  seed: 7\n")
    app = make_app(tmp_path, config_path=path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        screen = app.screen
        await pilot.press("tab", "end", *["backspace"] * 2, "n", "e", "w")  # into project.name: keepme → keepnew
        await pilot.press(*["tab"] * 7, "space")  # → LoRA switch on
        await pilot.press("tab", "space")  # → CARL reward off
        await pilot.press("tab", "enter", "up", "up", "enter")  # cascade.mode evidence → fixed
        await pilot.pause()
        assert screen.errors == []
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = yaml.safe_load(path.read_text())
        assert saved["project"] == {"name": "keepnew", "description": "kept"}
        assert saved["lora"]["enabled"] is True and saved["rewards"]["carl"]["enabled"] is False
        assert saved["cascade"]["mode"] == "fixed" and saved["grpo"]["seed"] == 7  # untouched fields kept
        assert not (tmp_path / "carl.yaml").exists()
        assert "keepnew" in app.sub_title


async def test_invalid_file_on_disk_shows_all_errors_and_yaml_errors_disable_the_form(tmp_path):
    path = tmp_path / "carl.yaml"
    path.write_text("grpo:\n  max_steps: 0\nlora:\n  r: -2\nbogus: 1\n")
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert {e["field"] for e in screen.errors} == {"grpo.max_steps", "lora.r", "bogus"}
        assert "Input should be greater than or equal to 1" in str(screen.query_one("#err-f-grpo-max-steps").render())
        path.write_text("grpo: [1,\n")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert "line" in str(screen.query_one("#status").render())
        assert screen.query_one("#f-project-name").disabled
        await pilot.press("ctrl+s")  # nothing to save: the file is left as it is
        await pilot.pause()
        assert path.read_text() == "grpo: [1,\n"


async def test_single_keys_switch_screens_after_leaving_a_field(tmp_path):
    save_config(Config(), tmp_path / "carl.yaml")
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        name = app.screen.query_one("#f-project-name").value
        assert name == "carl-demo"
        await pilot.press("t")  # no field is entered on arrival: t is the train screen, never a letter in a field
        await pilot.pause()
        assert app.current_mode == "train" and app.screen_stack[0] is not None
        await pilot.press("p", "tab", "t")  # tab enters the first field: now t is typed there
        await pilot.pause()
        assert app.current_mode == "project"
        assert app.screen.query_one("#f-project-name").value in (name + "t", "t")  # (tab selects the text)
        await pilot.press("escape", "t")  # Esc leaves the field; the other screens' own tests cover their keys
        await pilot.pause()
        assert app.current_mode == "train"


def test_parse_field_passes_unparseable_text_to_the_validator():
    by_path = {f.path: f for f in FIELDS}
    assert parse_field(by_path["grpo.max_steps"], " 12 ") == 12
    assert parse_field(by_path["grpo.max_steps"], "1.5") == "1.5"
    assert parse_field(by_path["grpo.learning_rate"], "1e-5") == 1e-5
    assert parse_field(by_path["project.name"], "x") == "x"


def test_doctor_reads_hf_stored_token_masked(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from engine.doctor import check_credentials

    token = "hf_" + "StoredTokenValue" * 2 + "lmno"
    (tmp_path / "token").write_text(token + "\n")
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "token"))
    hf = {c.name: c for c in check_credentials()}["credential.huggingface"]
    assert hf.status == "ok" and token not in hf.detail
    assert hf.detail.startswith(f"set (hf_…lmno, {len(token)} chars) from stored token")
