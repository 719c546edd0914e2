"""The try panel on the tiny model: snapshots at 80×24 and 120×40 (keys only, greedy so deterministic; a seeded
LoRA adapter as the second checkpoint for the side-by-side view; NO_COLOR keeps the glyph row), and pilot checks:
tokens arrive live from the worker, Esc cancels between two tokens, one cursor for both panes, inline errors."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import carl_tui.app as carl_app
from carl_tui.app import CarlApp
from engine import infer
from engine.home import CarlHome
from screens.context import WorkbenchContext
from screens.try_panel import TokenView, TryScreen, fit_label, token_label
from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: F401
from tests.test_infer import PROMPT, make_run, save_random_lora, tiny_path

SIZES = [(80, 24), (120, 40)]
BASE = "20250101-000000-base"
LORA = "20250101-000000-lora"
SHARP = "20250101-000000-sharp"


def save_sharpened(base: Path, out: Path, scale: float = 4.0) -> Path:
    """A checkpoint that is surer of the same answers: the final RMSNorm weight ×scale multiplies every logit by
    ``scale`` (same argmax, lower entropy, higher Phi) — a stand-in for a later checkpoint in the compare view."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        model.model.norm.weight.mul_(scale)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


class TryApp(CarlApp):
    """The workbench with the try panel pushed on top (what the "y" mode / palette entry opens)."""

    CSS_PATH = str(Path(carl_app.__file__).parent / "styles" / "app.tcss")

    def __init__(self, *, screen_kwargs: dict, **kwargs):
        super().__init__(**kwargs)
        self._try_kwargs = screen_kwargs

    def on_mount(self) -> None:
        super().on_mount()
        self.push_screen(TryScreen(**self._try_kwargs))


def make_app(root: Path, **screen_kwargs) -> TryApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: 1_700_000_000.0)
    return TryApp(ctx=ctx, screen="project", screen_kwargs=screen_kwargs)


@pytest.fixture
def runs(tiny_env, tmp_path_factory):  # noqa: F811
    """Runs in the current CARL_HOME: a completed full model, a sharper checkpoint of it, and a LoRA run (a seeded
    random adapter). Request it after ``snap_home`` (which moves CARL_HOME) in snapshot tests."""
    import os

    infer.clear_cache()
    tiny = tiny_path(tiny_env)
    home_runs = Path(os.environ["CARL_HOME"]) / "runs"
    make_run(home_runs, BASE, final=tiny, checkpoints={2: tiny})
    make_run(home_runs, LORA, final=save_random_lora(tiny, tmp_path_factory.mktemp("lora") / "adapter", seed=1))
    make_run(home_runs, SHARP, final=save_sharpened(tiny, tmp_path_factory.mktemp("sharp") / "model"))
    yield tiny
    infer.clear_cache()


async def settle(pilot) -> None:
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def keys(*groups):
    async def run_before(pilot) -> None:
        await settle(pilot)
        for g in groups:
            await pilot.press(*g)
            await settle(pilot)

    return run_before


GENERATE = (["slash", *PROMPT, "enter"],)  # `/` enters the prompt box (no box is focused on arrival)


