"""Chat screen (issue: Chat). Until the agent lands: an honest empty state."""

from screens.empty import EmptyStateScreen


class ChatScreen(EmptyStateScreen):
    TITLE_TEXT = "Chat — not built yet"
    BODY = ("This screen will hold an Anthropic-powered agent that answers from real engine data "
            "(\"is run 7 collapsing?\") through a bounded set of typed tools, with sessions and cost "
            "tracking, and asks your approval before any action with effects.\n\nThere is no agent yet.")
