"""The probe panel: snapshots at 80×24 and 120×40 (keys only: type a path, Enter, wait for the worker) and
pilot checks of its behaviour (prefilled path from `carl probe --logits F`, inline errors, masked mode)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from carl_tui.app import CarlApp
from engine.home import CarlHome
from screens.context import WorkbenchContext

SIZES = [(80, 24), (120, 40)]
LOGITS = "logits.npy"  # fixed relative path inside snap_home, so the snapshot is stable


def write_logits(root: Path, shape=(48, 64), name: str = LOGITS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = shape[-2]
    x = rng.standard_normal(shape) * np.linspace(0.5, 6.0, t)[:, None]  # Phi rises along the sequence
    path = root / name
    np.save(path, x.astype(np.float32))
    return path


def make_app(root: Path, **screen_args) -> CarlApp:
    ctx = WorkbenchContext(home=CarlHome.from_env(), cwd=root, clock=lambda: 1_700_000_000.0,
                           screen_args=screen_args)
    return CarlApp(ctx=ctx, screen="probe")


def type_and_load(path: str):
    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.press("slash", *path, "enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    return run_before


async def wait_workers(pilot) -> None:
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_probe_panel_shows_phi_field_and_rewards(snap_compare, snap_home, snap_env, size):
    write_logits(snap_home)
    assert snap_compare(make_app(snap_home), run_before=type_and_load(LOGITS), terminal_size=size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_probe_panel_batch_from_cli_args(snap_compare, snap_home, snap_env, size):
    """`carl probe --logits batch.npy`: prefilled and loaded on open; 3 sequences × 60 tokens wrap the strip."""
    write_logits(snap_home, shape=(3, 60, 40), name="batch.npy", seed=1)
    assert snap_compare(make_app(snap_home, logits="batch.npy"), run_before=wait_workers, terminal_size=size)


def test_probe_panel_error_inline(snap_compare, snap_home, snap_env):
    assert snap_compare(make_app(snap_home), run_before=type_and_load("missing.npy"), terminal_size=(80, 24))


def test_probe_panel_no_color_has_glyph_row(snap_compare, snap_home, snap_env, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    write_logits(snap_home)
    assert snap_compare(make_app(snap_home), run_before=type_and_load(LOGITS), terminal_size=(80, 24))


# ── behaviour (pilot) ─────────────────────────────────────────────────────────────────────────────────

@pytest.mark.anyio
async def test_enter_measures_the_file_and_fills_the_panel(tmp_path):
    write_logits(tmp_path, shape=(20, 30))
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", *LOGITS, "enter")
        await wait_workers(pilot)
        screen = app.screen
        assert screen.error is None and screen.snapshot is not None
        assert screen.snapshot.n_tokens == 20 and screen.snapshot.vocab_size == 30
        strip = screen.query_one("#probe-strip")
        assert not strip.has_class("hidden")
        text = strip.render()
        shaded = [span for span in text.spans if getattr(span.style, "bgcolor", None) is not None]
        assert len(shaded) == 20  # one heat cell per token
        assert not any(g in str(text) for g in "▁▂▃▄▅▆▇█")  # glyphs only where colour is off (NO_COLOR)
        rewards = str(screen.query_one("#probe-rewards").render())
        assert f"{screen.snapshot.rewards.carl:.3f}" in rewards and "coherence" in rewards


@pytest.mark.anyio
async def test_errors_show_code_message_and_hint_then_recover(tmp_path):
    x = np.zeros((4, 6), dtype=np.float32)
    x[1, 2] = -np.inf
    np.save(tmp_path / "masked.npy", x)
    (tmp_path / "bad.npy").write_text("nope")
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", *"bad.npy", "enter")
        await wait_workers(pilot)
        status = str(app.screen.query_one("#probe-status").render())
        assert "carl.validation" in status and "→" in status
        assert app.screen.query_one("#probe-status").has_class("error")
        inp = app.screen.query_one("#probe-path")
        inp.value = ""
        await pilot.press("slash", *"masked.npy", "enter")  # Enter left the box: / enters it again
        await wait_workers(pilot)
        assert app.screen.error is not None and app.screen.error.code == "carl.probe.nonfinite"
        await pilot.press("ctrl+t")  # masked mode on: -inf is probability 0, reloads
        await wait_workers(pilot)
        assert app.screen.error is None and app.screen.allow_masked
        assert app.screen.snapshot.n_tokens == 4
        assert not app.screen.query_one("#probe-status").has_class("error")


@pytest.mark.anyio
async def test_empty_path_is_an_inline_error(tmp_path):
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", "enter")
        await pilot.pause()
        assert app.screen.error is not None and "no logits file" in str(app.screen.error)


SKEWED = {"coherence": 0.0, "cloud": 1.0, "discontinuity": 0.0}


def write_weights(root: Path) -> None:
    import yaml

    (root / "carl.yaml").write_text(yaml.safe_dump({"rewards": {"carl": {"weights": SKEWED}}}), encoding="utf-8")


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_probe_panel_with_the_projects_weights(snap_compare, snap_home, snap_env, size):
    """./carl.yaml sets rewards.carl.weights: CARL is scored with them and the panel names the source."""
    write_logits(snap_home)
    write_weights(snap_home)
    assert snap_compare(make_app(snap_home), run_before=type_and_load(LOGITS), terminal_size=size)


@pytest.mark.anyio
async def test_the_panel_scores_with_the_projects_carl_weights(tmp_path):
    write_logits(tmp_path, shape=(20, 30))
    write_weights(tmp_path)
    app = make_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("slash", *LOGITS, "enter")
        await wait_workers(pilot)
        screen = app.screen
        assert screen.error is None and screen.settings.weights == SKEWED
        r = screen.snapshot.rewards
        assert r.carl == pytest.approx(r.cloud) and r.carl != pytest.approx(0.5 * r.coherence + 0.3 * r.cloud
                                                                           + 0.2 * r.discontinuity)
        rewards = str(screen.query_one("#probe-rewards").render())
        assert "×1" in rewards and "weights: carl.yaml" in rewards


# ── a model and a prompt instead of a logits file ──────────────────────────────────────────────────────

from tests._tiny_fixture import tiny_cache, tiny_env  # noqa: E402,F401
from tests.test_infer import PROMPT, make_run, tiny_path  # noqa: E402

MODEL_RUN = "20250101-000000-probe"


@pytest.fixture
def probe_run(tiny_env):  # noqa: F811
    """A completed run whose final/ is the session's tiny model (what `RUN` names in the probe's first box)."""
    import os

    from engine import infer

    infer.clear_cache()
    make_run(Path(os.environ["CARL_HOME"]) / "runs", MODEL_RUN, final=tiny_path(tiny_env))
    yield MODEL_RUN
    infer.clear_cache()


@pytest.mark.anyio
async def test_a_model_and_a_prompt_are_probed_with_the_models_own_logits(probe_run, tmp_path):
    from engine import infer
    from engine.probe import CoherenceProbe

    app = make_app(tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        # keys as typed: / enters the first box, Tab the prompt, Enter measures
        await pilot.press("slash", *probe_run, "tab", *PROMPT, "enter")
        await wait_workers(pilot)
        screen = app.screen
        assert screen.error is None, screen.error
        ref = infer.parse_spec(probe_run)
        res = infer.load(ref).generate(PROMPT, infer.Sampling(max_new_tokens=32, greedy=True), keep_logits=True)
        want = CoherenceProbe().measure(res.logits.float().numpy(), np.asarray(res.token_ids))
        assert screen.snapshot.n_tokens == len(res.token_ids)
        assert screen.snapshot.phi.tolist() == pytest.approx(want.phi.tolist(), abs=1e-5)
        assert screen.snapshot.phi.tolist()[: len(res.phi)] == pytest.approx(res.phi, abs=1e-4)
        assert screen.snapshot.rewards.carl == pytest.approx(want.rewards.carl, abs=1e-5)
        status = str(screen.query_one("#probe-status").render())
        assert f"{probe_run}/final" in status and "greedy completion" in status
        # a text to score: teacher-forced, the text's own tokens
        await pilot.press("slash", "tab", "tab", *"19", "enter")
        await wait_workers(pilot)
        scored = infer.load(ref).score(PROMPT, "19")
        assert screen.snapshot.n_tokens == len(scored.token_ids)
        assert screen.snapshot.phi.tolist() == pytest.approx(scored.phi, abs=1e-4)
        assert "scored text" in str(screen.query_one("#probe-status").render())


@pytest.mark.anyio
async def test_a_model_without_a_prompt_or_an_unknown_name_is_an_inline_error(tmp_path):
    app = make_app(tmp_path, model="no-such-run-anywhere")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.press("slash", "enter")
        await wait_workers(pilot)
        assert app.screen.error is not None and app.screen.error.code == "carl.validation"
        assert "prompt" in str(app.screen.error)
        await pilot.press("slash", "tab", *"1+1=", "enter")
        await wait_workers(pilot)
        assert app.screen.error is not None and app.screen.error.code.startswith("carl.")
        assert "✗" in str(app.screen.query_one("#probe-status").render())


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_probe_panel_from_a_model_and_a_prompt(snap_compare, snap_home, snap_env, probe_run, size):
    """`carl probe --model RUN --prompt P`: the run's greedy completion measured on open."""
    assert snap_compare(make_app(snap_home, model=probe_run, prompt=PROMPT), run_before=wait_workers,
                        terminal_size=size)


@pytest.mark.anyio
async def test_carl_probe_model_prompt_text_measures_on_open(probe_run, tmp_path):
    from carl_tui.cli import _screen_parser
    from engine import infer

    args = vars(_screen_parser("probe").parse_args(["--model", probe_run, "--prompt", PROMPT, "--text", "19"]))
    assert (args["model"], args["prompt"], args["text"], args["logits"]) == (probe_run, PROMPT, "19", None)
    app = make_app(tmp_path, **args)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_workers(pilot)
        await wait_workers(pilot)
        scored = infer.load(infer.parse_spec(probe_run)).score(PROMPT, "19")
        assert app.screen.error is None and app.screen.snapshot.phi.tolist() == pytest.approx(scored.phi, abs=1e-4)
        assert app.focused is None or app.focused.id != "probe-path"  # opened measured, no box entered