# ── snapshots ─────────────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_try_panel_completion_shaded_with_cursor(snap_compare, snap_home, snap_env, runs, size):
    """Prompt typed, Enter: the completion with each token shaded by Phi, glyph row, cursor moved to token 1."""
    app = make_app(snap_home, run=BASE)
    assert snap_compare(app, run_before=keys(*GENERATE, ["left"]), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_try_panel_side_by_side_compare(snap_compare, snap_home, snap_env, runs, size):
    """c sets the second checkpoint and the same prompt runs on both, side by side: same text, brighter tokens."""
    app = make_app(snap_home, run=BASE)
    assert snap_compare(app, run_before=keys(*GENERATE, ["v", *f"run:{SHARP}", "enter"], ["home"]),
                        terminal_size=size)


BEST_OF = (["slash", *PROMPT, "escape"], ["a"])  # prompt typed, Esc to the tokens (letters are keys), a: best-of 8


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_try_panel_best_of_candidates(snap_compare, snap_home, snap_env, runs, size):
    """b: best-of-8 by logprob (seeds 0–7) — the 8 candidates with their scores, the chosen one marked ▶, pane A
    shows the chosen candidate's tokens."""
    app = make_app(snap_home, run=BASE)
    assert snap_compare(app, run_before=keys(*BEST_OF), terminal_size=size)


def test_try_panel_best_of_4_by_carl(snap_compare, snap_home, snap_env, runs):
    """n cycles N (8 → 16 → 4), s cycles the selection (logprob → majority → random → phi → carl)."""
    app = make_app(snap_home, run=BASE)
    assert snap_compare(app, run_before=keys(["slash", *PROMPT, "escape"], ["n", "n", "s", "s", "s", "s"], ["a"]),
                        terminal_size=(80, 24))


def test_try_panel_no_color_reads_through_glyphs(snap_compare, snap_home, snap_env, runs, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app = make_app(snap_home, run=LORA)
    assert snap_compare(app, run_before=keys(*GENERATE), terminal_size=(80, 24))


# ── behaviour (pilot) ─────────────────────────────────────────────────────────────────────────────────

def views(app) -> list[TokenView]:
    return [app.screen.query_one(f"#try-view-{i}", TokenView) for i in range(2)]


def status(app) -> str:
    return str(app.screen.query_one("#try-status").render())


@pytest.mark.anyio
async def test_tokens_arrive_live_and_esc_cancels(runs, tmp_path, monkeypatch):
    """The real model, slowed per forward pass so the UI can act mid-generation: the first token is on screen
    while the worker still runs, and Esc stops generation before the next token."""
    original = infer.LoadedModel._forward

    def slow_forward(self, *a, **kw):
        out = original(self, *a, **kw)
        time.sleep(0.4)
        return out

    monkeypatch.setattr(infer.LoadedModel, "_forward", slow_forward)
    app = make_app(tmp_path, run=LORA, max_new_tokens=20)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *PROMPT, "enter")
        view = views(app)[0]
        for _ in range(3000):  # model load + first forward, generous under load
            await asyncio.sleep(0.02)
            if view.steps:
                break
        assert len(view.steps) == 1 and app.screen._generating  # shown while the worker is still generating
        assert "generating" in status(app)
        await pilot.press("escape")
        await settle(pilot)
        result = app.screen.results[0]
        assert result is not None and result.finish_reason == "cancelled"
        assert len(result.token_ids) <= 2 and len(view.steps) == len(result.token_ids)
        assert status(app).startswith("cancelled")


@pytest.mark.anyio
async def test_cursor_moves_and_is_shared_by_both_panes(runs, tmp_path):
    app = make_app(tmp_path, run=BASE, compare=f"run:{LORA}")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *PROMPT, "enter")
        await settle(pilot)
        a, b = views(app)
        assert a.steps and b.steps and app.focused is a
        assert a.cursor == len(a.steps) - 1  # follows the newest token
        await pilot.press("home")
        assert a.cursor == 0 and b.cursor == 0
        await pilot.press("right")
        assert a.cursor == min(1, len(a.steps) - 1) and b.cursor == min(1, len(b.steps) - 1)
        detail = str(app.screen.query_one("#try-detail-0").render())
        step = a.steps[a.cursor]
        assert f"Φ {step.phi:.3f}" in detail and f"id {step.token_id}" in detail
        # the numbers are the engine's own for this prompt
        ref = infer.load(infer.resolve(run=BASE)).generate(PROMPT, infer.Sampling(max_new_tokens=32, greedy=True))
        assert [s.token_id for s in a.steps] == ref.token_ids
        assert [s.phi for s in a.steps] == pytest.approx(ref.phi)
        assert app.screen.results[0].rewards == pytest.approx(ref.rewards)


