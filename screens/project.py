"""Project screen: placeholder until the project screen lands (next commit)."""

from screens.empty import EmptyStateScreen


class ProjectScreen(EmptyStateScreen):
    TITLE_TEXT = "Project"
    BODY = "carl.yaml editor."
