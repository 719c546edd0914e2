"""The ``chat:`` section of carl.yaml, validated on its own (``Config.chat`` is a free dict at the top level).

Example::

    chat:
      model: claude-sonnet-4-6
      max_tokens: 4096
      step_cap: 8            # API requests per ask (tool round trips) before the loop stops
      session_cap_usd: 2.0   # spend cap per session; the loop stops with carl.budget when reached
      prices:                # USD per million tokens; merged over the defaults below
        my-model: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


DEFAULT_MODEL = "claude-sonnet-4-6"


class Price(BaseModel):
    """USD per million tokens. ``cache_write`` is the 5-minute cache write price (1.25 × input)."""

    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(ge=0)
    cache_write: float = Field(ge=0)


# Anthropic list prices (USD / MTok) as published for these models; override or extend in carl.yaml.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "claude-opus-4-6": {"input": 5.0, "output": 25.0, "cache_read": 0.50, "cache_write": 6.25},
    "claude-opus-4-5": {"input": 5.0, "output": 25.0, "cache_read": 0.50, "cache_write": 6.25},
    "claude-sonnet-4-6": {"input": 3.0, "output": 15.0, "cache_read": 0.30, "cache_write": 3.75},
    "claude-sonnet-4-5": {"input": 3.0, "output": 15.0, "cache_read": 0.30, "cache_write": 3.75},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0, "cache_read": 0.10, "cache_write": 1.25},
}


class ChatConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, min_length=1, description="Anthropic model id")
    max_tokens: int = Field(4096, ge=1, le=128_000, description="max output tokens per API request")
    step_cap: int = Field(8, ge=1, le=64, description="API requests per ask before the loop stops")
    session_cap_usd: float = Field(2.0, ge=0, description="spend cap per session (USD); 0 refuses every ask")
    max_retries: int = Field(4, ge=0, le=10, description="retries on overload (529), rate limit (429) and 5xx")
    retry_base_s: float = Field(1.0, ge=0, le=60, description="first backoff delay; doubles per retry")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout")
    prices: dict[str, Price] = Field(default_factory=dict, description="USD/MTok per model, over the defaults")

    def price_table(self) -> dict[str, Price]:
        table = {name: Price(**p) for name, p in DEFAULT_PRICES.items()}
        table.update(self.prices)
        return table


def chat_config(source: Any = None) -> ChatConfig:
    """Validate the ``chat`` section: ``source`` is an ``engine.config.Config``, its ``chat`` dict, or None.

    Errors are ``carl.config`` naming the field path (``chat.prices.x.input``)."""
    from engine.config import validate_section

    return validate_section(ChatConfig, getattr(source, "chat", source), "chat",
                            "Fix the named field(s) of the chat: section (see docs/chat.md).")
