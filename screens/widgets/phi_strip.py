"""PhiStrip and PhiPlot: the per-token Phi field in a terminal, readable with or without colour.

* :class:`PhiStrip` — a heat strip, one cell per token (wrapped over a few lines), shaded by Phi on a
  dark-to-bright scale. Under NO_COLOR, where shading cannot show, each cell is a block glyph ``▁▂▃▄▅▆▇█``
  instead, so the strip reads without colour. Longer fields are binned (mean Phi per cell) and say so.
* :class:`PhiPlot` — a small bar chart of Phi over the tokens with the SIGMA line (``┄``) and a 0 / σ / 1 axis.

Both are pure renderers of a list of floats: ``set_phi(values)``; no engine state, no timers.
"""

from __future__ import annotations

import math
from typing import Sequence

from rich.color import Color
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

GLYPHS = " ▁▂▃▄▅▆▇█"  # index = eighths filled
# A perceptual dark → bright ramp (viridis stops): low Phi dark blue, high Phi bright yellow.
_STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def phi_color(value: float) -> Color:
    """The heat colour of one Phi value in [0, 1] (linear between the viridis stops)."""
    v = min(1.0, max(0.0, float(value))) * (len(_STOPS) - 1)
    i = min(int(v), len(_STOPS) - 2)
    f = v - i
    a, b = _STOPS[i], _STOPS[i + 1]
    return Color.from_rgb(*(round(a[k] + (b[k] - a[k]) * f) for k in range(3)))


def glyph(value: float) -> str:
    """One block glyph ▁…█ for a Phi value in [0, 1] (always at least ▁, so a token is never blank)."""
    v = min(1.0, max(0.0, float(value)))
    return GLYPHS[max(1, min(8, 1 + int(v * 8)))]


def bin_values(values: Sequence[float], cells: int) -> tuple[list[float], int]:
    """Mean of consecutive groups so at most ``cells`` remain; returns (binned, tokens per cell)."""
    n = len(values)
    if n <= cells or cells <= 0:
        return [float(v) for v in values], 1
    k = math.ceil(n / cells)
    return [sum(values[i:i + k]) / len(values[i:i + k]) for i in range(0, n, k)], k


class PhiStrip(Widget):
    """Heat strip of the Phi field: one cell per token (binned when it does not fit ``max_lines`` lines)."""

    DEFAULT_CSS = """
    PhiStrip { height: auto; width: 1fr; }
    """

    def __init__(self, max_lines: int = 3, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.max_lines = max_lines
        self._phi: list[float] = []

    def set_phi(self, values: Sequence[float]) -> None:
        self._phi = [float(v) for v in values]
        self.refresh(layout=True)

    @property
    def _no_color(self) -> bool:
        return bool(getattr(self.app, "no_color", False))

    def _layout(self, width: int) -> tuple[list[float], int, int]:
        width = max(1, width)
        cells, per = bin_values(self._phi, width * self.max_lines)
        return cells, per, max(1, math.ceil(len(cells) / width))

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[override]
        if not self._phi:
            return 1
        _, _, lines = self._layout(width)
        return lines + 1

    def render(self) -> Text:
        width = max(1, self.content_size.width or self.size.width)
        if not self._phi:
            return Text("no tokens", style="dim")
        cells, per, lines = self._layout(width)
        out = Text(no_wrap=True, overflow="crop")
        no_color = self._no_color
        for li in range(lines):
            for v in cells[li * width:(li + 1) * width]:
                if no_color:
                    out.append(glyph(v))
                else:
                    out.append(" ", Style(bgcolor=phi_color(v)))
            out.append("\n")
        n = len(self._phi)
        scale = f"1 cell = {per} tokens · " if per > 1 else ""
        legend = "▁ = Φ 0 … █ = Φ 1" if no_color else "dark = Φ 0 … bright = Φ 1"
        out.append(f"{scale}tokens 0…{n - 1} · {legend}", style="dim")
        return out


class PhiPlot(Widget):
    """Bars of Phi per token (binned to the width) with the SIGMA line and a 0 / σ / 1 axis."""

    DEFAULT_CSS = """
    PhiPlot { height: 6; width: 1fr; }
    """
    GUTTER = 5  # "1.0 ┤"

    def __init__(self, sigma: float, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.sigma = float(sigma)
        self._phi: list[float] = []

    def set_phi(self, values: Sequence[float]) -> None:
        self._phi = [float(v) for v in values]
        self.refresh()

    def render(self) -> Text:
        height = max(2, self.content_size.height or self.size.height)
        width = max(1, (self.content_size.width or self.size.width) - self.GUTTER)
        cols, _ = bin_values(self._phi, width)
        eighths = [round(min(1.0, max(0.0, v)) * height * 8) for v in cols]
        sig_level = self.sigma * height  # in rows from the bottom
        sig_row = height - 1 - min(height - 1, int(sig_level))  # row index from the top that holds σ
        out = Text(no_wrap=True, overflow="crop")
        for r in range(height):
            label = "1.0 ┤" if r == 0 else ("σ   ┤" if r == sig_row else ("0.0 ┤" if r == height - 1 else "    │"))
            out.append(label, style="dim")
            base = (height - 1 - r) * 8
            for v, e in zip(cols, eighths):
                fill = max(0, min(8, e - base))
                if fill == 0 and r == sig_row:
                    out.append("┄", style="dim")
                else:
                    out.append(GLYPHS[fill], Style(color=phi_color(v)))
            if r < height - 1:
                out.append("\n")
        return out
