"""Charts at 80×24 and under NO_COLOR (issue 28 item 10): each series of a chart has a glyph of its own (task vs
CARL differ by shape, not by a grey level), x ticks are whole steps and include the last one, and every chart
keeps its title. Read from the rendered chart text of the real train and observe screens."""

from __future__ import annotations

import re

import pytest

from screens.widgets.charts import MetricChart, fit_title, int_ticks, series_marker

pytestmark = pytest.mark.anyio


def test_int_ticks_are_whole_steps_ending_at_the_last():
    assert int_ticks(1, 40, 3) == [1, 21, 40]
    assert int_ticks(0, 59, 6)[-1] == 59 and all(isinstance(t, int) for t in int_ticks(0, 59, 6))
    assert int_ticks(5, 5, 4) == [5]
    assert int_ticks(1, 2, 5) == [1, 2]


def test_titles_are_shortened_to_fit_never_dropped():
    assert fit_title("reward: task vs CARL", 40) == "reward: task vs CARL"
    assert fit_title("reward: task vs CARL", 12) == "reward"
    assert fit_title("entropy (nats)", 10) == "entropy"
    assert fit_title("abcdefghijkl", 5) == "abcd…"


def test_each_series_has_its_own_glyph():
    assert len({series_marker(i) for i in range(6)}) == 6


def _text(chart: MetricChart) -> list[str]:
    chart.flush()
    rendered = chart.render()
    plain = getattr(rendered, "plain", str(rendered))
    return [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in plain.splitlines()]


async def test_train_charts_at_80x24_under_no_color(tmp_path, monkeypatch):
    from tests.test_train_screen import make_app, make_run, settle

    monkeypatch.setenv("NO_COLOR", "1")
    make_run(tmp_path / "home", "20250101-120000-abcd", range(1, 41))
    app = make_app(tmp_path, run="20250101")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 40)
        charts = {c.id: c for c in screen.query(MetricChart)}
        for cid, chart in charts.items():
            lines = _text(chart)
            assert lines, cid
            head = re.split(r"[ :(]", chart.title)[0]  # at least its first word is shown
            assert head in lines[0], (cid, lines[:2])
            ticks = [t for t in lines[-1].split()]
            assert ticks and all(re.fullmatch(r"-?\d+", t) for t in ticks), (cid, lines[-1])
            assert ticks[-1] == "40", (cid, lines[-1])  # the last step is a tick
        head = screen.query_one("#train-head")
        for item in ("#plan", "#status", "#hw"):  # the header: one line per item, none wrapped to two
            widget = head.query_one(item)
            assert widget.size.height == str(widget.render()).count("\n") + 1, (item, str(widget.render()))
        assert "gate B since step 12" in str(screen.query_one("#status").render())
        legend = _text(charts["chart-reward"])[1:]  # below the title
        task_line = next(ln for ln in legend if " task" in ln)
        carl_line = next(ln for ln in legend if " CARL" in ln)
        task_glyph = task_line.split(" task")[0].split()[-1]
        carl_glyph = carl_line.split(" CARL")[0].split()[-1]
        assert task_glyph != carl_glyph and "x" in carl_glyph  # a different shape in the legend


async def test_observe_charts_at_80x24_keep_titles_and_whole_step_ticks(tmp_path, monkeypatch):
    from tests.test_observe_screen import make_app, make_run, settle

    monkeypatch.setenv("NO_COLOR", "1")
    make_run(tmp_path / "home", "20250101-demo", range(60), status="completed")
    app = make_app(tmp_path, run="20250101")
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await settle(pilot, 60, ended=True)
        for chart in screen.query("#obs-grid MetricChart"):
            lines = _text(chart)
            assert re.split(r"[ :(]", chart.title)[0] in lines[0], (chart.id, lines[:2])
            ticks = lines[-1].split()
            assert ticks and all(re.fullmatch(r"-?\d+", t) for t in ticks) and ticks[-1] == "59", (chart.id, lines[-1])


async def test_empty_train_charts_keep_their_titles_at_80x24(tmp_path):
    from tests.test_train_screen import make_app

    app = make_app(tmp_path)  # no run: three empty charts
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        for chart in app.screen.query(MetricChart):
            lines = _text(chart)
            assert re.split(r"[ :(]", chart.title)[0] in lines[0], (chart.id, lines[:1])
