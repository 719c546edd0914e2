"""MetricChart: a terminal line chart (textual-plotext) with an optional horizontal SIGMA line.

Feed it as fast as frames arrive — ``set_series`` / ``append`` only store data and mark the chart dirty; a
timer redraws at most ``fps`` times a second (default 10), so a burst of a thousand frames costs one redraw.
Long series are thinned (every k-th point, the last one always kept) to about two points per column:
plotext's "hd" marker draws 2×2 dots per cell, so nothing visible is lost.

    chart = MetricChart("Φ", sigma=3 / 16)
    chart.set_series("phi", steps, values)
    chart.append("phi", [101], [0.21])
"""

from __future__ import annotations

import math
import os
from typing import Sequence

from textual_plotext import PlotextPlot

DEFAULT_MARKER = os.environ.get("CARL_CHART_MARKER", "hd")  # "hd" (quadrant blocks), "braille", "dot", "sd"
COLORS = ("cyan", "magenta", "yellow", "green", "blue", "red")
# the 2nd, 3rd… series of one chart: a glyph of its own, so series differ by shape, not only by colour (NO_COLOR)
SERIES_MARKERS = ("x", "+", "o", "*", "#")


def series_marker(i: int, first: str = DEFAULT_MARKER) -> str:
    """The marker of series ``i`` (0-based) of a chart whose first series uses ``first``."""
    return first if i == 0 else SERIES_MARKERS[(i - 1) % len(SERIES_MARKERS)]


def int_ticks(lo: float, hi: float, n: int) -> list[int]:
    """At most ``n`` integer x ticks from ``lo`` to ``hi`` (steps), evenly spaced, the last one always ``hi``."""
    a, b = math.ceil(lo), math.floor(hi)
    if b <= a:
        return [b] if b == a else [round(hi)]
    n = max(2, min(n, b - a + 1))
    ticks = sorted({a + round(k * (b - a) / (n - 1)) for k in range(n)})
    return ticks


def fit_title(title: str, room: int) -> str:
    """``title`` shortened to ``room`` columns (plotext drops a title wider than the plot): first to the part
    before ``:`` or `` (``, then cut with an ellipsis."""
    if len(title) <= room:
        return title
    for sep in (":", " ("):
        head = title.split(sep)[0].rstrip()
        if head and len(head) <= room:
            return head
    return title[: max(1, room - 1)] + "…"


def y_labels(ticks: list[float]) -> list[str]:
    """The shortest labels (3 to 6 significant digits) that still tell every tick apart: a narrow label column
    leaves the plot, and its title, more room."""
    for digits in range(3, 7):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{t:.6g}" for t in ticks]


