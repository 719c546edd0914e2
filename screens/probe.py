"""Probe panel: placeholder until the probe lands."""

from screens.empty import EmptyStateScreen


class ProbeScreen(EmptyStateScreen):
    TITLE_TEXT = "Probe"
    BODY = "Open a logits file and see its per-token Phi field."