@pytest.mark.anyio
async def test_model_errors_show_inline_and_compare_can_be_turned_off(runs, tmp_path):
    app = make_app(tmp_path, run=BASE, compare=f"run:{LORA}")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("m")  # no box is entered on arrival: letters are keys; m opens the model box
        await settle(pilot)
        await pilot.press(*"/nonexistent/model", "enter")
        await settle(pilot)
        assert "carl.validation" in status(app) and "model path not found" in status(app)
        assert app.screen.refs[0].run_id == BASE  # unchanged
        await pilot.press("v")  # the box closed onto the tokens: letters are keys (Esc there would go back)
        await settle(pilot)
        await pilot.press("ctrl+u", "enter")  # an empty compare box turns comparison off
        await settle(pilot)
        assert app.screen.refs[1] is None
        assert app.screen.query_one("#try-pane-1").has_class("hidden")


@pytest.mark.anyio
async def test_defaults_to_the_newest_run_and_says_so_when_there_is_none(runs, tmp_path, monkeypatch):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.refs[0].run_id == SHARP  # the newest run id with a model
    monkeypatch.setenv("CARL_HOME", str(tmp_path / "empty-home"))
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.refs[0] is None and "No model yet" in status(app)
        await pilot.press("slash", *PROMPT, "enter")
        assert "No model yet" in status(app)


def test_token_labels_stay_visible():
    assert token_label("") == "∅" and token_label("\n") == "⏎" and token_label("  ") == "␣␣"
    assert token_label(" the") == " the" and token_label("a\tb") == "a⇥b"


@pytest.mark.anyio
async def test_a_runs_model_is_scored_with_the_runs_carl_weights(runs, tmp_path):
    """A run trained with custom rewards.carl.weights: the panel's CARL reward uses them, not the defaults."""
    import os

    import yaml

    skewed = {"coherence": 0.0, "cloud": 1.0, "discontinuity": 0.0}
    d = Path(os.environ["CARL_HOME"]) / "runs" / BASE
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    (d / "config.yaml").write_text(yaml.safe_dump({**cfg, "rewards": {"carl": {"weights": skewed}}}))
    app = make_app(tmp_path, run=BASE)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *PROMPT, "enter")
        await settle(pilot)
        res = app.screen.results[0]
        assert res is not None and res.weights == skewed
        assert res.rewards["carl"] == pytest.approx(res.rewards["cloud"])
        assert res.rewards["carl"] != pytest.approx(0.5 * res.rewards["coherence"] + 0.3 * res.rewards["cloud"]
                                                    + 0.2 * res.rewards["discontinuity"])


@pytest.mark.anyio
async def test_best_of_lists_the_engines_candidates_and_marks_the_chosen_one(runs, tmp_path):
    """The panel's best-of-N is engine.infer.best_of's: same candidates (seed i = seed + i), same scores, same
    choice; Enter goes back to a single generation."""
    import io

    from engine.bestof import SELECTIONS

    app = make_app(tmp_path, run=BASE, compare=f"run:{LORA}")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("slash", *PROMPT, "escape", "s")  # logprob → majority
        await pilot.press("a")
        await settle(pilot)
        scr = app.screen
        assert scr.best_select == "majority" == SELECTIONS[(SELECTIONS.index("logprob") + 1) % len(SELECTIONS)]
        best = scr.best
        assert best is not None and best["n"] == 8 and len(best["candidates"]) == 8
        assert scr.query_one("#try-pane-1").has_class("hidden")  # the candidates take the compare pane's place
        assert not scr.query_one("#try-pane-best").has_class("hidden")
        lm = infer.load(infer.resolve(run=BASE))
        ref = infer.best_of(lm, PROMPT, 8, "majority", infer.Sampling(max_new_tokens=32, seed=0))
        assert [c.text for c in best["candidates"]] == [c["text"] for c in ref["candidates"]]
        assert [c.scores for c in best["candidates"]] == [pytest.approx(c["scores"]) for c in ref["candidates"]]
        assert best["chosen"] == ref["chosen"]
        k = best["chosen"]
        # pane A holds the chosen candidate's tokens; the table marks it
        assert [s.token_id for s in views(app)[0].steps] == ref["result"]["token_ids"]
        from rich.console import Console

        console = Console(width=60, record=True, file=io.StringIO())
        console.print(scr.query_one("#try-best-table").content)
        table = console.export_text()
        marked = [line for line in table.splitlines() if line.lstrip().startswith("▶")]
        assert len(marked) == 1 and marked[0].split()[1] == str(k)
        assert f"chosen #{k} by majority" in status(app)
        await pilot.press("slash", "enter")  # back to one generation: the compare pane returns
        await settle(pilot)
        assert not scr.query_one("#try-pane-1").has_class("hidden")
        assert scr.query_one("#try-pane-best").has_class("hidden")
        assert scr.results[0] is not None and scr.results[1] is not None


