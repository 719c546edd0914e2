"""Train screen (issue: Train). Until the trainer lands: an honest empty state."""

from screens.empty import EmptyStateScreen


class TrainScreen(EmptyStateScreen):
    TITLE_TEXT = "Train — not built yet"
    BODY = ("This screen will start cascade GRPO runs (task rewards, then task + CARL once the gate opens), "
            "show the resolved plan, and draw Phi, task vs CARL reward, entropy and the gate live while a "
            "background worker trains.\n\nNothing can be trained from carl yet.")
