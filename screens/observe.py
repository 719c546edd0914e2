"""Observe screen (issue: Observe). Until observe lands: an honest empty state."""

from screens.empty import EmptyStateScreen


class ObserveScreen(EmptyStateScreen):
    TITLE_TEXT = "Observe — not built yet"
    BODY = ("This screen will open any run — carl's own frames, TRL trainer_state.json, trackio projects — "
            "and show the Phi trajectory, rewards, entropy, phase (guessing → crystallizing → knowing) and "
            "health findings, live.\n\nThe probe panel (key b) already measures Phi over a logits file.")