class MetricChart(PlotextPlot):
    DEFAULT_CSS = """
    MetricChart { height: 1fr; width: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, *, sigma: float | None = None, sigma_label: str = "σ", fps: float = 10.0,
                 marker: str | None = None, y_label: str = "", name: str | None = None, id: str | None = None,
                 classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.title = title
        self.sigma = sigma
        self.sigma_label = sigma_label
        self.fps = min(float(fps), 10.0)
        self.marker = marker or DEFAULT_MARKER
        self.y_label = y_label
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self.log_y = False  # draw log10 of the values (all > 0: engine.observe.view drops the rest), decade ticks
        self._dirty = True
        self.redraws = 0  # how many times the plot was rebuilt (tests check the rate bound)

    # ── data API ──────────────────────────────────────────────────────────────────────────────────────
    def set_series(self, name: str, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Replace one named line."""
        self._series[name] = (list(xs), list(ys))
        self._dirty = True

    def append(self, name: str, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Extend one named line (creating it if needed)."""
        cur = self._series.setdefault(name, ([], []))
        cur[0].extend(xs)
        cur[1].extend(ys)
        self._dirty = True

    def clear(self) -> None:
        self._series.clear()
        self._dirty = True

    def set_title(self, title: str) -> None:
        if title != self.title:
            self.title = title
            self._dirty = True

    def set_log_y(self, on: bool) -> None:
        if on != self.log_y:
            self.log_y = on
            self._dirty = True

    def series_names(self) -> list[str]:
        return list(self._series)

    def __len__(self) -> int:
        return sum(len(xs) for xs, _ in self._series.values())

    # ── drawing ───────────────────────────────────────────────────────────────────────────────────────
    def on_mount(self) -> None:
        super().on_mount()
        self.set_interval(1.0 / self.fps, self.flush)

    def on_resize(self) -> None:
        self._dirty = True

    def flush(self) -> None:
        """Redraw now if anything changed (the timer calls this; tests may too)."""
        if not self._dirty or not self.is_mounted:
            return
        self._dirty = False
        self._replot()
        self.redraws += 1
        self.refresh()

    def _thin(self, xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
        limit = max(2 * max(self.size.width, 20), 100)
        if len(xs) <= limit:
            return xs, ys
        k = -(-len(xs) // limit)
        txs, tys = xs[::k], ys[::k]
        if txs[-1] != xs[-1]:
            txs.append(xs[-1])
            tys.append(ys[-1])
        return txs, tys

    def _replot(self) -> None:
        plt = self.plt
        if getattr(self, "_decade_ticks", False) and not self.log_y:
            plt.clear_figure()  # forget the log axis's custom ticks (the theme is set again on render)
            self._decade_ticks = False
        plt.clear_data()
        plt.clear_color() if hasattr(plt, "clear_color") else None
        plt.title(self.title)
        if self.y_label:
            plt.ylabel(self.y_label)
        drawn = 0
        lo = hi = xlo = xhi = None
        for i, (name, (xs, ys)) in enumerate(self._series.items()):
            if not xs:
                continue
            txs, tys = self._thin(xs, ys)
            if self.log_y:
                keep = [(x, math.log10(y)) for x, y in zip(txs, tys) if y > 0]
                if not keep:
                    continue
                txs, tys = [x for x, _ in keep], [y for _, y in keep]
            plt.plot(txs, tys, marker=series_marker(drawn, self.marker), color=COLORS[i % len(COLORS)],
                     label=name if len(self._series) > 1 else None)
            drawn += 1
            xlo = min(txs) if xlo is None else min(xlo, min(txs))
            xhi = max(txs) if xhi is None else max(xhi, max(txs))
            lo = min(tys) if lo is None else min(lo, min(tys))
            hi = max(tys) if hi is None else max(hi, max(tys))
        sigma = self.sigma
        if sigma is not None and self.log_y:
            sigma = math.log10(sigma) if sigma > 0 else None
        if sigma is not None and drawn:
            plt.hline(sigma, "red")
            lo, hi = min(lo, sigma), max(hi, sigma)
        if drawn and lo is not None and hi is not None:
            pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 0.1
            plt.ylim(lo - pad, hi + pad)
            if self.log_y:  # ticks at the decades in range, labelled with the values themselves
                ticks = list(range(math.floor(lo - pad), math.ceil(hi + pad) + 1))
                if len(ticks) < 2:
                    ticks = [lo, hi]
                plt.yticks(ticks, [f"{10 ** t:.2g}" for t in ticks])
                self._decade_ticks = True
            else:  # a few ticks with short labels (the y label column is what squeezes the title out)
                n = max(2, min(5, (self.size.height - 3) // 2))
                ticks = [lo - pad + k * (hi - lo + 2 * pad) / (n - 1) for k in range(n)]
                labels = y_labels(ticks)
                plt.yticks(ticks, labels)
                self._label_w = max(len(x) for x in labels)
            if xlo is not None and all(float(x).is_integer() for x in (xlo, xhi)):  # steps: integer ticks, the
                xt = int_ticks(xlo, xhi, max(2, self.size.width // 8))   # last step always among them
                plt.xticks(xt, [str(t) for t in xt])
            room = self.size.width - getattr(self, "_label_w", 5)  # plotext drops a title wider than this
            if room > 0:
                plt.title(fit_title(self.title, room))
        if not drawn:
            room = self.size.width - 2  # an empty plot has no y labels
            full = f"{self.title} — no data"
            plt.title(full if len(full) <= room or room <= 0 else fit_title(self.title, room))