def test_fit_label_cuts_from_the_left_keeping_the_differing_tail():
    assert fit_label("RUN/final", 20) == "RUN/final"
    assert fit_label("20250101-000000-a-long-name/checkpoint-20", 16) == "…e/checkpoint-20"
    assert fit_label("20250101-000000-a-long-name/final", 10) == "…ame/final"
    assert len(fit_label("x" * 50, 12)) == 12 and fit_label("abc", 1) == "…" and fit_label("abc", 0) == ""


LONG = "20250101-000000-a-rather-long-experiment-name"


@pytest.mark.anyio
async def test_pane_labels_are_names_the_resolver_accepts_and_keep_their_tail(runs, tmp_path):
    import os

    make_run(Path(os.environ["CARL_HOME"]) / "runs", LONG, final=runs, checkpoints={20: runs})
    app = make_app(tmp_path, run=LONG, compare=f"{LONG}@20")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        refs = app.screen.refs
        assert [r.label for r in refs] == [f"{LONG}/final", f"{LONG}/checkpoint-20"]
        for r in refs:  # a label typed back into the model box names the same model (no Hub lookup)
            again = infer.parse_spec(r.label)
            assert (again.model, again.adapter, again.run_id) == (r.model, r.adapter, r.run_id)
        titles = [str(app.screen.query_one(f"#try-title-{i}").render()) for i in range(2)]
        width = app.screen.query_one("#try-title-0").size.width
        assert titles[0].startswith("A · …") and titles[0].endswith("/final") and len(titles[0]) <= width
        assert titles[1].startswith("B · …") and titles[1].endswith("/checkpoint-20")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_try_panel_long_labels_cut_from_the_left(snap_compare, snap_home, snap_env, runs, size):
    """A long run id, final vs checkpoint-20 side by side: both titles end with the part that differs."""
    import os

    make_run(Path(os.environ["CARL_HOME"]) / "runs", LONG, final=runs, checkpoints={20: runs})
    app = make_app(snap_home, run=LONG, compare=f"{LONG}@20")
    assert snap_compare(app, run_before=keys(), terminal_size=size)


@pytest.mark.anyio
async def test_P_saves_pane_As_logits_and_the_probe_opens_them(runs, tmp_path):
    import os

    import numpy as np

    app = make_app(tmp_path, run=BASE)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await pilot.press("P")  # nothing generated yet: said so, nothing saved
        await settle(pilot)
        assert "Nothing to probe yet" in status(app)
        await pilot.press("slash", *PROMPT, "enter")
        await settle(pilot)
        result = app.screen.results[0]
        assert "P probe it" in status(app)  # the done line names the key (the footer is full at 80 columns)
        await pilot.press("P")  # the key a terminal sends for shift+p
        await settle(pilot)
        await settle(pilot)
        saved = sorted((Path(os.environ["CARL_HOME"]) / "probe").glob("*.npz"))
        assert len(saved) == 1 and saved[0].name.startswith(f"{BASE}_final-")
        with np.load(saved[0]) as z:
            assert z["logits"].shape == (len(result.token_ids), result.vocab_size)
            assert z["tokens"].tolist() == result.token_ids and str(z["prompt"]) == PROMPT
        probe = app.screen
        assert type(probe).__name__ == "ProbeScreen" and probe.error is None
        assert probe.query_one("#probe-path").value == str(saved[0])
        assert probe.snapshot.phi.tolist() == pytest.approx(result.phi, abs=1e-4)
